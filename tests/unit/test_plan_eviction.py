"""Failover in the scheduler's plan, as tables: which clusters a NoExecute taint takes a
workload from, the graceful eviction tasks that keep the old copies for a while, how
every task ends, and that a recovered cluster pulls nothing back by itself."""

from __future__ import annotations

import datetime
from collections.abc import Sequence

import pytest

from archipel.core import eviction, names
from archipel.core.scheduling import AssumedCapacity, ClusterInfo, TaintInfo
from archipel.v1alpha1 import policy_pb2, work_pb2
from controlplane.controllers.scheduler import Observed, plan
from controlplane.plan import Update

NOW = datetime.datetime(2026, 5, 6, 7, 8, 9, tzinfo=datetime.UTC)
T = NOW.timestamp()
GENERATION = 4
GRACE = 600.0


def down(name: str, *, since: float = T - 5, key: str = names.NOT_READY_TAINT) -> ClusterInfo:
    """A failed cluster: tainted NoSchedule and NoExecute by the cluster controller."""
    return ClusterInfo(
        name,
        {},
        taints=(TaintInfo(key, "", "NoSchedule", since), TaintInfo(key, "", "NoExecute", since)),
    )


def up(name: str) -> ClusterInfo:
    return ClusterInfo(name, {})


def duplicated() -> policy_pb2.Placement:
    return policy_pb2.Placement()


def static(weights: dict[str, int] | None = None) -> policy_pb2.Placement:
    placement = policy_pb2.Placement()
    strategy = placement.replica_scheduling
    strategy.replica_scheduling_type = "Divided"
    strategy.replica_division_preference = "Weighted"
    for name, weight in (weights or {"m1": 1, "m2": 1, "m3": 1}).items():
        entry = strategy.weight_preference.static_weight_list.add(weight=weight)
        entry.target_cluster.cluster_names.append(name)
    return placement


def dynamic() -> policy_pb2.Placement:
    placement = policy_pb2.Placement()
    strategy = placement.replica_scheduling
    strategy.replica_scheduling_type = "Divided"
    strategy.replica_division_preference = "Weighted"
    strategy.weight_preference.dynamic_weight = "AvailableReplicas"
    return placement


def aggregated() -> policy_pb2.Placement:
    placement = policy_pb2.Placement()
    strategy = placement.replica_scheduling
    strategy.replica_scheduling_type = "Divided"
    strategy.replica_division_preference = "Aggregated"
    return placement


def binding(
    placement: policy_pb2.Placement,
    current: Sequence[tuple[str, int]],
    *,
    replicas: int = 6,
    purge_mode: str = "",
    tasks: Sequence[work_pb2.GracefulEvictionTask] = (),
    steady: bool = True,
    healthy: Sequence[str] = (),
) -> work_pb2.PropagationBinding:
    """A scheduled binding; ``steady``: nothing but the clusters changed since."""
    result = work_pb2.PropagationBinding()
    result.metadata.name = "web-deployment"
    result.metadata.namespace = "default"
    result.metadata.uid = "3c2b-uid"
    result.metadata.generation = GENERATION
    result.spec.replicas = replicas
    result.spec.resource.api_version = "apps/v1"
    result.spec.resource.kind = "Deployment"
    result.spec.placement.CopyFrom(placement)
    result.spec.policy.kind = "PropagationPolicy"
    result.spec.policy.name = "web"
    if purge_mode:
        result.spec.failover.cluster.purge_mode = purge_mode
    for name, count in current:
        result.spec.clusters.add(name=name, replicas=count)
    result.spec.graceful_eviction_tasks.extend(tasks)
    result.status.scheduler_observed_generation = GENERATION if steady else GENERATION - 1
    if tasks:
        # Tasks come from a failover, whose placement this is.
        moved = result.status.failover_history.add(
            origin_cluster=tasks[0].from_cluster,
            clusters_after_failover=[name for name, _ in current],
        )
        moved.start_time.FromSeconds(int(T - 60))
        result.status.last_scheduled_time.FromSeconds(int(T - 60))
    for name in healthy:
        result.status.aggregated_status.add(cluster_name=name, applied=True, health="Healthy")
    return result


def task(
    cluster: str,
    *,
    mode: str = "Gracefully",
    began: float = T - 60,
    grace: int | None = None,
    suppress: bool | None = None,
) -> work_pb2.GracefulEvictionTask:
    result = work_pb2.GracefulEvictionTask(
        from_cluster=cluster, purge_mode=mode, replicas=2, reason="TaintUntolerated"
    )
    result.creation_timestamp.FromSeconds(int(began))
    if grace is not None:
        result.grace_period_seconds = grace
    if suppress is not None:
        result.suppress_deletion = suppress
    return result


def decide(
    observed: work_pb2.PropagationBinding,
    clusters: Sequence[ClusterInfo],
    unhealthy: dict[str, float] | None = None,
) -> tuple[work_pb2.PropagationBinding, float]:
    """The binding as the plan writes it (the observed one when it writes nothing), and
    the plan's requeue_after."""
    result = plan(
        Observed(
            binding=observed,
            clusters=tuple(clusters),
            now=NOW,
            assumed=AssumedCapacity(),
            graceful_eviction_timeout=GRACE,
            unhealthy_since=unhealthy or {},
        )
    )
    if result is None:
        return observed, 0.0
    updates = [w for w in result.writes if isinstance(w, Update)]
    written = updates[0].obj if updates else observed
    assert isinstance(written, work_pb2.PropagationBinding)
    return written, result.requeue_after


def placed(written: work_pb2.PropagationBinding) -> dict[str, int]:
    return {t.name: t.replicas for t in written.spec.clusters}


def evicted_from(written: work_pb2.PropagationBinding) -> list[tuple[str, str, int]]:
    return [
        (t.from_cluster, t.purge_mode, t.replicas) for t in written.spec.graceful_eviction_tasks
    ]


THREE = ("m1", "m2", "m3")


@pytest.mark.parametrize(
    ("placement", "current", "after"),
    [
        (duplicated(), [("m1", 6), ("m2", 6), ("m3", 6)], {"m1": 6, "m2": 6}),
        (static(), [("m1", 2), ("m2", 2), ("m3", 2)], {"m1": 3, "m2": 3}),
        # Karmada#3623: dynamic weights ignored the NoExecute taint.
        (dynamic(), [("m1", 2), ("m2", 2), ("m3", 2)], {"m1": 3, "m2": 3}),
        (aggregated(), [("m3", 6)], {"m1": 6}),
    ],
    ids=["duplicated", "static-weights", "dynamic-weights", "aggregated"],
)
def test_a_failed_cluster_loses_the_workload_and_keeps_its_copy_for_now(
    placement: policy_pb2.Placement, current: list[tuple[str, int]], after: dict[str, int]
) -> None:
    clusters = [up("m1"), up("m2"), down("m3")]
    strategy = placement.replica_scheduling
    if strategy.weight_preference.dynamic_weight or strategy.replica_division_preference == (
        "Aggregated"
    ):
        clusters = [
            ClusterInfo(c.name, {}, taints=c.taints, replicas_available=10) for c in clusters
        ]
    written, _ = decide(binding(placement, current), clusters)
    assert placed(written) == after
    replicas = dict(current)["m3"]
    assert evicted_from(written) == [("m3", "Gracefully", replicas)]
    (history,) = written.status.failover_history
    assert (history.origin_cluster, history.reason) == ("m3", "TaintUntolerated")
    assert list(history.clusters_after_failover) == sorted(after)


def test_purge_mode_directly_makes_no_task() -> None:
    written, _ = decide(
        binding(static(), [("m1", 2), ("m2", 2), ("m3", 2)], purge_mode="Directly"),
        [up("m1"), up("m2"), down("m3")],
    )
    assert placed(written) == {"m1": 3, "m2": 3}
    assert evicted_from(written) == []
    assert [h.origin_cluster for h in written.status.failover_history] == ["m3"]


def test_a_tolerated_taint_keeps_the_workload_for_its_toleration_seconds() -> None:
    placement = static()
    placement.cluster_tolerations.add(
        key=names.NOT_READY_TAINT, operator="Exists", effect="NoExecute", toleration_seconds=120
    )
    current = [("m1", 2), ("m2", 2), ("m3", 2)]
    kept, requeue_after = decide(
        binding(placement, current), [up("m1"), up("m2"), down("m3", since=T - 30)]
    )
    assert placed(kept) == dict(current)
    # Nothing else will change when the 120 s run out: the plan asks to look again.
    assert requeue_after == pytest.approx(90, abs=1)
    gone, _ = decide(binding(placement, current), [up("m1"), up("m2"), down("m3", since=T - 121)])
    assert placed(gone) == {"m1": 3, "m2": 3}


def test_karmadas_taint_keys_in_a_toleration_mean_archipels() -> None:
    placement = duplicated()
    placement.cluster_tolerations.add(
        key="cluster.karmada.io/not-ready", operator="Exists", effect="NoExecute"
    )
    current = [("m1", 6), ("m2", 6), ("m3", 6)]
    written, _ = decide(binding(placement, current), [up("m1"), up("m2"), down("m3")])
    assert placed(written) == dict(current)


@pytest.mark.parametrize(
    ("tasks", "clusters", "healthy", "kept"),
    [
        # Gracefully: healthy everywhere it now runs ends it...
        ([task("m3")], [up("m1"), up("m2"), down("m3")], ["m1", "m2"], []),
        # ...not yet healthy keeps it...
        ([task("m3")], [up("m1"), up("m2"), down("m3")], ["m1"], ["m3"]),
        # ...and the grace period ends it regardless (the control plane's default).
        ([task("m3", began=T - GRACE - 1)], [up("m1"), up("m2"), down("m3")], [], []),
        ([task("m3", grace=30)], [up("m1"), up("m2"), down("m3")], [], []),
        # The cluster left the fleet.
        ([task("m3")], [up("m1"), up("m2")], [], []),
        # suppressDeletion holds past the grace period and whatever the health...
        (
            [task("m3", began=T - GRACE - 1, suppress=True)],
            [up("m1"), up("m2"), down("m3")],
            ["m1", "m2"],
            ["m3"],
        ),
        # ...until someone sets it false.
        (
            [task("m3", began=T - GRACE - 1, suppress=False)],
            [up("m1"), up("m2"), down("m3")],
            [],
            [],
        ),
        # Never: the copy stays while the cluster is down, and the task ends once it is
        # healthy again (it does not wait for ever: Karmada#5803).
        ([task("m3", mode="Never", began=0)], [up("m1"), up("m2"), down("m3")], [], ["m3"]),
        ([task("m3", mode="Never", began=0)], [up("m1"), up("m2"), up("m3")], [], []),
    ],
    ids=[
        "healthy-elsewhere",
        "not-yet-healthy",
        "default-grace-over",
        "own-grace-over",
        "cluster-gone",
        "suppressed",
        "suppression-lifted",
        "never-while-down",
        "never-cluster-back",
    ],
)
def test_every_task_ends_by_itself(
    tasks: list[work_pb2.GracefulEvictionTask],
    clusters: list[ClusterInfo],
    healthy: list[str],
    kept: list[str],
) -> None:
    observed = binding(static(), [("m1", 3), ("m2", 3)], tasks=tasks, healthy=healthy)
    written, _ = decide(observed, clusters)
    assert [t.from_cluster for t in written.spec.graceful_eviction_tasks] == kept
    assert placed(written) == {"m1": 3, "m2": 3}


def test_a_pending_task_asks_to_be_looked_at_when_its_grace_ends() -> None:
    observed = binding(static(), [("m1", 3), ("m2", 3)], tasks=[task("m3", began=T - 100)])
    written, requeue_after = decide(observed, [up("m1"), up("m2"), down("m3")])
    assert evicted_from(written) == [("m3", "Gracefully", 2)]
    assert requeue_after == pytest.approx(GRACE - 100, abs=1)


def test_a_reschedule_ends_the_tasks_that_came_before_it() -> None:
    observed = binding(static(), [("m1", 3), ("m2", 3)], tasks=[task("m3", began=T - 100)])
    observed.spec.reschedule_triggered_at.FromSeconds(int(T - 10))
    written, _ = decide(observed, [up("m1"), up("m2"), down("m3")])
    assert evicted_from(written) == []


def test_a_duplicated_workload_returns_to_a_recovered_cluster_and_its_task_ends() -> None:
    observed = binding(duplicated(), [("m1", 6), ("m2", 6)], tasks=[task("m3")], healthy=["m1"])
    written, _ = decide(observed, [up("m1"), up("m2"), up("m3")])
    assert placed(written) == {"m1": 6, "m2": 6, "m3": 6}
    # Its copy was never deleted: the same write ends the task and targets the cluster.
    assert evicted_from(written) == []


def test_a_recovered_cluster_pulls_no_divided_replicas_back() -> None:
    # m3 failed: the failover put its replicas on m1 and m2.
    failed_over, _ = decide(
        binding(static(), [("m1", 2), ("m2", 2), ("m3", 2)]), [up("m1"), up("m2"), down("m3")]
    )
    assert placed(failed_over) == {"m1": 3, "m2": 3}
    failed_over.metadata.generation += 1  # as the store numbers the write
    failed_over.status.scheduler_observed_generation = failed_over.metadata.generation
    written, _ = decide(failed_over, [up("m1"), up("m2"), up("m3")])
    assert placed(written) == {"m1": 3, "m2": 3}
    # A change of the binding itself (here: the replicas) divides by the weights again.
    scaled = kinds_copy(failed_over)
    scaled.spec.replicas = 9
    scaled.metadata.generation += 1
    rescaled, _ = decide(scaled, [up("m1"), up("m2"), up("m3")])
    assert placed(rescaled) == {"m1": 3, "m2": 3, "m3": 3}


def test_nothing_comes_back_after_the_eviction_task_ended_either() -> None:
    """The task ending later is a write of its own; the placement is still the
    failover's, and a cluster that recovers after it pulls nothing back."""

    def at(
        observed: work_pb2.PropagationBinding, clusters: list[ClusterInfo], seconds: int
    ) -> work_pb2.PropagationBinding:
        result = plan(
            Observed(
                binding=observed,
                clusters=tuple(clusters),
                now=NOW + datetime.timedelta(seconds=seconds),
                assumed=AssumedCapacity(),
                graceful_eviction_timeout=GRACE,
            )
        )
        assert result is not None
        (write,) = [w for w in result.writes if isinstance(w, Update)]
        written = write.obj
        assert isinstance(written, work_pb2.PropagationBinding)
        written.metadata.generation = written.status.scheduler_observed_generation
        return written

    failed_over = at(
        binding(static(), [("m1", 2), ("m2", 2), ("m3", 2)]), [up("m1"), up("m2"), down("m3")], 0
    )
    for name in ("m1", "m2"):
        failed_over.status.aggregated_status.add(cluster_name=name, applied=True, health="Healthy")
    ended = at(failed_over, [up("m1"), up("m2"), down("m3")], 30)
    assert evicted_from(ended) == []
    back, _ = decide(ended, [up("m1"), up("m2"), up("m3")])
    assert placed(back) == {"m1": 3, "m2": 3}
    # A reschedule asked for after the failover divides by the weights again.
    ended.spec.reschedule_triggered_at.FromSeconds(int(T + 60))
    rescheduled = at(ended, [up("m1"), up("m2"), up("m3")], 90)
    assert placed(rescheduled) == {"m1": 2, "m2": 2, "m3": 2}


def test_a_cluster_that_fits_only_now_gets_its_share_when_no_failover_placed_it() -> None:
    # Placed on m1 alone while m2 did not serve the kind yet (not a failover): once m2
    # fits, the weights divide again, as before.
    observed = binding(static({"m1": 1, "m2": 1}), [("m1", 6)])
    written, _ = decide(observed, [up("m1"), up("m2")])
    assert placed(written) == {"m1": 3, "m2": 3}


def kinds_copy(obj: work_pb2.PropagationBinding) -> work_pb2.PropagationBinding:
    copied = work_pb2.PropagationBinding()
    copied.CopyFrom(obj)
    return copied


def test_eviction_helpers_agree_with_the_plan() -> None:
    observed = binding(static(), [("m1", 3), ("m2", 3)], healthy=["m1", "m2"])
    assert eviction.healthy_elsewhere(observed, "m3")
    assert not eviction.healthy_elsewhere(binding(static(), [("m1", 3), ("m2", 3)]), "m3")
    assert eviction.purge_mode(observed) == "Gracefully"


def with_application_failover(
    observed: work_pb2.PropagationBinding, *, tolerate: int = 60, rules: bool = True
) -> work_pb2.PropagationBinding:
    application = observed.spec.failover.application
    application.decision_conditions.toleration_seconds = tolerate
    if rules:
        application.state_preservation.rules.add(
            alias_label_name="failover.example.com/ready", json_path="{.readyReplicas}"
        )
    item = observed.status.aggregated_status.add(cluster_name="m1", applied=True)
    item.health = "Unhealthy"
    item.status.update({"replicas": 2, "readyReplicas": 1})
    return observed


def test_a_workload_unhealthy_past_its_toleration_moves_and_carries_its_state() -> None:
    # m3 joined after the workload was placed on m1 and m2.
    observed = with_application_failover(binding(static(), [("m1", 3), ("m2", 3)]))
    observed.status.failover_history.add(
        clusters_after_failover=["m1", "m2"]
    ).start_time.FromSeconds(1)
    observed.status.last_scheduled_time.FromSeconds(1)
    clusters = [up("m1"), up("m2"), up("m3")]
    waiting, requeue_after = decide(observed, clusters, unhealthy={"m1": T - 20})
    assert placed(waiting) == {"m1": 3, "m2": 3}
    assert requeue_after == pytest.approx(40, abs=1)  # when the 60 s run out

    written, _ = decide(observed, clusters, unhealthy={"m1": T - 61})
    assert placed(written) == {"m2": 3, "m3": 3}
    (pending,) = written.spec.graceful_eviction_tasks
    assert (pending.from_cluster, pending.reason, pending.purge_mode) == (
        "m1",
        "ApplicationFailure",
        "Gracefully",
    )
    assert dict(pending.preserved_label_state) == {"failover.example.com/ready": "1"}
    # Only a cluster the workload was not in before gets the old copy's state.
    assert eviction.preserved_labels(written, "m3") == {"failover.example.com/ready": "1"}
    assert eviction.preserved_labels(written, "m2") == {}
    assert eviction.preserved_labels(written, "m1") == {}
    assert written.status.failover_history[-1].reason == "ApplicationFailure"


def test_a_cluster_with_a_pending_application_failover_is_not_chosen_again() -> None:
    failed = task("m1")
    failed.reason = "ApplicationFailure"
    observed = binding(duplicated(), [("m2", 6), ("m3", 6)], tasks=[failed])
    written, _ = decide(observed, [up("m1"), up("m2"), up("m3")])
    assert placed(written) == {"m2": 6, "m3": 6}
    assert evicted_from(written) == [("m1", "Gracefully", 2)]


def test_a_workload_failing_everywhere_stays_where_it_is() -> None:
    # Unhealthy in every cluster: the application is broken, not a cluster.
    observed = with_application_failover(binding(static(), [("m1", 3), ("m2", 3)]))
    written, _ = decide(observed, [up("m1"), up("m2")], unhealthy={"m1": T - 99, "m2": T - 99})
    assert placed(written) == {"m1": 3, "m2": 3}
    assert evicted_from(written) == []


def test_without_application_failover_an_unhealthy_workload_stays() -> None:
    observed = binding(static(), [("m1", 2), ("m2", 2), ("m3", 2)])
    written, _ = decide(observed, [up("m1"), up("m2"), up("m3")], unhealthy={"m1": T - 999})
    assert placed(written) == {"m1": 2, "m2": 2, "m3": 2}


def test_unhealthy_since_counts_from_the_first_unhealthy_report() -> None:
    from controlplane.controllers.scheduler import unhealthy_since

    tracked: dict[str, dict[str, float]] = {}
    observed = binding(static(), [("m1", 3), ("m2", 3)])
    sick = observed.status.aggregated_status.add(cluster_name="m1", applied=True)
    sick.health = "Unhealthy"
    assert unhealthy_since(tracked, "b", observed, 100.0)
    assert not unhealthy_since(tracked, "b", observed, 130.0)  # still since 100
    assert tracked == {"b": {"m1": 100.0}}
    sick.health = "Healthy"
    assert unhealthy_since(tracked, "b", observed, 140.0)
    assert tracked == {}


def test_a_workload_in_a_single_cluster_moves_when_it_fails_there() -> None:
    # One cluster cannot tell a broken cluster from a broken application: it moves.
    observed = with_application_failover(binding(aggregated(), [("m1", 6)]))
    clusters = [ClusterInfo(name, {}, replicas_available=10) for name in ("m1", "m2")]
    written, _ = decide(observed, clusters, unhealthy={"m1": T - 61})
    assert placed(written) == {"m2": 6}
    assert evicted_from(written) == [("m1", "Gracefully", 6)]


def test_a_failover_reports_how_long_it_took_from_the_fault() -> None:
    # m3 was tainted not ready 90 s ago and the workload evicted 60 s ago; it is now
    # healthy where it moved: 90 s from the fault to recovery.
    observed = binding(
        static(), [("m1", 3), ("m2", 3)], tasks=[task("m3", began=T - 60)], healthy=["m1", "m2"]
    )
    resolution = eviction.resolve(
        observed,
        clusters={c.name: c for c in (up("m1"), up("m2"), down("m3", since=T - 90))},
        now=T,
        default_grace=GRACE,
    )
    assert resolution.kept == []
    ((reason, seconds),) = resolution.recovered
    assert reason == "TaintUntolerated"
    assert seconds == pytest.approx(90)


def test_a_failed_clusters_eviction_preserves_the_state_its_policy_names() -> None:
    observed = binding(static(), [("m1", 3), ("m3", 3)])
    observed.spec.failover.cluster.state_preservation.rules.add(
        alias_label_name="failover.example.com/generation", json_path="{.observedGeneration}"
    )
    last_report = observed.status.aggregated_status.add(cluster_name="m3", applied=True)
    last_report.status.update({"observedGeneration": 7})
    written, _ = decide(observed, [up("m1"), up("m2"), down("m3")])
    (pending,) = written.spec.graceful_eviction_tasks
    assert pending.reason == "TaintUntolerated"
    assert dict(pending.preserved_label_state) == {"failover.example.com/generation": "7"}
    # m2 is new to the workload: its copy carries the state; m1's does not.
    assert placed(written) == {"m1": 3, "m2": 3}
    assert eviction.preserved_labels(written, "m2") == {"failover.example.com/generation": "7"}
    assert eviction.preserved_labels(written, "m1") == {}


def test_suspended_scheduling_holds_the_placement_even_through_a_failure() -> None:
    observed = binding(static(), [("m1", 2), ("m2", 2), ("m3", 2)])
    observed.spec.suspension.scheduling = True
    held, _ = decide(observed, [up("m1"), up("m2"), down("m3")])
    assert placed(held) == {"m1": 2, "m2": 2, "m3": 2}
    assert evicted_from(held) == []
    (condition,) = [c for c in held.status.conditions if c.type == "SchedulingSuspended"]
    assert (condition.status, condition.reason) == ("True", "SchedulingSuspended")
    # Held again: nothing to write.
    again, _ = decide(held, [up("m1"), up("m2"), down("m3")])
    assert again is held

    held.spec.suspension.scheduling = False
    resumed, _ = decide(held, [up("m1"), up("m2"), down("m3")])
    assert placed(resumed) == {"m1": 3, "m2": 3}
    (condition,) = [c for c in resumed.status.conditions if c.type == "SchedulingSuspended"]
    assert (condition.status, condition.reason) == ("False", "SchedulingResumed")
