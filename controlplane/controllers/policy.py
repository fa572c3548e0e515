"""The policy controller: matches resource templates to policies and writes bindings.

Key: a template key. Level-triggered: for the template as it is now, pick the policy
that should propagate it (Karmada's precedence, see :mod:`archipel.core.matching`) and
make the template's PropagationBinding say so. A template that no policy matches any
more loses its binding: when its policy still exists (the template's labels changed,
say) the objects are removed from the members; when the policy itself was deleted,
the binding goes but the objects stay in place, as in Karmada. A policy whose
``dependentOverrides`` are not all stored writes nothing until they are (Karmada's
detector); the template says so in the log, and on its binding if it has one.

A Namespace that no policy claims goes to every member cluster by itself, through a
binding the namespace controller keeps (``autoPropagated``; see
:mod:`controlplane.controllers.namespace`). This controller leaves such a binding
alone, takes it over (as its own, with the policy's placement) when a policy claims
the Namespace, and, when the policy lets go of a Namespace that is sent everywhere by
itself, turns the binding back into an auto-propagated one instead of deleting it: the
namespace, and all that runs in it, never leaves a member in between.

A reconcile is two steps. :meth:`PolicyController.observe` copies what the decision
needs out of the caches into a :class:`PolicyObserved`; :func:`plan`, pure (no I/O,
no clock), decides and returns the one write it calls for (create, update or delete
of the binding) as a :class:`~controlplane.plan.Plan`, which the runtime commits
guarded by the resourceVersion observed. The decisions are tested as tables without
etcd (tests/unit/test_plan_policy.py).
"""

from __future__ import annotations

import dataclasses
import datetime
import functools
import logging
from collections.abc import Iterable, Mapping

from archipel import interpreter
from archipel.core import kinds, matching
from archipel.core.conditions import find, set_condition
from archipel.core.kinds import Manifest
from archipel.core.workloads import (
    PRIORITY_CLASS_API_VERSION,
    PRIORITY_CLASS_KIND,
    priority_class_key,
    priority_value,
    replica_requests,
    template_replicas,
)
from archipel.v1alpha1 import interpreter_pb2, override_pb2, policy_pb2, work_pb2
from controlplane import bindings
from controlplane.context import (
    Context,
    customization_targets,
    template_key_of_binding,
)
from controlplane.plan import Plan
from controlplane.predicates import (
    generation_changed,
    is_deleting,
    lifecycle_changed,
    template_changed,
    template_digest,
)

NAME = "policy-controller"
log = logging.getLogger(__name__)
# On a binding whose template's policy waits for its dependentOverrides.
OVERRIDES_READY = "DependentOverridesReady"


BUILTIN_INTERPRETERS = interpreter.Registry()
_PRIORITY_CLASSES = kinds.template_type_prefix(PRIORITY_CLASS_API_VERSION, PRIORITY_CLASS_KIND)


def desired_spec(
    candidate: matching.Candidate,
    manifest: Manifest,
    current: work_pb2.PropagationBindingSpec | None,
    interpreters: interpreter.Registry = BUILTIN_INTERPRETERS,
    priority_classes: Mapping[str, int] | None = None,
) -> work_pb2.PropagationBindingSpec:
    """The binding spec the policy asks for. ``priority_classes`` maps the
    PriorityClass templates' names to their values; a schedulePriority naming one that
    is missing leaves the priority unset, and the scheduler holds the binding."""
    policy_spec: policy_pb2.PropagationSpec = candidate.policy.spec
    metadata = manifest["metadata"]
    spec = work_pb2.PropagationBindingSpec()
    if current is not None:
        # The scheduler owns the result and the eviction tasks, the dependencies
        # controller requiredBy; keep them.
        spec.clusters.extend(current.clusters)
        spec.graceful_eviction_tasks.extend(current.graceful_eviction_tasks)
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
    if (
        current is not None
        and current.suspension.HasField("scheduling")
        and not policy_spec.suspension.HasField("scheduling")
    ):
        # Karmada's binding-level field, set on the binding by whoever holds its
        # scheduling back: a policy that does not say otherwise leaves it alone.
        spec.suspension.scheduling = current.suspension.scheduling
    if policy_spec.HasField("failover"):
        spec.failover.CopyFrom(policy_spec.failover)
    spec.scheduler_name = policy_spec.scheduler_name or "default-scheduler"
    # association is Karmada's deprecated name for propagateDeps.
    spec.propagate_deps = policy_spec.propagate_deps or policy_spec.association
    if policy_spec.HasField("schedule_priority"):
        name = policy_spec.schedule_priority.priority_class_name
        spec.schedule_priority.priority_class_name = name
        value = (priority_classes or {}).get(name)
        if value is not None:
            spec.schedule_priority.priority = value
    spec.template_digest = template_digest(manifest)
    return spec


@dataclasses.dataclass(frozen=True)
class PolicyObserved:
    """What the policy controller decides from, for one template key."""

    template: Manifest | None
    """The template; None once it is deleted."""
    binding: work_pb2.PropagationBinding | None
    """The template's binding (found by what it binds), if any."""
    policies: tuple[policy_pb2.PropagationPolicy, ...] = ()
    """The PropagationPolicies of the template's namespace (none for a cluster-scoped
    template)."""
    cluster_policies: tuple[policy_pb2.ClusterPropagationPolicy, ...] = ()
    claimed_policy_exists: bool = False
    """Whether the policy the binding names is still stored: when it is gone, the
    binding goes but the member objects stay."""
    new_binding_name: str = ""
    """The name a first binding of the template gets (only set when it has none)."""
    quarantined: int = 0
    """The mod_revision of an undecodable value stored at the new binding's key (0:
    none); the new binding is written over it."""
    interpreters: interpreter.Registry = BUILTIN_INTERPRETERS
    overrides: frozenset[str] = frozenset()
    """The names of the OverridePolicies of the template's namespace."""
    cluster_overrides: frozenset[str] = frozenset()
    """The names of the ClusterOverridePolicies."""
    priority_classes: Mapping[str, int] = dataclasses.field(default_factory=dict)
    """The PriorityClass templates, name to value: what schedulePriority resolves to."""
    now: datetime.datetime | None = None
    """When the observation was made: what a condition's transition says."""
    auto_propagates: bool = False
    """Whether the template is a Namespace that goes to every member cluster when no
    policy claims it (:func:`archipel.core.matching.auto_propagates`)."""


def plan(observed: PolicyObserved) -> Plan | None:
    """The write that makes the template's binding what the matching policy says, or
    None when it already does (or a deletion under way must finish first)."""
    template, binding = observed.template, observed.binding
    if template is None:
        if binding is None or is_deleting(binding) or binding.spec.auto_propagated:
            return None  # an auto-propagated one is the namespace controller's to delete
        result = Plan()
        result.delete(kinds.PROPAGATION_BINDING, binding)
        return result
    if binding is not None and is_deleting(binding):
        return None  # its disappearance brings the template back here (_on_binding)
    claimed = None
    if binding is not None:
        ref = binding.spec.policy
        claimed = (ref.kind, ref.namespace, ref.name)
    candidate = matching.choose(
        template, observed.policies, observed.cluster_policies, claimed_by=claimed
    )
    if candidate is None:
        if binding is None or binding.spec.auto_propagated:
            return None  # nothing of a policy's, or the namespace controller's
        if binding.spec.policy.kind and observed.auto_propagates:
            return _hand_over(binding, template)
        # Workloads that propagate their dependencies still need it where they run. A
        # system template bound before it was excluded keeps its member objects, and
        # so does one whose policy was deleted.
        return bindings.let_go(
            binding,
            orphan=matching.is_system(template) or not observed.claimed_policy_exists,
        )
    if candidate.policy.spec.activation_preference == "Lazy" and not _activates(
        observed, candidate
    ):
        return None
    spec = desired_spec(
        candidate,
        template,
        binding.spec if binding is not None else None,
        observed.interpreters,
        observed.priority_classes,
    )
    missing = matching.missing_dependent_overrides(
        candidate, observed.overrides, observed.cluster_overrides
    )
    if missing and (binding is None or binding.spec != spec):
        return _wait_for_overrides(observed, candidate, missing)
    if binding is None:
        return bindings.create(
            template, spec, name=observed.new_binding_name, quarantined=observed.quarantined
        )
    result = Plan()
    updated = kinds.PROPAGATION_BINDING.copy(binding)
    updated.spec.CopyFrom(spec)
    waited = find(binding.status.conditions, OVERRIDES_READY)
    if waited is not None and waited.status != "True":
        # Nothing waits any more: the overrides exist, or (one was deleted since) the
        # binding already is what the policy says.
        set_condition(
            updated.status.conditions,
            OVERRIDES_READY,
            "True",
            "NothingHeldBack" if missing else "DependentOverridesPresent",
            "the binding is what its policy says"
            if missing
            else "every override the policy depends on exists",
            binding.metadata.generation + (binding.spec != spec),
            now=observed.now,
        )
    if updated == binding:
        return None
    result.update(kinds.PROPAGATION_BINDING, updated, current=binding)
    return result


def _activates(observed: PolicyObserved, candidate: matching.Candidate) -> bool:
    """Karmada's lazy activation: whether a Lazy policy applies to the template now.

    It does when the template changed (spec, labels or annotations) since the binding
    was last written from a policy, or, for a template not bound yet, since the policy
    was last written: etcd revisions order the two writes. A binding whose policy is
    gone, or one that exists only for requiredBy, is no state to keep.
    """
    template, binding = observed.template, observed.binding
    assert template is not None
    if binding is not None and observed.claimed_policy_exists:
        recorded = binding.spec.template_digest
        return not recorded or recorded != template_digest(template)
    if binding is not None and binding.spec.policy.kind:
        return True
    written = int(template["metadata"].get("resourceVersion") or 0)
    return written > int(candidate.policy.metadata.resource_version or 0)


def _wait_for_overrides(
    observed: PolicyObserved, candidate: matching.Candidate, missing: list[str]
) -> Plan | None:
    """Karmada's dependentOverrides: the policy is applied to the template only while
    every override it names exists. Until then nothing is written from it: no binding
    is created, an existing one keeps its spec (and what it propagated stays) and says
    why in a DependentOverridesReady=False condition. As in Karmada's detector, this
    holds for every application of the policy, so an override deleted after the policy
    took effect removes nothing but holds the policy's (and the template's) later
    changes to the binding until it is back. An override's creation brings the template
    back here (:meth:`PolicyController._on_override`)."""
    template, binding = observed.template, observed.binding
    assert template is not None
    message = matching.waiting_for_overrides(candidate, missing)
    metadata = template["metadata"]
    where = "/".join(p for p in (metadata.get("namespace", ""), metadata["name"]) if p)
    result = Plan()
    result.committed.append(
        functools.partial(log.info, "%s %s: %s", template["kind"], where, message)
    )
    if binding is None:
        return result
    updated = kinds.PROPAGATION_BINDING.copy(binding)
    if set_condition(
        updated.status.conditions,
        OVERRIDES_READY,
        "False",
        "WaitingForDependentOverrides",
        message,
        binding.metadata.generation,
        now=observed.now,
    ):
        result.update(kinds.PROPAGATION_BINDING, updated, current=binding)
    return result


def _hand_over(binding: work_pb2.PropagationBinding, template: Manifest) -> Plan:
    """A policy let go of a Namespace that goes everywhere by itself: the binding
    becomes an auto-propagated one, still on the clusters the policy chose (the
    namespace controller adds the others), so no member loses it meanwhile."""
    updated = kinds.PROPAGATION_BINDING.copy(binding)
    updated.spec.CopyFrom(
        bindings.auto_propagated_spec(
            template, (t.name for t in binding.spec.clusters), binding.spec
        )
    )
    result = Plan()
    result.update(kinds.PROPAGATION_BINDING, updated, current=binding)
    return result


class PolicyController:
    def __init__(self, context: Context) -> None:
        self.context = context
        self.controller = context.controller(NAME, self.reconcile)
        context.templates.add_handler(self._on_template)
        context.policies.add_handler(self._on_policy)
        context.cluster_policies.add_handler(self._on_policy)
        context.bindings.add_handler(self._on_binding)
        context.customizations.add_handler(self._on_customization)
        context.overrides.add_handler(self._on_override)
        context.cluster_overrides.add_handler(self._on_override)

    def _on_template(self, key: str, old: Manifest | None, new: Manifest | None) -> None:
        # Aggregated status written back into the template changes nothing here.
        if not template_changed(old, new):
            return
        self.controller.enqueue(key)
        if key.startswith(_PRIORITY_CLASSES):
            # The bindings whose schedulePriority names it take its value (or lose it).
            name = key.rsplit("/", 1)[-1]
            for binding in self.context.bindings.objects():
                if binding.spec.schedule_priority.priority_class_name == name:
                    self.controller.enqueue(template_key_of_binding(binding))

    def _on_policy(
        self,
        key: str,
        old: policy_pb2.PropagationPolicy | policy_pb2.ClusterPropagationPolicy | None,
        new: policy_pb2.PropagationPolicy | policy_pb2.ClusterPropagationPolicy | None,
    ) -> None:
        # What a policy matches and asks for is its spec; a deleting policy claims
        # nothing any more. A policy can claim or release any template in its scope;
        # namespaced policies only ever see their own namespace.
        if not (generation_changed(old, new) or lifecycle_changed(old, new)):
            return
        namespace = key.split("/")[1]
        for template_key in self.context.templates.list_keys():
            if namespace == kinds.CLUSTER_SCOPE or template_key.split("/")[3] == namespace:
                self.controller.enqueue(template_key)

    def _on_override(
        self,
        key: str,
        old: override_pb2.OverridePolicy | override_pb2.ClusterOverridePolicy | None,
        new: override_pb2.OverridePolicy | override_pb2.ClusterOverridePolicy | None,
    ) -> None:
        # dependentOverrides wait for an override to exist: its creation (or deletion)
        # concerns the templates in the scope of a policy that names it. A
        # PropagationPolicy names OverridePolicies of its namespace, a
        # ClusterPropagationPolicy ClusterOverridePolicies.
        if (old is None) == (new is None):
            return
        found = new or old
        assert found is not None
        name, namespace = found.metadata.name, found.metadata.namespace
        if namespace:
            prefix = kinds.PROPAGATION_POLICY.prefix(namespace)
            policies: list[policy_pb2.PropagationPolicy | policy_pb2.ClusterPropagationPolicy]
            policies = list(self.context.policies.objects(prefix))
        else:
            policies = list(self.context.cluster_policies.objects())
        if not any(name in p.spec.dependent_overrides for p in policies):
            return
        for template_key in self.context.templates.list_keys():
            if not namespace or template_key.split("/")[3] == namespace:
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
        if not generation_changed(old, new):
            return
        binding = new or old
        if binding is not None and binding.spec.resource.kind:
            self.controller.enqueue(template_key_of_binding(binding))

    def _policy_exists(self, ref: work_pb2.PolicyReference) -> bool:
        if ref.kind == "PropagationPolicy":
            key = kinds.PROPAGATION_POLICY.key(ref.namespace, ref.name)
            return self.context.policies.get(key) is not None
        if ref.kind == "ClusterPropagationPolicy":
            key = kinds.CLUSTER_PROPAGATION_POLICY.key("", ref.name)
            return self.context.cluster_policies.get(key) is not None
        return False

    def _priority_classes(
        self,
        policies: Iterable[policy_pb2.PropagationPolicy | policy_pb2.ClusterPropagationPolicy],
    ) -> dict[str, int]:
        """The values of the PriorityClasses these policies name (read one by one: the
        templates are many, the classes named few)."""
        classes = {}
        for policy in policies:
            name = policy.spec.schedule_priority.priority_class_name
            found = self.context.templates.get(priority_class_key(name)) if name else None
            value = priority_value(found) if found is not None else None
            if value is not None:
                classes[name] = value
        return classes

    def observe(self, key: str) -> PolicyObserved:
        """The template at ``key``, its binding and the policies that could claim it,
        as the caches hold them now."""
        context = self.context
        template = context.templates.get(key)
        binding = context.binding_of(key)
        if template is None or (binding is not None and is_deleting(binding)):
            return PolicyObserved(template=template, binding=binding)
        namespace = template["metadata"].get("namespace", "")
        new_name, quarantined = "", 0
        if binding is None:
            new_name = context.new_binding_name(template)
            corrupt = context.bindings.quarantined.get(
                kinds.PROPAGATION_BINDING.key(namespace, new_name)
            )
            quarantined = corrupt[0] if corrupt is not None else 0
        policies = (
            tuple(context.policies.objects(kinds.PROPAGATION_POLICY.prefix(namespace)))
            if namespace
            else ()
        )
        cluster_policies = tuple(context.cluster_policies.objects())
        return PolicyObserved(
            template=template,
            binding=binding,
            policies=policies,
            cluster_policies=cluster_policies,
            claimed_policy_exists=binding is not None and self._policy_exists(binding.spec.policy),
            new_binding_name=new_name,
            quarantined=quarantined,
            interpreters=context.interpreters,
            overrides=frozenset(
                o.metadata.name
                for o in context.overrides.objects(kinds.OVERRIDE_POLICY.prefix(namespace))
            )
            if namespace
            else frozenset(),
            cluster_overrides=frozenset(
                o.metadata.name for o in context.cluster_overrides.objects()
            ),
            priority_classes=self._priority_classes((*policies, *cluster_policies)),
            now=datetime.datetime.now(datetime.UTC),
            auto_propagates=matching.auto_propagates(
                template, context.settings.skipped_propagating_namespaces
            ),
        )

    async def reconcile(self, key: str) -> Plan | None:
        return plan(self.observe(key))
