"""The dependencies controller: a workload's dependencies follow it (``propagateDeps``).

Key: the binding of a workload. When its policy says ``propagateDeps``, the kind's
interpreter names what the workload needs (the ConfigMaps, Secrets, ServiceAccount
and PVCs its pod template references, or what a customization says). Each of those
that exists as a template gets the workload recorded in its binding's ``requiredBy``,
with the clusters the workload runs in, and the binding controller sends it there
too. A dependency the workload no longer needs loses the entry; a binding left with
no entry and no policy of its own is deleted, which removes the object from the
members. Karmada's dependencies distributor does the same with "attached" bindings.
"""

from __future__ import annotations

import logging

from archipel import interpreter
from archipel.core import kinds
from archipel.core.kinds import Manifest
from archipel.v1alpha1 import work_pb2
from controlplane.context import (
    FINALIZER,
    Context,
    delete_object,
    template_key_of_binding,
)
from controlplane.plan import Plan
from controlplane.predicates import is_deleting, template_changed

NAME = "dependencies-controller"
log = logging.getLogger(__name__)
# Bindings by the workloads that require them ("namespace/name"), and workloads that
# propagate their dependencies by namespace: lookups stay proportional to the answer,
# not to the number of bindings.
REQUIRED_BY_INDEX = "required-by"
PROPAGATES_DEPS_INDEX = "propagates-deps"


def snapshot_of(binding: work_pb2.PropagationBinding) -> work_pb2.BindingSnapshot:
    snapshot = work_pb2.BindingSnapshot(
        namespace=binding.metadata.namespace, name=binding.metadata.name
    )
    for target in binding.spec.clusters:
        snapshot.clusters.add(name=target.name)
    return snapshot


def _entry(binding: work_pb2.PropagationBinding, parent: tuple[str, str]) -> int:
    for index, snapshot in enumerate(binding.spec.required_by):
        if (snapshot.namespace, snapshot.name) == parent:
            return index
    return -1


class DependenciesController:
    def __init__(self, context: Context) -> None:
        self.context = context
        self.controller = context.controller(NAME, self.reconcile)
        context.bindings.add_index(
            REQUIRED_BY_INDEX, lambda b: [f"{s.namespace}/{s.name}" for s in b.spec.required_by]
        )
        context.bindings.add_index(
            PROPAGATES_DEPS_INDEX,
            lambda b: [b.metadata.namespace] if b.spec.propagate_deps else [],
        )
        context.bindings.add_handler(self._on_binding)
        context.templates.add_handler(self._on_template)

    def _on_binding(
        self,
        key: str,
        old: work_pb2.PropagationBinding | None,
        new: work_pb2.PropagationBinding | None,
    ) -> None:
        if (
            old is not None
            and new is not None
            and old.metadata.generation == new.metadata.generation
        ):
            return
        # Only a workload that propagates its dependencies, or did, has anything to do.
        if any(b is not None and b.spec.propagate_deps for b in (old, new)):
            self.controller.enqueue(key)

    def _on_template(self, key: str, old: Manifest | None, new: Manifest | None) -> None:
        # A dependency created (or deleted) after its workload: every workload of the
        # namespace that propagates dependencies looks again.
        if (old is None) == (new is None) or not template_changed(old, new):
            return
        namespace = key.split("/")[3]
        if namespace == kinds.CLUSTER_SCOPE:
            return
        for binding_key in self.context.bindings.index_keys(PROPAGATES_DEPS_INDEX, namespace):
            self.controller.enqueue(binding_key)

    def _needed(self, parent: work_pb2.PropagationBinding) -> dict[str, Manifest] | None:
        """Template key -> template of each dependency that exists; None: cannot tell."""
        template = self.context.templates.get(template_key_of_binding(parent))
        if template is None:
            return {}
        try:
            dependencies = self.context.interpreters.of(template).dependencies(template)
        except interpreter.InterpreterError as error:
            log.warning("dependencies of %s: %s", kinds.PROPAGATION_BINDING.key_of(parent), error)
            return None
        needed = {}
        for dependency in dependencies:
            template_key = kinds.template_key(
                dependency.api_version, dependency.kind, dependency.namespace, dependency.name
            )
            found = self.context.templates.get(template_key)
            if found is not None:
                needed[template_key] = found
        return needed

    async def reconcile(self, key: str) -> Plan | None:
        context = self.context
        namespace, name = key.split("/")[1:3]
        parent_ref = (namespace, name)
        parent = context.bindings.get(key)
        needed: dict[str, Manifest] = {}
        if (
            parent is not None
            and not is_deleting(parent)
            and parent.spec.propagate_deps
            and parent.spec.policy.kind
        ):
            found = self._needed(parent)
            if found is None:
                return None  # keep what is recorded until the interpreter can tell
            needed = found
        requeue: Plan | None = None
        if parent is not None:
            snapshot = snapshot_of(parent)
            for template_key, template in needed.items():
                if await self._require(template_key, template, parent, snapshot):
                    requeue = Plan(requeue_after=0.5)
        for binding in context.bindings.by_index(REQUIRED_BY_INDEX, f"{namespace}/{name}"):
            if template_key_of_binding(binding) not in needed:
                await self._release(binding, parent_ref)
        return requeue

    async def _require(
        self,
        template_key: str,
        template: Manifest,
        parent: work_pb2.PropagationBinding,
        snapshot: work_pb2.BindingSnapshot,
    ) -> bool:
        """Record ``parent`` on the dependency's binding; True when it must wait."""
        store = self.context.store
        binding = self.context.binding_of(template_key)
        if binding is not None and is_deleting(binding):
            return True
        if binding is None:
            metadata = template["metadata"]
            new = work_pb2.PropagationBinding(
                api_version=kinds.PROPAGATION_BINDING.api_version, kind="PropagationBinding"
            )
            new.metadata.name = self.context.new_binding_name(template)
            new.metadata.namespace = metadata.get("namespace", "")
            new.metadata.finalizers.append(FINALIZER)
            resource = new.spec.resource
            resource.api_version, resource.kind = template["apiVersion"], template["kind"]
            resource.namespace, resource.name = new.metadata.namespace, metadata["name"]
            resource.uid = metadata.get("uid", "")
            # Taking over an object already in a member is the workload's policy's call.
            new.spec.conflict_resolution = parent.spec.conflict_resolution or "Abort"
            new.spec.required_by.append(snapshot)
            await self.context.create_derived(self.context.bindings, new)
            return False
        index = _entry(binding, (snapshot.namespace, snapshot.name))
        if index >= 0 and binding.spec.required_by[index] == snapshot:
            return False
        updated = kinds.PROPAGATION_BINDING.copy(binding)
        if index >= 0:
            updated.spec.required_by[index].CopyFrom(snapshot)
        else:
            updated.spec.required_by.append(snapshot)
        await store.update(kinds.PROPAGATION_BINDING, updated, current=binding)
        return False

    async def _release(self, binding: work_pb2.PropagationBinding, parent: tuple[str, str]) -> None:
        index = _entry(binding, parent)
        if index < 0 or is_deleting(binding):
            return
        store = self.context.store
        if len(binding.spec.required_by) == 1 and not binding.spec.policy.kind:
            # Nothing else needs it and no policy propagates it: it leaves the members.
            await delete_object(store, kinds.PROPAGATION_BINDING, binding, preserve_resources=False)
            return
        updated = kinds.PROPAGATION_BINDING.copy(binding)
        del updated.spec.required_by[index]
        await store.update(kinds.PROPAGATION_BINDING, updated, current=binding)
