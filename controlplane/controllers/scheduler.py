"""The scheduler controller: decides each binding's target clusters.

Key: a binding key. A reconcile gathers an :class:`Observed` (the binding, the member
clusters as scheduling should see them, the time) and :func:`plan` turns it into at
most one write: the binding with the result of :func:`archipel.core.scheduling.schedule`
in ``spec.clusters`` and the ``Scheduled`` condition. The capacity a new placement
hands out is recorded as assumed only once that write landed (``Plan.committed``), so
a lost race assumes nothing.

The snapshot of clusters is kept by the cluster handler, so a reconcile never rebuilds
it; which bindings a cluster change sends back here is :func:`requeue_on_cluster_change`:
all of them when anything placement reads changed (joined, removed, relabelled,
tainted), only those that could not be placed when only free capacity moved.
"""

from __future__ import annotations

import dataclasses
import datetime
import functools
from collections.abc import Iterable

from archipel.core import division, kinds, scheduling
from archipel.core.conditions import find, set_condition
from archipel.core.errors import Invalid
from archipel.v1alpha1 import cluster_pb2, work_pb2
from controlplane.context import Context
from controlplane.plan import Plan
from controlplane.predicates import generation_changed, is_deleting

NAME = "scheduler"


@dataclasses.dataclass(frozen=True)
class Observed:
    """What one scheduling decision is made from."""

    binding: work_pb2.PropagationBinding
    clusters: tuple[scheduling.ClusterInfo, ...]
    """Every member cluster, free capacity already less what was assumed."""
    now: datetime.datetime
    """When the decision is made: ``lastScheduledTime`` and condition transitions."""
    assumed: scheduling.AssumedCapacity
    """Where the plan's bookkeeping records the capacity a new placement hands out; the
    plan itself never reads it (``clusters`` already counts it)."""


class SchedulerController:
    def __init__(self, context: Context) -> None:
        self.context = context
        self.controller = context.controller(NAME, self.reconcile)
        self._snapshot: dict[str, scheduling.ClusterInfo] = {}
        self._assumed = scheduling.AssumedCapacity()
        context.bindings.add_handler(self._on_binding)
        context.clusters.add_handler(self._on_cluster)

    def _on_binding(
        self,
        key: str,
        old: work_pb2.PropagationBinding | None,
        new: work_pb2.PropagationBinding | None,
    ) -> None:
        # Only a spec change can change the decision; the scheduler's own status writes
        # (the condition) must not bring the binding back.
        if new is not None and generation_changed(old, new):
            self.controller.enqueue(key)

    def _on_cluster(
        self,
        key: str,
        old: cluster_pb2.MemberCluster | None,
        new: cluster_pb2.MemberCluster | None,
    ) -> None:
        after = scheduling.ClusterInfo.from_proto(new) if new is not None else None
        before = self._snapshot.get(key)
        if after is None:
            self._snapshot.pop(key, None)
        else:
            self._snapshot[key] = after
        if capacity_reported(before, after):
            self._assumed.reported(key.rsplit("/", 1)[-1])
        for binding_key in requeue_on_cluster_change(
            before, after, self.context.bindings.objects()
        ):
            self.controller.enqueue(binding_key)

    async def reconcile(self, key: str) -> Plan | None:
        binding = self.context.bindings.get(key)
        if binding is None:
            return None
        return plan(
            Observed(
                binding=binding,
                clusters=tuple(self._assumed.apply(list(self._snapshot.values()))),
                now=datetime.datetime.now(datetime.UTC),
                assumed=self._assumed,
            )
        )


def capacity_reported(
    before: scheduling.ClusterInfo | None, after: scheduling.ClusterInfo | None
) -> bool:
    """Whether a cluster change brings new capacity figures (or ends the cluster's):
    the agent's figures already count what was handed out, so what the scheduler
    assumed for that cluster must be dropped, or it would be counted twice."""
    if before == after:
        return False
    return before is None or after is None or before.free != after.free


def requeue_on_cluster_change(
    before: scheduling.ClusterInfo | None,
    after: scheduling.ClusterInfo | None,
    bindings: Iterable[work_pb2.PropagationBinding],
) -> list[str]:
    """The keys of the bindings a cluster change can place differently.

    Anything placement reads (the cluster's existence, labels, spec, taints, APIs,
    nodes) can move any binding. Free capacity moves with every heartbeat: then only
    the bindings that could not be placed are looked at again, so nothing placed churns.
    """
    if before == after:
        return []
    if (
        before is not None
        and after is not None
        and dataclasses.replace(before, free=None) == dataclasses.replace(after, free=None)
    ):
        return [kinds.PROPAGATION_BINDING.key_of(b) for b in bindings if unscheduled(b)]
    return [kinds.PROPAGATION_BINDING.key_of(b) for b in bindings]


def unscheduled(binding: work_pb2.PropagationBinding) -> bool:
    """Scheduling failed last time (``Scheduled=False``): more room may be what it needs."""
    condition = find(binding.status.conditions, "Scheduled")
    return condition is not None and condition.status == "False"


def plan(observed: Observed) -> Plan | None:
    """The binding with this decision written into it, or None when it already is.

    A binding that is going away, or that has no policy (it exists only to follow the
    workloads requiring it), is not scheduled.
    """
    binding = observed.binding
    if is_deleting(binding) or not binding.spec.policy.kind:
        return None
    spec = binding.spec
    # A reschedule asked for after the last decision divides from scratch.
    fresh = spec.HasField("reschedule_triggered_at") and (
        not binding.status.HasField("last_scheduled_time")
        or spec.reschedule_triggered_at.ToDatetime()
        > binding.status.last_scheduled_time.ToDatetime()
    )
    try:
        requests = scheduling.parse_requests(spec.replica_requirements.resource_request)
    except Invalid as error:
        requests, invalid = {}, str(error)
    else:
        invalid = ""
    decision = scheduling.schedule(
        spec.placement,
        replicas=spec.replicas,
        clusters=observed.clusters,
        current={t.name: t.replicas for t in spec.clusters},
        requests=requests,
        seed=division.tie_break_seed(binding.metadata.uid),
        fresh=fresh,
        resource=(spec.resource.api_version, spec.resource.kind),
    )
    if invalid:
        decision = scheduling.Decision((), "SchedulerError", invalid)
    updated = kinds.PROPAGATION_BINDING.copy(binding)
    del updated.spec.clusters[:]
    for target in decision.targets:
        updated.spec.clusters.add(name=target.name, replicas=target.replicas)
    spec_changed = updated.spec != binding.spec
    # The generation the store gives the update: the condition speaks of the spec it
    # is written with.
    generation = binding.metadata.generation + (1 if spec_changed else 0)
    set_condition(
        updated.status.conditions,
        "Scheduled",
        "True" if decision.scheduled else "False",
        decision.reason,
        decision.message,
        generation,
        now=observed.now,
    )
    updated.status.scheduler_observed_generation = generation
    if spec_changed:
        updated.status.last_scheduled_time.FromDatetime(observed.now)
    if updated == binding:
        return None
    result = Plan()
    result.update(kinds.PROPAGATION_BINDING, updated, current=binding)
    if spec_changed:
        result.committed.append(
            functools.partial(
                observed.assumed.assume,
                {t.name: t.replicas for t in binding.spec.clusters},
                {t.name: t.replicas for t in updated.spec.clusters},
                requests,
            )
        )
    return result
