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
import time
from collections.abc import Iterable, Mapping

from archipel.core import division, eviction, kinds, scheduling
from archipel.core.conditions import find, set_condition
from archipel.core.errors import Invalid
from archipel.v1alpha1 import cluster_pb2, work_pb2
from controlplane import metrics
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
    graceful_eviction_timeout: float = 600.0
    """How long an evicted cluster keeps its copy when its task names no grace period."""
    unhealthy_since: Mapping[str, float] = dataclasses.field(default_factory=dict)
    """Since when (seconds since the epoch) the workload has been Unhealthy in each
    cluster that reports it so, as this process saw the binding's status: application
    failover counts tolerationSeconds from here (a restart starts the count again)."""


class SchedulerController:
    def __init__(self, context: Context) -> None:
        self.context = context
        # Karmada's priority-based scheduling: a backlog is worked off by schedulePriority.
        self.controller = context.controller(NAME, self.reconcile, priority=self._priority)
        self._snapshot: dict[str, scheduling.ClusterInfo] = {}
        self._assumed = scheduling.AssumedCapacity()
        self._unhealthy: dict[str, dict[str, float]] = {}
        context.bindings.add_handler(self._on_binding)
        context.clusters.add_handler(self._on_cluster)

    def _priority(self, key: str) -> int:
        binding = self.context.bindings.get(key)
        return binding.spec.schedule_priority.priority if binding is not None else 0

    def _on_binding(
        self,
        key: str,
        old: work_pb2.PropagationBinding | None,
        new: work_pb2.PropagationBinding | None,
    ) -> None:
        # Only a spec change can change the decision; the scheduler's own status writes
        # (the condition) must not bring the binding back. Pending evictions are the
        # exception: the workload turning healthy elsewhere (aggregated status) ends them.
        if new is None:
            self._unhealthy.pop(key, None)
            return
        health_moved = unhealthy_since(self._unhealthy, key, new, time.time())
        status_moved = old is None or old.status.aggregated_status != new.status.aggregated_status
        if (
            generation_changed(old, new)
            or (len(new.spec.graceful_eviction_tasks) and status_moved)
            or (health_moved and eviction.application_toleration(new) is not None)
        ):
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
                graceful_eviction_timeout=self.context.settings.graceful_eviction_timeout,
                unhealthy_since=dict(self._unhealthy.get(key, {})),
            )
        )


def unhealthy_since(
    tracked: dict[str, dict[str, float]],
    key: str,
    binding: work_pb2.PropagationBinding,
    now: float,
) -> bool:
    """Record since when the binding's workload is Unhealthy in each cluster (kept only
    for those that say so now); whether anything changed."""
    before = tracked.get(key, {})
    after = {
        item.cluster_name: before.get(item.cluster_name, now)
        for item in binding.status.aggregated_status
        if item.applied and item.health == "Unhealthy"
    }
    if after:
        tracked[key] = after
    else:
        tracked.pop(key, None)
    return after != before


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
    if spec.suspension.scheduling:
        return _scheduling_held(binding, observed.now)
    if spec.schedule_priority.priority_class_name and not spec.schedule_priority.HasField(
        "priority"
    ):
        return _priority_class_missing(binding, observed.now)
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
    now = observed.now.timestamp()
    by_name = {c.name: c for c in observed.clusters}
    current = {t.name: t.replicas for t in spec.clusters}
    # Clusters the workload must leave now: a NoExecute taint its placement does not
    # tolerate (or no longer does: tolerationSeconds ran out).
    evicted = {
        name: why
        for name in current
        if name in by_name and (why := scheduling.evicts(spec.placement, by_name[name], now))
    }
    failing, application_recheck = _failing_applications(observed, current, evicted, now)
    # Not chosen again while an application failover away from it is pending
    # (Karmada's ClusterEviction filter); a failed cluster's taint says so already.
    pending = {
        t.from_cluster: "an application failover away from this cluster is pending"
        for t in spec.graceful_eviction_tasks
        if t.reason == eviction.APPLICATION_FAILURE
    }

    def decide(excluded: Mapping[str, str]) -> scheduling.Decision:
        return scheduling.schedule(
            spec.placement,
            replicas=spec.replicas,
            clusters=observed.clusters,
            current=current,
            requests=requests,
            seed=division.tie_break_seed(binding.metadata.uid),
            fresh=fresh,
            resource=(spec.resource.api_version, spec.resource.kind),
            now=now,
            excluded=excluded,
            keep_current=_placed_by_failover(binding),
            observing_affinity=binding.status.scheduler_observing_affinity_name,
        )

    decision = decide({**pending, **failing})
    if failing and not decision.scheduled:
        # Nowhere else to go: moving the workload off would leave it nowhere.
        failing = {}
        decision = decide(pending)
    evicted |= failing
    if invalid:
        decision = scheduling.Decision((), "SchedulerError", invalid)
    updated = kinds.PROPAGATION_BINDING.copy(binding)
    del updated.spec.clusters[:]
    for target in decision.targets:
        updated.spec.clusters.add(name=target.name, replicas=target.replicas)
    moves = _evict(updated, binding, evicted, observed, applications=set(failing))
    resolution = eviction.resolve(
        updated,
        clusters=by_name,
        now=now,
        default_grace=observed.graceful_eviction_timeout,
    )
    del updated.spec.graceful_eviction_tasks[:]
    updated.spec.graceful_eviction_tasks.extend(resolution.kept)
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
    if decision.scheduled or not len(spec.placement.cluster_affinities):
        # A failed decision leaves the group in use as it was, as Karmada's does.
        updated.status.scheduler_observing_affinity_name = decision.affinity_name
    _scheduling_resumed(updated, observed.now)
    if spec_changed:
        updated.status.last_scheduled_time.FromDatetime(observed.now)
    recheck = [
        t
        for t in (
            resolution.recheck_at,
            application_recheck,
            scheduling.next_eviction(
                spec.placement, [by_name[n] for n in current if n in by_name], now
            ),
        )
        if t is not None
    ]
    # A grace period or a tolerationSeconds running out changes nothing observable: look
    # again when it does.
    requeue_after = max(0.5, min(recheck) - now) if recheck else 0.0
    if updated == binding:
        return Plan(requeue_after=requeue_after) if requeue_after else None
    result = Plan(requeue_after=requeue_after)
    result.update(kinds.PROPAGATION_BINDING, updated, current=binding)
    for reason in moves:
        result.committed.append(metrics.WORKLOAD_EVICTIONS.labels(reason).inc)
    for reason, seconds in resolution.recovered:
        result.committed.append(
            functools.partial(metrics.FAILOVER_RECOVERY_SECONDS.labels(reason).observe, seconds)
        )
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


def _scheduling_held(binding: work_pb2.PropagationBinding, now: datetime.datetime) -> Plan | None:
    """suspension.scheduling: nothing is decided (the placement stays); only the
    SchedulingSuspended condition says so."""
    updated = kinds.PROPAGATION_BINDING.copy(binding)
    set_condition(
        updated.status.conditions,
        "SchedulingSuspended",
        "True",
        "SchedulingSuspended",
        "spec.suspension.scheduling is true: the placement is held",
        binding.metadata.generation,
        now=now,
    )
    if updated == binding:
        return None
    result = Plan()
    result.update(kinds.PROPAGATION_BINDING, updated, current=binding)
    return result


def _priority_class_missing(
    binding: work_pb2.PropagationBinding, now: datetime.datetime
) -> Plan | None:
    """The policy's schedulePriority names a PriorityClass the control plane does not
    have: nothing is decided (the placement stays) until it exists, and the Scheduled
    condition names it. Its creation brings the binding back (the policy controller
    writes the priority)."""
    ref = binding.spec.policy
    where = f"{ref.kind} {'/'.join(p for p in (ref.namespace, ref.name) if p)}"
    updated = kinds.PROPAGATION_BINDING.copy(binding)
    set_condition(
        updated.status.conditions,
        "Scheduled",
        "False",
        "SchedulerError",
        f"PriorityClass {binding.spec.schedule_priority.priority_class_name!r} not found "
        f"(spec.schedulePriority.priorityClassName of {where}): create it or name another",
        binding.metadata.generation,
        now=now,
    )
    updated.status.scheduler_observed_generation = binding.metadata.generation
    if updated == binding:
        return None
    result = Plan()
    result.update(kinds.PROPAGATION_BINDING, updated, current=binding)
    return result


def _scheduling_resumed(updated: work_pb2.PropagationBinding, now: datetime.datetime) -> None:
    """Once suspension.scheduling is false again, the condition says so."""
    condition = find(updated.status.conditions, "SchedulingSuspended")
    if condition is not None and condition.status == "True":
        set_condition(
            updated.status.conditions,
            "SchedulingSuspended",
            "False",
            "SchedulingResumed",
            "scheduling resumed",
            updated.metadata.generation,
            now=now,
        )


def _placed_by_failover(binding: work_pb2.PropagationBinding) -> bool:
    """Whether the current placement is a failover's, and nothing but the clusters changed
    since: then a cluster that recovers pulls no replicas back (Karmada's rule; a
    rebalance or reschedule does). Any other placement follows the clusters as before,
    so a cluster that only now serves the kind, or joins, gets its share.

    Judged by where the last failover put the workload, not by when the binding was
    last written: its eviction tasks ending is a write too.
    """
    status = binding.status
    if binding.metadata.generation != status.scheduler_observed_generation:
        return False
    if not len(status.failover_history):
        return False
    last = status.failover_history[-1]
    spec = binding.spec
    if spec.HasField("reschedule_triggered_at") and (
        spec.reschedule_triggered_at.ToNanoseconds() >= last.start_time.ToNanoseconds()
    ):
        return False
    return sorted(last.clusters_after_failover) == sorted(t.name for t in spec.clusters)


def _failing_applications(
    observed: Observed, current: Mapping[str, int], evicted: Mapping[str, str], now: float
) -> tuple[dict[str, str], float | None]:
    """The clusters the workload must leave because it has been Unhealthy there for the
    policy's tolerationSeconds (application failover), and when the next one will be.

    Only when the failure looks like the cluster's: if the workload runs in several
    clusters and fails in every one of them, the application itself is broken, and
    moving it helps nobody. In a single cluster the two cannot be told apart, so it
    moves, as Karmada moves it.
    """
    binding = observed.binding
    tolerate = eviction.application_toleration(binding)
    if tolerate is None:
        return {}, None
    failing: dict[str, str] = {}
    recheck: float | None = None
    for name in current:
        since = observed.unhealthy_since.get(name)
        if since is None or name in evicted:
            continue
        if now - since >= tolerate:
            failing[name] = f"Unhealthy for {now - since:.0f}s (tolerationSeconds {tolerate})"
        else:
            recheck = since + tolerate if recheck is None else min(recheck, since + tolerate)
    if len(current) > 1 and failing and set(failing) | set(evicted) >= set(current):
        return {}, recheck
    return failing, recheck


def _evict(
    updated: work_pb2.PropagationBinding,
    binding: work_pb2.PropagationBinding,
    evicted: dict[str, str],
    observed: Observed,
    applications: set[str],
) -> list[str]:
    """Record the evictions the new placement makes: a graceful eviction task per
    cluster left (unless its copy is to go at once), and a line of failover history.
    Returns each eviction's reason."""
    moves: list[str] = []
    if not evicted:
        return moves
    after = [t.name for t in updated.spec.clusters]
    pending = {t.from_cluster for t in updated.spec.graceful_eviction_tasks}
    for target in binding.spec.clusters:
        why = evicted.get(target.name)
        if why is None or target.name in after:
            continue
        reason = (
            eviction.APPLICATION_FAILURE
            if target.name in applications
            else eviction.TAINT_UNTOLERATED
        )
        task = eviction.new_task(
            binding,
            target.name,
            replicas=target.replicas,
            message=why,
            now=observed.now,
            reason=reason,
        )
        if task.purge_mode != eviction.DIRECTLY and target.name not in pending:
            updated.spec.graceful_eviction_tasks.append(task)
        eviction.record_history(
            updated.status,
            origin=target.name,
            reason=reason,
            before=[t.name for t in binding.spec.clusters],
            after=after,
            now=observed.now,
        )
        moves.append(reason)
    return moves
