"""What makes the scheduler look at bindings again when a member cluster changes.

Placement follows the fleet, but free capacity moves with every heartbeat: only
changes that placement reads requeue every binding, a capacity change only those that
could not be placed, and a status-only heartbeat none. New capacity figures also drop
what the scheduler assumed it had handed out on that cluster.
"""

from __future__ import annotations

from fractions import Fraction

import pytest

from archipel.core import scheduling
from archipel.core.conditions import set_condition
from archipel.core.scheduling import ClusterInfo
from archipel.v1alpha1 import cluster_pb2, meta_pb2, work_pb2
from controlplane.controllers.scheduler import (
    capacity_reported,
    requeue_on_cluster_change,
    unscheduled,
)


def cluster(
    *,
    cpu: str = "8",
    tier: str = "a",
    version: str = "v1.31.0",
    taint: str = "",
    kinds: tuple[str, ...] = (),
) -> ClusterInfo:
    result = cluster_pb2.MemberCluster()
    result.metadata.name = "c1"
    result.metadata.labels["tier"] = tier
    result.status.kubernetes_version = version
    result.status.resource_summary.allocatable["cpu"] = cpu
    if taint:
        result.spec.taints.append(meta_pb2.Taint(key=taint, effect="NoSchedule"))
    if kinds:
        enablement = result.status.api_enablements.add(group_version="apps/v1")
        for kind in kinds:
            enablement.resources.add(name=kind.lower() + "s", kind=kind)
    return ClusterInfo.from_proto(result)


def binding(name: str, scheduled: str | None) -> work_pb2.PropagationBinding:
    result = work_pb2.PropagationBinding()
    result.metadata.name = name
    result.metadata.namespace = "default"
    if scheduled is not None:
        set_condition(result.status.conditions, "Scheduled", scheduled, "r", "m")
    return result


BINDINGS = [binding("placed", "True"), binding("stuck", "False"), binding("new", None)]
PLACED = "propagationbindings/default/placed"
STUCK = "propagationbindings/default/stuck"
NEW = "propagationbindings/default/new"
ALL = [PLACED, STUCK, NEW]

# (before, after, which bindings are requeued, whether capacity was reported)
CHANGES = [
    pytest.param(None, cluster(), ALL, True, id="joined"),
    pytest.param(cluster(), None, ALL, True, id="removed"),
    pytest.param(cluster(), cluster(tier="b"), ALL, False, id="relabelled"),
    pytest.param(cluster(), cluster(taint="maintenance"), ALL, False, id="tainted"),
    pytest.param(cluster(), cluster(kinds=("Deployment",)), ALL, False, id="apis-reported"),
    pytest.param(cluster(), cluster(cpu="4", tier="b"), ALL, True, id="relabelled-and-capacity"),
    pytest.param(cluster(), cluster(cpu="4"), [STUCK], True, id="capacity-only"),
    pytest.param(cluster(), cluster(version="v1.35.4"), [], False, id="status-only-heartbeat"),
    pytest.param(cluster(), cluster(), [], False, id="unchanged"),
    pytest.param(None, None, [], False, id="nothing"),
]


@pytest.mark.parametrize(("before", "after", "requeued", "reported"), CHANGES)
def test_which_bindings_a_cluster_change_requeues(
    before: ClusterInfo | None,
    after: ClusterInfo | None,
    requeued: list[str],
    reported: bool,
) -> None:
    assert requeue_on_cluster_change(before, after, BINDINGS) == requeued


@pytest.mark.parametrize(("before", "after", "requeued", "reported"), CHANGES)
def test_new_capacity_figures_drop_what_was_assumed(
    before: ClusterInfo | None,
    after: ClusterInfo | None,
    requeued: list[str],
    reported: bool,
) -> None:
    assert capacity_reported(before, after) is reported


def test_reported_capacity_resets_the_assumption() -> None:
    """What the handler does with ``capacity_reported``: the cluster's figures count
    again as reported, without what the scheduler had assumed on top."""
    assumed = scheduling.AssumedCapacity()
    assumed.assume({}, {"c1": 3}, {"cpu": Fraction(1)})
    before, after = cluster(), cluster(cpu="5")
    assert assumed.apply([before])[0].free == {"cpu": Fraction(5)}
    if capacity_reported(before, after):
        assumed.reported("c1")
    assert assumed.apply([after])[0].free == {"cpu": Fraction(5)}


@pytest.mark.parametrize(
    ("scheduled", "expected"),
    [("False", True), ("True", False), ("Unknown", False), (None, False)],
)
def test_unscheduled_means_scheduling_failed(scheduled: str | None, expected: bool) -> None:
    assert unscheduled(binding("b", scheduled)) is expected
