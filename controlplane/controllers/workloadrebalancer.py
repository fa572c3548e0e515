"""The workload rebalancer controller: schedules the workloads a WorkloadRebalancer
names from scratch, as Karmada's does.

Key: a rebalancer key. A placement is kept once made (nothing moves back by itself to
a cluster that recovered); a WorkloadRebalancer asks for a fresh division. For each
workload of its spec that has no result yet, the workload's binding (found by what it
binds, never by a computed name) gets ``spec.rescheduleTriggeredAt`` set to the
rebalancer's creationTimestamp, unless it already holds that time or a later one, and
the scheduler divides afresh; the workload's result is ``Successful``. A workload no
binding binds is ``Failed`` with ``ReferencedBindingNotFound``. Results are final: a
workload gets one per generation of the spec it was added in. An edit of the spec
gives the added workloads their results and drops the removed ones from the status.

When every workload has its result, ``status.finishTime`` is set (again whenever the
status changes); with ``spec.ttlSecondsAfterFinished``, the rebalancer is deleted that
many seconds later, by a requeue for exactly then.

:meth:`WorkloadRebalancerController.observe` copies the rebalancer and its workloads'
bindings out of the caches; :func:`plan`, pure, decides: the bindings' writes, the
rebalancer's status or its deletion, in one guarded transaction.
"""

from __future__ import annotations

import dataclasses
import datetime
from collections.abc import Mapping

from archipel.core import kinds
from archipel.v1alpha1 import apps_pb2, work_pb2
from controlplane.context import Context
from controlplane.plan import Plan
from controlplane.predicates import generation_changed, is_deleting

NAME = "workload-rebalancer-controller"
SUCCESSFUL = "Successful"
FAILED = "Failed"
BINDING_NOT_FOUND = "ReferencedBindingNotFound"

Identity = tuple[str, str, str, str]


def identity(workload: apps_pb2.WorkloadReference) -> Identity:
    """A workload as the status orders and compares it: apiVersion, kind, namespace, name."""
    return (workload.api_version, workload.kind, workload.namespace, workload.name)


def template_key_of(workload: apps_pb2.WorkloadReference) -> str:
    """The key of the template a workload reference names (bindings are indexed by it)."""
    return kinds.template_key(
        workload.api_version, workload.kind, workload.namespace, workload.name
    )


@dataclasses.dataclass(frozen=True)
class Observed:
    """What one rebalancer's reconcile decides from."""

    rebalancer: apps_pb2.WorkloadRebalancer | None
    """The rebalancer; None once it is gone."""
    bindings: Mapping[str, work_pb2.PropagationBinding]
    """The binding of each workload of the spec that has one, by the workload's
    template key."""
    now: datetime.datetime
    """When the decision is made: the finish time, and how much of the TTL is left."""


def sync_status(rebalancer: apps_pb2.WorkloadRebalancer) -> apps_pb2.WorkloadRebalancerStatus:
    """The status for the current spec, before this pass's results: the workloads still
    in the spec keep their results, removed ones drop, added ones have none yet; ordered
    by apiVersion, kind, namespace and name."""
    kept = {identity(o.workload): o for o in rebalancer.status.observed_workloads}
    status = apps_pb2.WorkloadRebalancerStatus(observed_generation=rebalancer.metadata.generation)
    for key, workload in sorted({identity(w): w for w in rebalancer.spec.workloads}.items()):
        entry = status.observed_workloads.add()
        if key in kept:
            entry.CopyFrom(kept[key])
        else:
            entry.workload.CopyFrom(workload)
    return status


def _instant(timestamp: datetime.datetime) -> datetime.datetime:
    """A time as the API stores it: whole seconds, as Kubernetes' timestamps."""
    return timestamp.astimezone(datetime.UTC).replace(microsecond=0)


def needs_trigger(binding: work_pb2.PropagationBinding, at: datetime.datetime) -> bool:
    """Whether the binding's last reschedule request is older than ``at`` (or absent)."""
    spec = binding.spec
    if not spec.HasField("reschedule_triggered_at"):
        return True
    return spec.reschedule_triggered_at.ToDatetime(tzinfo=datetime.UTC) < at


def plan(observed: Observed) -> Plan | None:
    """The writes that give every workload of the spec its result, the status that
    records them, and the rebalancer's deletion once its TTL has run out; None when all
    is as it should be."""
    rebalancer = observed.rebalancer
    if rebalancer is None or is_deleting(rebalancer):
        return None
    result = Plan()
    now = _instant(observed.now)
    meta = rebalancer.metadata
    created = (
        meta.creation_timestamp.ToDatetime(tzinfo=datetime.UTC)
        if meta.HasField("creation_timestamp")
        else now
    )
    status = sync_status(rebalancer)
    triggered: set[str] = set()
    for entry in status.observed_workloads:
        if entry.result:
            continue
        binding = observed.bindings.get(template_key_of(entry.workload))
        if binding is None:
            entry.result, entry.reason = FAILED, BINDING_NOT_FOUND
            continue
        key = kinds.PROPAGATION_BINDING.key_of(binding)
        # Two references may name one template (apps/v1 and apps/v1beta1): one write.
        if key not in triggered and needs_trigger(binding, created):
            triggered.add(key)
            updated = kinds.PROPAGATION_BINDING.copy(binding)
            updated.spec.reschedule_triggered_at.FromDatetime(created)
            result.update(kinds.PROPAGATION_BINDING, updated, current=binding)
        entry.result = SUCCESSFUL
    previous = rebalancer.status
    if previous.HasField("finish_time"):
        status.finish_time.CopyFrom(previous.finish_time)
    finished = all(entry.result for entry in status.observed_workloads)
    if status != previous and finished:
        status.finish_time.FromDatetime(now)
    spec = rebalancer.spec
    if spec.HasField("ttl_seconds_after_finished") and status.HasField("finish_time"):
        expires = status.finish_time.ToDatetime(tzinfo=datetime.UTC) + datetime.timedelta(
            seconds=spec.ttl_seconds_after_finished
        )
        if now >= expires:
            result.delete(kinds.WORKLOAD_REBALANCER, rebalancer)
            return result
        result.requeue_after = (expires - now).total_seconds()
    if status != previous:
        updated_rebalancer = kinds.WORKLOAD_REBALANCER.copy(rebalancer)
        updated_rebalancer.status.CopyFrom(status)
        result.update(kinds.WORKLOAD_REBALANCER, updated_rebalancer, current=rebalancer)
    return result if result.writes or result.requeue_after else None


class WorkloadRebalancerController:
    def __init__(self, context: Context) -> None:
        self.context = context
        self.controller = context.controller(NAME, self.reconcile)
        context.rebalancers.add_handler(self._on_rebalancer)

    def _on_rebalancer(
        self,
        key: str,
        old: apps_pb2.WorkloadRebalancer | None,
        new: apps_pb2.WorkloadRebalancer | None,
    ) -> None:
        # A new rebalancer or a new spec; its own status writes bring nothing to do (the
        # TTL is a requeue), and a deleted one needs nothing.
        if new is not None and generation_changed(old, new):
            self.controller.enqueue(key)

    def observe(self, key: str) -> Observed:
        """The rebalancer and its workloads' bindings, as the caches hold them now."""
        rebalancer = self.context.rebalancers.get(key)
        bindings: dict[str, work_pb2.PropagationBinding] = {}
        if rebalancer is not None:
            for workload in rebalancer.spec.workloads:
                template_key = template_key_of(workload)
                binding = self.context.binding_of(template_key)
                if binding is not None:
                    bindings[template_key] = binding
        return Observed(
            rebalancer=rebalancer, bindings=bindings, now=datetime.datetime.now(datetime.UTC)
        )

    async def reconcile(self, key: str) -> Plan | None:
        return plan(self.observe(key))
