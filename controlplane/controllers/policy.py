"""The policy controller: matches resource templates to policies and writes bindings.

Key: a template key. Level-triggered: for the template as it is now, pick the policy
that should propagate it (Karmada's precedence, see :mod:`archipel.core.matching`) and
make the template's PropagationBinding say so. A template that no policy matches any
more loses its binding: when its policy still exists (the template's labels changed,
say) the objects are removed from the members; when the policy itself was deleted,
the binding goes but the objects stay in place, as in Karmada.
"""

from __future__ import annotations

import logging

from archipel import interpreter
from archipel.core import kinds, matching
from archipel.core.kinds import Manifest
from archipel.core.workloads import replica_requests, template_replicas
from archipel.v1alpha1 import interpreter_pb2, policy_pb2, work_pb2
from controlplane.context import (
    FINALIZER,
    Context,
    customization_targets,
    delete_object,
    template_key_of_binding,
)
from controlplane.plan import Plan
from controlplane.predicates import is_deleting, template_changed

NAME = "policy-controller"
log = logging.getLogger(__name__)


BUILTIN_INTERPRETERS = interpreter.Registry()


def desired_spec(
    candidate: matching.Candidate,
    manifest: Manifest,
    current: work_pb2.PropagationBindingSpec | None,
    interpreters: interpreter.Registry = BUILTIN_INTERPRETERS,
) -> work_pb2.PropagationBindingSpec:
    policy_spec: policy_pb2.PropagationSpec = candidate.policy.spec
    metadata = manifest["metadata"]
    spec = work_pb2.PropagationBindingSpec()
    if current is not None:
        # The scheduler owns the result, the dependencies controller requiredBy; keep them.
        spec.clusters.extend(current.clusters)
        spec.required_by.extend(current.required_by)
        if current.HasField("reschedule_triggered_at"):
            spec.reschedule_triggered_at.CopyFrom(current.reschedule_triggered_at)
    spec.resource.api_version = manifest["apiVersion"]
    spec.resource.kind = manifest["kind"]
    spec.resource.namespace = metadata.get("namespace", "")
    spec.resource.name = metadata["name"]
    spec.resource.uid = metadata.get("uid", "")
    spec.resource.resource_version = metadata.get("resourceVersion", "")
    spec.replicas = template_replicas(manifest, interpreters)
    spec.replica_requirements.resource_request.update(replica_requests(manifest, interpreters))
    spec.placement.CopyFrom(policy_spec.placement)
    kind, namespace, name = candidate.ref
    spec.policy.kind, spec.policy.namespace, spec.policy.name = kind, namespace, name
    spec.conflict_resolution = policy_spec.conflict_resolution or "Abort"
    spec.preserve_resources_on_deletion = policy_spec.preserve_resources_on_deletion
    if policy_spec.HasField("suspension"):
        spec.suspension.CopyFrom(policy_spec.suspension)
    spec.scheduler_name = policy_spec.scheduler_name or "default-scheduler"
    spec.propagate_deps = policy_spec.propagate_deps
    return spec


class PolicyController:
    def __init__(self, context: Context) -> None:
        self.context = context
        self.controller = context.controller(NAME, self.reconcile)
        context.templates.add_handler(self._on_template)
        context.policies.add_handler(self._on_policy)
        context.cluster_policies.add_handler(self._on_policy)
        context.bindings.add_handler(self._on_binding)
        context.customizations.add_handler(self._on_customization)

    def _on_template(self, key: str, old: Manifest | None, new: Manifest | None) -> None:
        # Aggregated status written back into the template changes nothing here.
        if template_changed(old, new):
            self.controller.enqueue(key)

    def _on_policy(self, key: str, old: object, new: object) -> None:
        # A policy can claim or release any template in its scope; namespaced
        # policies only ever see their own namespace.
        namespace = key.split("/")[1]
        for template_key in self.context.templates.list_keys():
            if namespace == "_" or template_key.split("/")[3] == namespace:
                self.controller.enqueue(template_key)

    def _on_customization(
        self,
        key: str,
        old: interpreter_pb2.ResourceInterpreterCustomization | None,
        new: interpreter_pb2.ResourceInterpreterCustomization | None,
    ) -> None:
        # Replicas and requests of the target kind may now be read elsewhere.
        for api_version, kind in customization_targets(old, new):
            prefix = kinds.template_type_prefix(api_version, kind)
            for template_key in self.context.templates.list_keys(prefix):
                self.controller.enqueue(template_key)

    def _on_binding(
        self,
        key: str,
        old: work_pb2.PropagationBinding | None,
        new: work_pb2.PropagationBinding | None,
    ) -> None:
        # Only a binding's disappearance or a change to its spec can need a correction;
        # its status changes all the time and concerns other controllers.
        if (
            new is not None
            and old is not None
            and old.metadata.generation == new.metadata.generation
        ):
            return
        binding = new or old
        if binding is not None and binding.spec.resource.kind:
            self.controller.enqueue(template_key_of_binding(binding))

    def _policy_exists(self, ref: work_pb2.PolicyReference) -> bool:
        if ref.kind == "PropagationPolicy":
            return (
                self.context.policies.get(kinds.PROPAGATION_POLICY.key(ref.namespace, ref.name))
                is not None
            )
        return (
            self.context.cluster_policies.get(kinds.CLUSTER_PROPAGATION_POLICY.key("", ref.name))
            is not None
        )

    async def _release(self, binding: work_pb2.PropagationBinding, *, orphan: bool) -> None:
        await delete_object(
            self.context.store, kinds.PROPAGATION_BINDING, binding, preserve_resources=orphan
        )

    async def _keep_as_dependency(self, binding: work_pb2.PropagationBinding) -> None:
        """Drop what the policy asked for; what requires the object keeps it in place."""
        updated = kinds.PROPAGATION_BINDING.copy(binding)
        required_by = list(binding.spec.required_by)
        updated.spec.Clear()
        updated.spec.resource.CopyFrom(binding.spec.resource)
        updated.spec.required_by.extend(required_by)
        await self.context.store.update(kinds.PROPAGATION_BINDING, updated, current=binding)

    async def reconcile(self, key: str) -> Plan | None:
        context = self.context
        template = context.templates.get(key)
        binding = context.binding_of(key)
        if template is None:
            if binding is not None and not is_deleting(binding):
                await self._release(binding, orphan=False)
            return None
        if binding is not None and is_deleting(binding):
            return None  # its disappearance brings the template back here (_on_binding)
        namespace = template["metadata"].get("namespace", "")
        claimed = None
        if binding is not None:
            ref = binding.spec.policy
            claimed = (ref.kind, ref.namespace, ref.name)
        candidate = matching.choose(
            template,
            context.policies.objects(kinds.PROPAGATION_POLICY.prefix(namespace))
            if namespace
            else (),
            context.cluster_policies.objects(),
            claimed_by=claimed,
        )
        if candidate is None:
            if binding is not None and binding.spec.required_by:
                # Workloads that propagate their dependencies still need it there.
                if binding.spec.policy.kind:
                    await self._keep_as_dependency(binding)
                return None
            if binding is not None:
                # A system template bound before it was excluded keeps its member objects.
                orphan = matching.is_system(template) or not self._policy_exists(
                    binding.spec.policy
                )
                await self._release(binding, orphan=orphan)
            return None
        spec = desired_spec(
            candidate,
            template,
            binding.spec if binding is not None else None,
            context.interpreters,
        )
        if binding is None:
            new = work_pb2.PropagationBinding(
                api_version=kinds.PROPAGATION_BINDING.api_version, kind="PropagationBinding"
            )
            new.metadata.name = context.new_binding_name(template)
            new.metadata.namespace = namespace
            new.metadata.finalizers.append(FINALIZER)
            new.spec.CopyFrom(spec)
            await context.create_derived(context.bindings, new)
            return None
        if binding.spec != spec:
            updated = kinds.PROPAGATION_BINDING.copy(binding)
            updated.spec.CopyFrom(spec)
            await context.store.update(kinds.PROPAGATION_BINDING, updated, current=binding)
        return None
