"""Graceful eviction, as pure functions over a binding: which clusters a workload must
leave now, the tasks that keep an evicted cluster's copy for a while, and when each
task ends.

Karmada splits this between a taint manager, a graceful eviction controller and the
scheduler, three writers of one binding; here the scheduler decides it all in the one
write that also moves the replicas, so a task and the placement it explains can never
disagree (Karmada#5803: tasks stuck after a cluster flaps back, empty schedules).

Every task ends by itself, whichever comes first:

* its cluster is chosen again (a Duplicated workload returns to a recovered cluster);
* its cluster is gone, or the binding is rescheduled after the task began;
* ``Gracefully``: the workload is healthy in every cluster it now runs in, or the
  grace period (``gracePeriodSeconds``, else the control plane's default) ran out;
* ``Never``: for a failed cluster, once it is healthy again (no NoExecute taint the
  placement does not tolerate); for an application failure, only by the two rules
  above: keeping the old copy for ever is what was asked;
* ``suppressDeletion: true`` holds a task until someone sets it false; only the first
  two rules end it.

``Directly`` never makes a task: the old copy goes with the eviction.
"""

from __future__ import annotations

import dataclasses
import datetime
import math
from collections.abc import Mapping, Sequence
from typing import Any

from google.protobuf import timestamp_pb2

from archipel import jsonpath, structs
from archipel.core import names, scheduling
from archipel.v1alpha1 import policy_pb2, work_pb2

PRODUCER = "TaintManager"
"""Karmada's name for who evicts on a NoExecute taint."""
APPLICATION_PRODUCER = "ApplicationFailover"
TAINT_UNTOLERATED = "TaintUntolerated"
APPLICATION_FAILURE = "ApplicationFailure"
DEFAULT_APPLICATION_TOLERATION = 300
"""Karmada's default decisionConditions.tolerationSeconds."""
GRACEFULLY, DIRECTLY, NEVER = "Gracefully", "Directly", "Never"
HISTORY_LIMIT = 10


def purge_mode(binding: work_pb2.PropagationBinding) -> str:
    """How a failed cluster's copy goes: the policy's failover.cluster.purgeMode, or
    Gracefully, Karmada's default."""
    return binding.spec.failover.cluster.purge_mode or GRACEFULLY


def healthy_elsewhere(binding: work_pb2.PropagationBinding, evicted: str) -> bool:
    """Whether the workload is applied and Healthy in every cluster it is scheduled to
    (the evicted one aside): then the old copy has done its job."""
    targets = [t.name for t in binding.spec.clusters if t.name != evicted]
    if not targets:
        return False
    items = {item.cluster_name: item for item in binding.status.aggregated_status}
    return all(
        name in items and items[name].applied and items[name].health == "Healthy"
        for name in targets
    )


def _seconds(stamp: timestamp_pb2.Timestamp) -> float:
    return stamp.seconds + stamp.nanos / 1e9


@dataclasses.dataclass(frozen=True)
class Resolution:
    """The tasks that go on, and when to look again (None: only a change will end them)."""

    kept: list[work_pb2.GracefulEvictionTask]
    recheck_at: float | None
    recovered: list[tuple[str, float]] = dataclasses.field(default_factory=list)
    """(reason, seconds from the fault) of each task that ended because the workload
    is healthy where it moved: how long the failover took."""


def resolve(
    binding: work_pb2.PropagationBinding,
    *,
    clusters: Mapping[str, scheduling.ClusterInfo],
    now: float,
    default_grace: float,
) -> Resolution:
    """Which of the binding's tasks still hold their copy, judged against the binding as
    it is scheduled now (call it with the new placement already in ``spec.clusters``)."""
    spec = binding.spec
    scheduled = {t.name for t in spec.clusters}
    rescheduled_at = (
        _seconds(spec.reschedule_triggered_at)
        if spec.HasField("reschedule_triggered_at")
        else -math.inf
    )
    kept: list[work_pb2.GracefulEvictionTask] = []
    recovered: list[tuple[str, float]] = []
    recheck: float | None = None
    for task in spec.graceful_eviction_tasks:
        began = _seconds(task.creation_timestamp)
        cluster = clusters.get(task.from_cluster)
        if task.from_cluster in scheduled or cluster is None or cluster.deleting:
            continue
        if rescheduled_at >= began:
            continue
        if task.HasField("suppress_deletion") and task.suppress_deletion:
            kept.append(task)
            continue
        if task.purge_mode == NEVER:
            if (
                task.reason == APPLICATION_FAILURE
                or scheduling.evicts(spec.placement, cluster, now) is not None
            ):
                kept.append(task)
            continue
        if task.purge_mode == DIRECTLY:
            continue
        if healthy_elsewhere(binding, task.from_cluster):
            recovered.append((task.reason, now - fault_time(binding, task, cluster)))
            continue
        grace = (
            task.grace_period_seconds if task.HasField("grace_period_seconds") else default_grace
        )
        deadline = began + grace
        if now >= deadline:
            continue
        kept.append(task)
        recheck = deadline if recheck is None else min(recheck, deadline)
    return Resolution(kept, recheck, recovered)


def fault_time(
    binding: work_pb2.PropagationBinding,
    task: work_pb2.GracefulEvictionTask,
    cluster: scheduling.ClusterInfo,
) -> float:
    """When the fault behind an eviction began, as well as can be told: when the
    cluster was first tainted for not being Ready, or, for an application, when it had
    been Unhealthy for tolerationSeconds before the eviction."""
    began = _seconds(task.creation_timestamp)
    if task.reason == APPLICATION_FAILURE:
        return began - (application_toleration(binding) or 0)
    added = [
        t.time_added
        for t in cluster.taints
        if t.key in (names.NOT_READY_TAINT, names.UNREACHABLE_TAINT) and t.time_added is not None
    ]
    return min([began, *added])


def new_task(
    binding: work_pb2.PropagationBinding,
    cluster: str,
    *,
    replicas: int,
    message: str,
    now: datetime.datetime,
    reason: str = TAINT_UNTOLERATED,
) -> work_pb2.GracefulEvictionTask:
    """The task of an eviction, with the policy's purge mode (and, for an application
    failure, its grace period and the state it preserves)."""
    task = work_pb2.GracefulEvictionTask(
        from_cluster=cluster,
        purge_mode=purge_mode(binding),
        replicas=replicas,
        reason=reason,
        message=message,
        producer=PRODUCER,
        clusters_before_failover=sorted(t.name for t in binding.spec.clusters),
    )
    failover = binding.spec.failover
    if reason == APPLICATION_FAILURE:
        application = failover.application
        task.producer = APPLICATION_PRODUCER
        task.purge_mode = application.purge_mode or GRACEFULLY
        if application.HasField("grace_period_seconds"):
            task.grace_period_seconds = application.grace_period_seconds
        rules = application.state_preservation.rules
    else:
        rules = failover.cluster.state_preservation.rules
    task.preserved_label_state.update(preserved_state(binding, cluster, rules))
    task.creation_timestamp.FromDatetime(now)
    return task


def application_toleration(binding: work_pb2.PropagationBinding) -> int | None:
    """How long a workload may stay unhealthy in a cluster before it is moved (None:
    the policy asks for no application failover)."""
    if not binding.spec.failover.HasField("application"):
        return None
    conditions = binding.spec.failover.application.decision_conditions
    if conditions.HasField("toleration_seconds"):
        return max(0, conditions.toleration_seconds)
    return DEFAULT_APPLICATION_TOLERATION


def preserved_state(
    binding: work_pb2.PropagationBinding,
    cluster: str,
    rules: Sequence[policy_pb2.StatePreservationRule],
) -> dict[str, str]:
    """statePreservation: each rule's JSONPath read from the status the old copy last
    reported (for a failed cluster, its last report before it failed), as the label value
    its new copies get. A path that finds nothing is left out (no label is invented)."""
    if not len(rules):
        return {}
    status: Any = {}
    for item in binding.status.aggregated_status:
        if item.cluster_name == cluster and item.HasField("status"):
            status = structs.from_struct(item.status)
    preserved = {}
    for rule in rules:
        try:
            found = jsonpath.compile(rule.json_path).first(status)
        except jsonpath.JSONPathError:
            continue  # validated at apply time; an old policy is not a reason to fail
        if found is None or isinstance(found, dict | list):
            continue
        value = str(found).lower() if isinstance(found, bool) else str(found)
        if isinstance(found, float) and found.is_integer():
            value = str(int(found))
        preserved[rule.alias_label_name] = value
    return preserved


def preserved_labels(binding: work_pb2.PropagationBinding, cluster: str) -> dict[str, str]:
    """The labels a cluster's copy gets from pending application failovers: only a
    cluster the workload moved to (not one it was in before) gets them."""
    labels: dict[str, str] = {}
    for task in binding.spec.graceful_eviction_tasks:
        if cluster != task.from_cluster and cluster not in task.clusters_before_failover:
            labels.update(task.preserved_label_state)
    return labels


def record_history(
    status: work_pb2.PropagationBindingStatus,
    *,
    origin: str,
    reason: str,
    before: Sequence[str],
    after: Sequence[str],
    now: datetime.datetime,
) -> None:
    """Append a failover to the binding's short history, dropping the oldest."""
    item = status.failover_history.add(
        origin_cluster=origin,
        reason=reason,
        clusters_before_failover=sorted(before),
        clusters_after_failover=sorted(after),
    )
    item.start_time.FromDatetime(now)
    while len(status.failover_history) > HISTORY_LIMIT:
        del status.failover_history[0]
