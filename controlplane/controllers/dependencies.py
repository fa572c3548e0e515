"""The dependencies controller: a workload's dependencies follow it (``propagateDeps``).

Key: the binding of a workload. When its policy says ``propagateDeps``, the kind's
interpreter names what the workload needs (the ConfigMaps, Secrets, ServiceAccount
and PVCs its pod template references, or what a customization says). Each of those
that exists as a template gets the workload recorded in its binding's ``requiredBy``,
with the clusters the workload runs in, and the binding controller sends it there
too. A dependency the workload no longer needs loses the entry; a binding left with
no entry and no policy of its own is deleted, which removes the object from the
members. Karmada's dependencies distributor does the same with "attached" bindings.

A reconcile is two steps. :meth:`DependenciesController.observe` copies the workload's
binding, what its interpreter says it needs (each dependency's template and binding)
and the bindings that record it into a :class:`DependenciesObserved`; :func:`plan`,
pure (no I/O, no clock), decides, and every write of the pass (creating, updating or
deleting dependency bindings) goes into one :class:`~controlplane.plan.Plan`, committed
as one guarded transaction: a workload's dependencies move together or not at all.

A dependency whose binding is being deleted gets a new one once the old is gone. No
timer polls for that: the workload is recorded in the old binding's ``requiredBy``,
and a binding's disappearance enqueues every workload it names there
(:func:`enqueued_by_binding`), so the workload is looked at exactly then.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import logging

from archipel import interpreter
from archipel.core import kinds
from archipel.core.kinds import Manifest
from archipel.v1alpha1 import work_pb2
from controlplane.context import (
    FINALIZER,
    Context,
    binding_name,
    template_key_of_binding,
)
from controlplane.plan import Plan
from controlplane.predicates import generation_changed, is_deleting, lifecycle_changed

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


def parent_of(key: str) -> tuple[str, str]:
    """A workload binding key -> (namespace, name) as its ``requiredBy`` entries say."""
    namespace, name = key.split("/")[1:3]
    return ("" if namespace == kinds.CLUSTER_SCOPE else namespace, name)


def propagates_dependencies(binding: work_pb2.PropagationBinding) -> bool:
    """Whether the workload's dependencies should follow it now: its policy asks for
    it and it is not being deleted (a deleting workload lets go of them all)."""
    return (
        not is_deleting(binding) and binding.spec.propagate_deps and bool(binding.spec.policy.kind)
    )


def enqueued_by_binding(
    key: str,
    old: work_pb2.PropagationBinding | None,
    new: work_pb2.PropagationBinding | None,
) -> list[str]:
    """The workload binding keys a binding change sends to this controller.

    * The binding itself, when it is (or was) a workload propagating its dependencies
      and its spec changed (its clusters, its policy's ``propagateDeps``), its
      deletion began (it lets go of them all), or it appeared or went. Status
      changes, frequent, are none of this controller's business.
    * When a binding disappears, every workload its ``requiredBy`` names: one that
      still needs the object was waiting for this deletion to finish, and now makes
      it a new binding.
    """
    keys: list[str] = []
    changed = generation_changed(old, new) or lifecycle_changed(old, new)
    if changed and any(b is not None and b.spec.propagate_deps for b in (old, new)):
        keys.append(key)
    if old is not None and new is None:
        for snapshot in old.spec.required_by:
            parent = kinds.PROPAGATION_BINDING.key(snapshot.namespace, snapshot.name)
            if parent not in keys:
                keys.append(parent)
    return keys


@dataclasses.dataclass(frozen=True)
class DependencyObserved:
    """One object a workload needs, which exists as a template."""

    template_key: str
    template: Manifest
    binding: work_pb2.PropagationBinding | None
    """The template's binding, if it has one."""
    new_binding_name: str = ""
    """The name a first binding of the template gets (only set when it has none)."""
    quarantined: int = 0
    """The mod_revision of an undecodable value stored at the new binding's key (0:
    none); the new binding is written over it."""


@dataclasses.dataclass(frozen=True)
class DependenciesObserved:
    """What the dependencies controller decides from, for one workload binding key."""

    key: str
    """The workload's binding key (``propagationbindings/<namespace>/<name>``)."""
    parent: work_pb2.PropagationBinding | None
    """The workload's binding; None once it is gone."""
    dependencies: tuple[DependencyObserved, ...] | None = ()
    """What the workload needs and exists, while it propagates its dependencies;
    None when its interpreter cannot tell (what is recorded stays as it is)."""
    required: tuple[work_pb2.PropagationBinding, ...] = ()
    """The bindings whose ``requiredBy`` names the workload."""


def plan(observed: DependenciesObserved) -> Plan | None:
    """All the writes that make the dependencies' bindings record the workload exactly
    where it needs them (with the clusters it runs in), and nowhere else; None when
    they already do or the interpreter cannot tell."""
    parent = observed.parent
    needed: dict[str, DependencyObserved] = {}
    if parent is not None and propagates_dependencies(parent):
        if observed.dependencies is None:
            return None  # keep what is recorded until the interpreter can tell
        needed = {d.template_key: d for d in observed.dependencies}
    result = Plan()
    if parent is not None:
        snapshot = snapshot_of(parent)
        for dependency in needed.values():
            _require(result, dependency, parent, snapshot)
    parent_ref = parent_of(observed.key)
    for binding in observed.required:
        if template_key_of_binding(binding) not in needed:
            _release(result, binding, parent_ref)
    return result if result.writes else None


def _entry(binding: work_pb2.PropagationBinding, parent: tuple[str, str]) -> int:
    for index, snapshot in enumerate(binding.spec.required_by):
        if (snapshot.namespace, snapshot.name) == parent:
            return index
    return -1


def _require(
    result: Plan,
    dependency: DependencyObserved,
    parent: work_pb2.PropagationBinding,
    snapshot: work_pb2.BindingSnapshot,
) -> None:
    """Record ``parent`` (as ``snapshot``) on the dependency's binding."""
    binding = dependency.binding
    if binding is None:
        template = dependency.template
        metadata = template["metadata"]
        new = work_pb2.PropagationBinding(
            api_version=kinds.PROPAGATION_BINDING.api_version, kind="PropagationBinding"
        )
        new.metadata.name = dependency.new_binding_name
        new.metadata.namespace = metadata.get("namespace", "")
        new.metadata.finalizers.append(FINALIZER)
        resource = new.spec.resource
        resource.api_version, resource.kind = template["apiVersion"], template["kind"]
        resource.namespace, resource.name = new.metadata.namespace, metadata["name"]
        resource.uid = metadata.get("uid", "")
        # Taking over an object already in a member is the workload's policy's call.
        new.spec.conflict_resolution = parent.spec.conflict_resolution or "Abort"
        new.spec.required_by.append(snapshot)
        # Bindings are derived, so a corrupted one is repaired by writing it anew.
        result.create(kinds.PROPAGATION_BINDING, new, replacing=dependency.quarantined)
        if dependency.quarantined:
            key = kinds.PROPAGATION_BINDING.key_of(new)
            result.committed.append(functools.partial(log.warning, "rewrote undecodable %s", key))
        return
    index = _entry(binding, (snapshot.namespace, snapshot.name))
    if is_deleting(binding):
        # A new binding is made once this one is gone. Being named in its requiredBy
        # is what brings the workload back then (enqueued_by_binding).
        if index < 0:
            updated = kinds.PROPAGATION_BINDING.copy(binding)
            updated.spec.required_by.append(snapshot)
            result.update(kinds.PROPAGATION_BINDING, updated, current=binding)
        return
    if index >= 0 and binding.spec.required_by[index] == snapshot:
        return
    updated = kinds.PROPAGATION_BINDING.copy(binding)
    if index >= 0:
        updated.spec.required_by[index].CopyFrom(snapshot)
    else:
        updated.spec.required_by.append(snapshot)
    result.update(kinds.PROPAGATION_BINDING, updated, current=binding)


def _release(result: Plan, binding: work_pb2.PropagationBinding, parent: tuple[str, str]) -> None:
    """Take ``parent``'s entry off a binding it no longer needs."""
    index = _entry(binding, parent)
    if index < 0 or is_deleting(binding):
        return
    if (
        len(binding.spec.required_by) == 1
        and not binding.spec.policy.kind
        and not binding.spec.auto_propagated
    ):
        # Nothing else needs it and nothing propagates it (neither a policy nor the
        # namespace controller, for a Namespace): it leaves the members.
        result.delete(kinds.PROPAGATION_BINDING, binding)
        return
    updated = kinds.PROPAGATION_BINDING.copy(binding)
    del updated.spec.required_by[index]
    result.update(kinds.PROPAGATION_BINDING, updated, current=binding)


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
        for workload_key in enqueued_by_binding(key, old, new):
            self.controller.enqueue(workload_key)

    def _on_template(self, key: str, old: Manifest | None, new: Manifest | None) -> None:
        # A dependency created (or deleted) after its workload: every workload of the
        # namespace that propagates dependencies looks again.
        if (old is None) == (new is None):
            return
        namespace = key.split("/")[3]
        if namespace == kinds.CLUSTER_SCOPE:
            return
        for binding_key in self.context.bindings.index_keys(PROPAGATES_DEPS_INDEX, namespace):
            self.controller.enqueue(binding_key)

    def _dependencies(
        self, parent: work_pb2.PropagationBinding
    ) -> tuple[DependencyObserved, ...] | None:
        """Each dependency of the workload that exists as a template, with its binding;
        None: the interpreter cannot tell."""
        context = self.context
        template = context.templates.get(template_key_of_binding(parent))
        if template is None:
            return ()
        try:
            dependencies = context.interpreters.of(template).dependencies(template)
        except interpreter.InterpreterError as error:
            log.warning("dependencies of %s: %s", kinds.PROPAGATION_BINDING.key_of(parent), error)
            return None
        found: dict[str, DependencyObserved] = {}
        new_names: set[str] = set()
        for dependency in dependencies:
            template_key = kinds.template_key(
                dependency.api_version, dependency.kind, dependency.namespace, dependency.name
            )
            needed = context.templates.get(template_key)
            if needed is None or template_key in found:
                continue
            binding = context.binding_of(template_key)
            new_name, quarantined = "", 0
            if binding is None:
                new_name = context.new_binding_name(needed)
                if new_name in new_names:
                    # Two new bindings of one pass would share Karmada's name (same
                    # name and kind, other API groups): one plan writes a key once.
                    # Bindings are found by what they bind, so any free name will do.
                    identity = kinds.RESOURCE_TEMPLATE.key_of(needed)
                    digest = hashlib.sha256(identity.encode()).hexdigest()[:10]
                    new_name = f"{binding_name(needed)}-{digest}"
                new_names.add(new_name)
                namespace = needed["metadata"].get("namespace", "")
                corrupt = context.bindings.quarantined.get(
                    kinds.PROPAGATION_BINDING.key(namespace, new_name)
                )
                quarantined = corrupt[0] if corrupt is not None else 0
            found[template_key] = DependencyObserved(
                template_key=template_key,
                template=needed,
                binding=binding,
                new_binding_name=new_name,
                quarantined=quarantined,
            )
        return tuple(found.values())

    def observe(self, key: str) -> DependenciesObserved:
        """The workload's binding, what it needs, and the bindings that record it, as
        the caches hold them now."""
        context = self.context
        parent = context.bindings.get(key)
        dependencies: tuple[DependencyObserved, ...] | None = ()
        if parent is not None and propagates_dependencies(parent):
            dependencies = self._dependencies(parent)
        namespace, name = parent_of(key)
        return DependenciesObserved(
            key=key,
            parent=parent,
            dependencies=dependencies,
            required=tuple(context.bindings.by_index(REQUIRED_BY_INDEX, f"{namespace}/{name}")),
        )

    async def reconcile(self, key: str) -> Plan | None:
        return plan(self.observe(key))
