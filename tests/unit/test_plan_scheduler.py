"""The scheduler's decisions as tables: what one binding's plan writes, and when not.

Each case is an observed binding and fleet; the plan is checked write by write (the
binding updated against what was observed, its targets, the Scheduled condition, the
generation it speaks of, lastScheduledTime) and for its bookkeeping: capacity is
assumed only when the placement changed, and only once the write landed.
"""

from __future__ import annotations

import dataclasses
import datetime
from collections.abc import Sequence
from fractions import Fraction

import pytest

from archipel.core import kinds, scheduling
from archipel.core.conditions import find, set_condition
from archipel.core.scheduling import ClusterInfo
from archipel.v1alpha1 import policy_pb2, work_pb2
from controlplane.controllers.scheduler import Observed, plan
from controlplane.plan import Plan, Update

NOW = datetime.datetime(2025, 3, 4, 5, 6, 7, 890000, tzinfo=datetime.UTC)
EARLIER = datetime.datetime(2025, 3, 4, 4, 0, 0, tzinfo=datetime.UTC)
KEY = "propagationbindings/default/web-deployment"
GENERATION = 3

CLUSTERS = (
    ClusterInfo("m1", {"tier": "gold"}, free={"cpu": Fraction(10)}),
    ClusterInfo("m2", {"tier": "gold"}, free={"cpu": Fraction(10)}),
)


def names(*clusters: str) -> policy_pb2.Placement:
    return policy_pb2.Placement(
        cluster_affinity=policy_pb2.ClusterAffinity(cluster_names=list(clusters))
    )


def dynamic() -> policy_pb2.Placement:
    """Divided by available replicas: steady division keeps what was placed."""
    result = policy_pb2.Placement()
    result.replica_scheduling.replica_scheduling_type = "Divided"
    result.replica_scheduling.replica_division_preference = "Weighted"
    result.replica_scheduling.weight_preference.dynamic_weight = "AvailableReplicas"
    return result


def binding(
    placement: policy_pb2.Placement,
    *,
    replicas: int = 2,
    current: Sequence[tuple[str, int]] = (),
    cpu: str = "",
    policy: str = "PropagationPolicy",
    triggered: datetime.datetime | None = None,
    scheduled_at: datetime.datetime | None = None,
    deleting: bool = False,
) -> work_pb2.PropagationBinding:
    result = work_pb2.PropagationBinding()
    result.metadata.name = "web-deployment"
    result.metadata.namespace = "default"
    result.metadata.uid = "0b6f7a52-uid"
    result.metadata.resource_version = "17"
    result.metadata.generation = GENERATION
    result.spec.resource.api_version = "apps/v1"
    result.spec.resource.kind = "Deployment"
    result.spec.resource.namespace = "default"
    result.spec.resource.name = "web"
    result.spec.replicas = replicas
    result.spec.placement.CopyFrom(placement)
    result.spec.policy.kind = policy
    if policy:
        result.spec.policy.namespace = "default"
        result.spec.policy.name = "web"
    for name, count in current:
        result.spec.clusters.add(name=name, replicas=count)
    if cpu:
        result.spec.replica_requirements.resource_request["cpu"] = cpu
    if triggered is not None:
        result.spec.reschedule_triggered_at.FromDatetime(triggered)
    if scheduled_at is not None:
        result.status.last_scheduled_time.FromDatetime(scheduled_at)
    if deleting:
        result.metadata.deletion_timestamp.FromDatetime(EARLIER)
        result.metadata.finalizers.append("archipel.io/controller")
    return result


def observe(
    observed: work_pb2.PropagationBinding, clusters: Sequence[ClusterInfo] = CLUSTERS
) -> Observed:
    return Observed(
        binding=observed,
        clusters=tuple(clusters),
        now=NOW,
        assumed=scheduling.AssumedCapacity(),
    )


def the_update(result: Plan | None) -> Update[work_pb2.PropagationBinding]:
    assert result is not None
    assert len(result.writes) == 1
    (write,) = result.writes
    assert isinstance(write, Update)
    assert write.kind is kinds.PROPAGATION_BINDING
    assert result.keys() == [KEY]
    assert result.requeue_after == 0
    return write


# (binding, targets written, Scheduled status and reason, whether the spec changed)
UPDATES = [
    pytest.param(
        binding(names("m1", "m2")),
        [("m1", 2), ("m2", 2)],
        ("True", "Success"),
        True,
        id="scheduled",
    ),
    pytest.param(
        binding(names("m2"), current=[("m1", 2)]),
        [("m2", 2)],
        ("True", "Success"),
        True,
        id="moved",
    ),
    pytest.param(
        binding(names("gone")),
        [],
        ("False", "NoClusterFit"),
        False,
        id="unscheduled-nothing-placed",
    ),
    pytest.param(
        binding(names("gone"), current=[("m1", 2)]),
        [],
        ("False", "NoClusterFit"),
        True,
        id="unscheduled-placement-withdrawn",
    ),
    pytest.param(
        binding(names("m1"), current=[("m1", 2)], cpu="lots"),
        [],
        ("False", "SchedulerError"),
        True,
        id="invalid-resource-request",
    ),
    pytest.param(
        binding(
            dynamic(), replicas=4, current=[("m1", 4)], cpu="1", triggered=NOW, scheduled_at=EARLIER
        ),
        [("m1", 2), ("m2", 2)],
        ("True", "Success"),
        True,
        id="fresh-reschedule-divides-from-scratch",
    ),
    pytest.param(
        binding(dynamic(), replicas=4, current=[("m1", 4)], cpu="1", triggered=EARLIER),
        [("m1", 2), ("m2", 2)],
        ("True", "Success"),
        True,
        id="reschedule-never-scheduled-is-fresh",
    ),
    pytest.param(
        binding(dynamic(), replicas=4, current=[("m1", 4)], cpu="1", scheduled_at=EARLIER),
        [("m1", 4)],
        ("True", "Success"),
        False,
        id="steady-keeps-placement",
    ),
    pytest.param(
        binding(
            dynamic(), replicas=4, current=[("m1", 4)], cpu="1", triggered=EARLIER, scheduled_at=NOW
        ),
        [("m1", 4)],
        ("True", "Success"),
        False,
        id="reschedule-already-done-is-steady",
    ),
]


@pytest.mark.parametrize(("observed", "targets", "condition", "spec_changed"), UPDATES)
def test_the_decision_is_written_into_the_binding(
    observed: work_pb2.PropagationBinding,
    targets: list[tuple[str, int]],
    condition: tuple[str, str],
    spec_changed: bool,
) -> None:
    before = kinds.PROPAGATION_BINDING.copy(observed)
    write = the_update(plan(observe(observed)))
    assert observed == before, "the plan edits a copy, never what it observed"
    assert write.current is observed
    written = write.obj
    assert [(t.name, t.replicas) for t in written.spec.clusters] == targets
    assert written.metadata.resource_version == observed.metadata.resource_version
    # The store raises the generation exactly when the spec changed: the status
    # speaks of the generation the write will have.
    generation = GENERATION + 1 if spec_changed else GENERATION
    assert (
        kinds.PROPAGATION_BINDING.spec_fingerprint(written)
        != kinds.PROPAGATION_BINDING.spec_fingerprint(observed)
    ) is spec_changed
    scheduled = find(written.status.conditions, "Scheduled")
    assert scheduled is not None
    assert (scheduled.status, scheduled.reason) == condition
    assert scheduled.observed_generation == generation
    assert scheduled.last_transition_time.ToDatetime(datetime.UTC) == NOW.replace(microsecond=0)
    assert written.status.scheduler_observed_generation == generation
    if spec_changed:
        assert written.status.last_scheduled_time.ToDatetime(datetime.UTC) == NOW
    else:
        assert written.status.last_scheduled_time == observed.status.last_scheduled_time


def test_an_invalid_request_says_which_field() -> None:
    write = the_update(plan(observe(binding(names("m1"), cpu="lots"))))
    scheduled = find(write.obj.status.conditions, "Scheduled")
    assert scheduled is not None
    assert "replicaRequirements.resourceRequest[cpu]" in scheduled.message


@pytest.mark.parametrize(("observed", "targets", "condition", "spec_changed"), UPDATES)
def test_what_a_plan_wrote_plans_nothing(
    observed: work_pb2.PropagationBinding,
    targets: list[tuple[str, int]],
    condition: tuple[str, str],
    spec_changed: bool,
) -> None:
    """Nothing changed, nothing written: the binding as the store keeps the first
    plan's update (generation raised with the spec) is left alone."""
    stored = kinds.PROPAGATION_BINDING.copy(the_update(plan(observe(observed))).obj)
    stored.metadata.generation = GENERATION + (1 if spec_changed else 0)
    stored.metadata.resource_version = "18"
    assert plan(observe(stored)) is None


def test_a_condition_that_keeps_its_status_keeps_its_transition_time() -> None:
    observed = binding(names("gone", "elsewhere"))
    set_condition(observed.status.conditions, "Scheduled", "False", "NoClusterFit", "old", 1)
    stamped = find(observed.status.conditions, "Scheduled")
    assert stamped is not None
    stamped.last_transition_time.FromDatetime(EARLIER)
    write = the_update(plan(observe(observed)))
    scheduled = find(write.obj.status.conditions, "Scheduled")
    assert scheduled is not None
    assert scheduled.message != "old"
    assert scheduled.last_transition_time.ToDatetime(datetime.UTC) == EARLIER


@pytest.mark.parametrize(
    "observed",
    [
        pytest.param(binding(names("m1", "m2"), deleting=True), id="deleting"),
        pytest.param(binding(names("m1", "m2"), policy=""), id="no-policy"),
    ],
)
def test_bindings_that_are_not_scheduled(observed: work_pb2.PropagationBinding) -> None:
    assert plan(observe(observed)) is None


@pytest.mark.parametrize(
    ("observed", "assumed"),
    [
        pytest.param(
            binding(names("m1", "m2"), cpu="1"),
            {"m1": Fraction(8), "m2": Fraction(8)},
            id="placed-takes-capacity",
        ),
        pytest.param(
            binding(names("m2"), current=[("m1", 2)], cpu="1"),
            {"m1": Fraction(12), "m2": Fraction(8)},
            id="moved-gives-back-and-takes",
        ),
        pytest.param(
            binding(dynamic(), replicas=4, current=[("m1", 4)], cpu="1", scheduled_at=EARLIER),
            None,
            id="status-only-assumes-nothing",
        ),
        pytest.param(
            binding(names("gone"), cpu="1"),
            None,
            id="unscheduled-assumes-nothing",
        ),
        pytest.param(
            binding(names("m1", "m2")),
            {"m1": Fraction(10), "m2": Fraction(10)},
            id="no-requests-assumes-nothing",
        ),
    ],
)
def test_capacity_is_assumed_once_a_new_placement_landed(
    observed: work_pb2.PropagationBinding, assumed: dict[str, Fraction] | None
) -> None:
    observation = observe(observed)
    result = plan(observation)
    assert result is not None
    untouched = {c.name: c.free for c in observation.assumed.apply(CLUSTERS)}
    assert untouched == {c.name: c.free for c in CLUSTERS}, "nothing before the commit"
    if assumed is None:
        assert result.committed == []
        return
    assert len(result.committed) == 1
    for bookkeeping in result.committed:
        bookkeeping()
    free = {c.name: (c.free or {}).get("cpu") for c in observation.assumed.apply(CLUSTERS)}
    assert free == assumed


def test_the_snapshot_as_observed_is_what_is_scheduled() -> None:
    """Assumed capacity reaches the plan through ``clusters``: a fleet already full
    (as the gather step sees it after assumptions) cannot take more."""
    full = tuple(dataclasses.replace(c, free={"cpu": Fraction(0)}) for c in CLUSTERS)
    write = the_update(plan(observe(binding(dynamic(), replicas=2, cpu="1"), full)))
    scheduled = find(write.obj.status.conditions, "Scheduled")
    assert scheduled is not None
    assert (scheduled.status, scheduled.reason) == ("False", "Unschedulable")
    assert list(write.obj.spec.clusters) == []


def groups() -> policy_pb2.Placement:
    return policy_pb2.Placement(
        cluster_affinities=[
            policy_pb2.ClusterAffinityTerm(affinity_name="primary", cluster_names=["m1"]),
            policy_pb2.ClusterAffinityTerm(affinity_name="backup", cluster_names=["m2"]),
        ]
    )


def test_the_group_placed_in_is_recorded() -> None:
    only_m2 = [c for c in CLUSTERS if c.name == "m2"]
    write = the_update(plan(observe(binding(groups()), only_m2)))
    assert [(t.name, t.replicas) for t in write.obj.spec.clusters] == [("m2", 2)]
    assert write.obj.status.scheduler_observing_affinity_name == "backup"


def test_a_workload_stays_in_its_group_when_an_earlier_one_fits_again() -> None:
    placed = binding(groups(), current=[("m2", 2)])
    placed.status.scheduler_observing_affinity_name = "backup"
    write = the_update(plan(observe(placed)))
    assert [(t.name, t.replicas) for t in write.obj.spec.clusters] == [("m2", 2)]
    assert write.obj.status.scheduler_observing_affinity_name == "backup"


def test_a_reschedule_starts_again_from_the_first_group() -> None:
    placed = binding(groups(), current=[("m2", 2)], triggered=NOW, scheduled_at=EARLIER)
    placed.status.scheduler_observing_affinity_name = "backup"
    write = the_update(plan(observe(placed)))
    assert [(t.name, t.replicas) for t in write.obj.spec.clusters] == [("m1", 2)]
    assert write.obj.status.scheduler_observing_affinity_name == "primary"


def test_a_failed_decision_keeps_the_group_in_use() -> None:
    placed = binding(groups(), current=[("m2", 2)])
    placed.status.scheduler_observing_affinity_name = "backup"
    write = the_update(plan(observe(placed, [])))
    assert write.obj.status.scheduler_observing_affinity_name == "backup"


def test_a_missing_priority_class_holds_scheduling_and_names_it() -> None:
    placed = binding(names("m1", "m2"), current=[("m1", 2)])
    placed.spec.schedule_priority.priority_class_name = "urgent"
    write = the_update(plan(observe(placed)))
    assert [(t.name, t.replicas) for t in write.obj.spec.clusters] == [("m1", 2)]
    condition = find(write.obj.status.conditions, "Scheduled")
    assert condition is not None
    assert (condition.status, condition.reason) == ("False", "SchedulerError")
    assert "PriorityClass 'urgent' not found" in condition.message
    assert "PropagationPolicy default/web" in condition.message


def test_a_resolved_priority_class_schedules() -> None:
    placed = binding(names("m1", "m2"))
    placed.spec.schedule_priority.priority_class_name = "urgent"
    placed.spec.schedule_priority.priority = 0
    write = the_update(plan(observe(placed)))
    assert [t.name for t in write.obj.spec.clusters] == ["m1", "m2"]
