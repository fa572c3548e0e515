"""The namespace controller: a Namespace no policy claims goes to every member cluster.

Key: the template key of a Namespace. Karmada's namespace sync controller sends every
namespace of its control plane to every member cluster, with no policy; Archipel does
the same for its Namespace templates, through an ordinary binding with
``autoPropagated`` set, no policy, and every member cluster not being deleted in
``spec.clusters`` (clusters' health and taints do not matter: a namespace costs
nothing, and one taken away would take everything in it along). The binding
controller turns it into works like any other, ClusterOverridePolicies included; the
scheduler leaves it alone, having no policy to place it by.

* Not sent: the system namespaces (``kube-*``, ``archipel-system``, the execution
  namespaces), ``default`` (every cluster has its own), a namespace labelled
  ``namespace.archipel.io/skip-auto-propagation`` or Karmada's
  ``namespace.karmada.io/skip-auto-propagation`` with ``"true"``, and one whose name
  fully matches a ``--skipped-propagating-namespaces`` pattern
  (:func:`archipel.core.matching.auto_propagates`).
* A ClusterPropagationPolicy that selects the Namespace wins: this controller writes
  nothing for it (not even while the policy waits for its dependentOverrides) and
  leaves an existing binding to the policy controller, which turns it into the
  policy's. When the policy lets it go, the policy controller turns the binding back
  into an auto-propagated one in the same write, so nothing leaves a member between.
* A cluster that joins gets every such namespace; one being deleted is dropped (its
  work goes without touching the member, as for any binding).
* Deleting the Namespace deletes its binding, which removes it from every member.
* A namespace that stops being eligible (a skip label added, a pattern that now
  matches) stops being synced and stays in the members, as in Karmada: its binding is
  deleted with ``preserveResourcesOnDeletion``. The label's removal sends it again.
* While the Namespace template itself is being deleted nothing changes (Karmada's
  controller waits for it to go too).

A reconcile is :meth:`NamespaceController.observe` (the caches) then :func:`plan`,
pure, which returns the one write on the binding it calls for; tested as a table in
tests/unit/test_plan_namespace.py.
"""

from __future__ import annotations

import dataclasses
import logging
import re

from archipel.core import kinds, matching
from archipel.core.kinds import CLUSTER_SCOPE, Manifest
from archipel.v1alpha1 import cluster_pb2, policy_pb2, work_pb2
from controlplane import bindings
from controlplane.context import (
    Context,
    template_key_of_binding,
)
from controlplane.plan import Plan
from controlplane.predicates import (
    generation_changed,
    is_deleting,
    lifecycle_changed,
    template_changed,
)

NAME = "namespace-controller"
log = logging.getLogger(__name__)
NAMESPACE_TEMPLATES = kinds.template_type_prefix("v1", "Namespace")


@dataclasses.dataclass(frozen=True)
class NamespaceObserved:
    """What the namespace controller decides from, for one Namespace template key."""

    template: Manifest | None
    """The Namespace template; None once it is deleted."""
    binding: work_pb2.PropagationBinding | None
    """Its binding (found by what it binds), if any."""
    clusters: tuple[str, ...] = ()
    """The member clusters, those being deleted left out, sorted."""
    cluster_policies: tuple[policy_pb2.ClusterPropagationPolicy, ...] = ()
    """Every ClusterPropagationPolicy: one that selects the Namespace claims it."""
    skipped: tuple[re.Pattern[str], ...] = ()
    """``--skipped-propagating-namespaces``."""
    new_binding_name: str = ""
    """The name a first binding of the template gets (only set when it has none)."""
    quarantined: int = 0
    """The mod_revision of an undecodable value stored at the new binding's key (0:
    none); the new binding is written over it."""


def plan(observed: NamespaceObserved) -> Plan | None:
    """The write that makes the Namespace's binding send it to every member cluster,
    or take it away; None when nothing is this controller's to do."""
    template, binding = observed.template, observed.binding
    if binding is not None and (is_deleting(binding) or binding.spec.policy.kind):
        # A deletion finishes first (its disappearance brings the key back); a
        # policy's binding is the policy controller's.
        return None
    if template is None:
        if binding is None or not binding.spec.auto_propagated:
            return None
        result = Plan()
        # Deleting the Namespace removes it from the members, as in Karmada.
        result.delete(kinds.PROPAGATION_BINDING, binding)
        return result
    if "deletionTimestamp" in template.get("metadata", {}):
        return None
    if matching.choose(template, (), observed.cluster_policies) is not None:
        return None  # the policy controller's, even while its policy waits for overrides
    if not matching.auto_propagates(template, observed.skipped):
        if binding is None or not binding.spec.auto_propagated:
            return None
        return _stop(binding)
    spec = bindings.auto_propagated_spec(
        template, observed.clusters, binding.spec if binding is not None else None
    )
    if binding is None:
        return bindings.create(
            template, spec, name=observed.new_binding_name, quarantined=observed.quarantined
        )
    if binding.spec == spec:
        return None
    # An auto-propagated binding kept current, or one that only followed the workloads
    # requiring the Namespace, which now goes everywhere.
    result = Plan()
    updated = kinds.PROPAGATION_BINDING.copy(binding)
    updated.spec.CopyFrom(spec)
    result.update(kinds.PROPAGATION_BINDING, updated, current=binding)
    return result


def _stop(binding: work_pb2.PropagationBinding) -> Plan | None:
    """No more syncing; the namespace stays in the members (Karmada's behaviour when
    the skip label is added). What requires the Namespace keeps it where it needs it."""
    return bindings.let_go(binding, orphan=True)


class NamespaceController:
    def __init__(self, context: Context) -> None:
        self.context = context
        self.controller = context.controller(NAME, self.reconcile)
        context.templates.add_handler(self._on_template)
        context.bindings.add_handler(self._on_binding)
        context.clusters.add_handler(self._on_cluster)
        context.cluster_policies.add_handler(self._on_policy)

    def _every_namespace(self) -> None:
        for key in self.context.templates.list_keys(NAMESPACE_TEMPLATES):
            self.controller.enqueue(key)

    def _on_template(self, key: str, old: Manifest | None, new: Manifest | None) -> None:
        # Its labels (skip labels) and deletion matter, its aggregated status does not.
        if key.startswith(NAMESPACE_TEMPLATES) and template_changed(old, new):
            self.controller.enqueue(key)

    def _on_binding(
        self,
        key: str,
        old: work_pb2.PropagationBinding | None,
        new: work_pb2.PropagationBinding | None,
    ) -> None:
        # A policy letting go, a binding finishing its deletion, an edit of its spec.
        if not (generation_changed(old, new) or lifecycle_changed(old, new)):
            return
        binding = new or old
        if binding is not None and binding.spec.resource.kind == "Namespace":
            template_key = template_key_of_binding(binding)
            if template_key.startswith(NAMESPACE_TEMPLATES):
                self.controller.enqueue(template_key)

    def _on_cluster(
        self,
        key: str,
        old: cluster_pb2.MemberCluster | None,
        new: cluster_pb2.MemberCluster | None,
    ) -> None:
        # Joined, removed, or being deleted: every namespace's clusters change. Health
        # and heartbeats do not matter here.
        gone = new is None or is_deleting(new)
        was_gone = old is None or is_deleting(old)
        if gone != was_gone:
            self._every_namespace()

    def _on_policy(
        self,
        key: str,
        old: policy_pb2.ClusterPropagationPolicy | None,
        new: policy_pb2.ClusterPropagationPolicy | None,
    ) -> None:
        # A policy may claim or let go of any Namespace: which, only matching tells.
        if generation_changed(old, new) or lifecycle_changed(old, new):
            self._every_namespace()

    def observe(self, key: str) -> NamespaceObserved:
        """The Namespace at ``key``, its binding, the clusters and whether a policy
        claims it, as the caches hold them now."""
        context = self.context
        template = context.templates.get(key)
        binding = context.binding_of(key)
        if template is None or (binding is not None and is_deleting(binding)):
            return NamespaceObserved(template=template, binding=binding)
        new_name, quarantined = "", 0
        if binding is None:
            new_name = context.new_binding_name(template)
            corrupt = context.bindings.quarantined.get(kinds.PROPAGATION_BINDING.key("", new_name))
            quarantined = corrupt[0] if corrupt is not None else 0
        return NamespaceObserved(
            template=template,
            binding=binding,
            clusters=tuple(
                sorted(c.metadata.name for c in context.clusters.objects() if not is_deleting(c))
            ),
            cluster_policies=tuple(context.cluster_policies.objects()),
            skipped=context.settings.skipped_propagating_namespaces,
            new_binding_name=new_name,
            quarantined=quarantined,
        )

    async def reconcile(self, key: str) -> Plan | None:
        if not key.startswith(NAMESPACE_TEMPLATES) or key.split("/")[3] != CLUSTER_SCOPE:
            return None
        return plan(self.observe(key))
