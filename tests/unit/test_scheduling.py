"""Basic placement as pure functions: filters and Duplicated division, as tables."""

from __future__ import annotations

from fractions import Fraction

import pytest

from archipel.core import names, scheduling
from archipel.core.scheduling import ClusterInfo, TaintInfo
from archipel.v1alpha1 import meta_pb2, policy_pb2

CLUSTERS = [
    ClusterInfo("member1", {"tier": "gold"}, provider="aws", region="eu", zones=("eu-1",)),
    ClusterInfo("member2", {"tier": "silver"}, provider="gcp", region="us", zones=("us-1",)),
    ClusterInfo("member3", {"tier": "gold"}, provider="aws", region="us", zones=("us-2",)),
]


def placement(**affinity: object) -> policy_pb2.Placement:
    result = policy_pb2.Placement()
    result.cluster_affinity.CopyFrom(policy_pb2.ClusterAffinity(**affinity))  # type: ignore[arg-type]
    return result


@pytest.mark.parametrize(
    ("place", "expected"),
    [
        pytest.param(policy_pb2.Placement(), ["member1", "member2", "member3"], id="everywhere"),
        pytest.param(
            placement(cluster_names=["member1", "member3"]), ["member1", "member3"], id="names"
        ),
        pytest.param(placement(exclude=["member2"]), ["member1", "member3"], id="exclude"),
        pytest.param(
            placement(label_selector=meta_pb2.LabelSelector(match_labels={"tier": "gold"})),
            ["member1", "member3"],
            id="labels",
        ),
        pytest.param(
            placement(
                field_selector=policy_pb2.FieldSelector(
                    match_expressions=[
                        meta_pb2.LabelSelectorRequirement(
                            key="region", operator="In", values=["us"]
                        )
                    ]
                )
            ),
            ["member2", "member3"],
            id="field-region",
        ),
        pytest.param(
            placement(cluster_names=["member1"], exclude=["member1"]), [], id="excluded-by-name"
        ),
    ],
)
def test_cluster_affinity(place: policy_pb2.Placement, expected: list[str]) -> None:
    decision = scheduling.schedule(place, replicas=3, clusters=CLUSTERS)
    assert [t.name for t in decision.targets] == expected
    assert all(t.replicas == 3 for t in decision.targets)
    assert decision.reason == ("Success" if expected else "NoClusterFit")


def test_no_fit_explains_each_cluster() -> None:
    decision = scheduling.schedule(
        placement(cluster_names=["ghost"]), replicas=1, clusters=CLUSTERS
    )
    assert not decision.scheduled
    names = ("member1", "member2", "member3")
    assert decision.rejected == dict.fromkeys(names, "not in clusterNames")
    assert "member2: not in clusterNames" in decision.message


def test_taints_keep_new_work_off_but_do_not_evict() -> None:
    tainted = [
        ClusterInfo("member1", {}, taints=(TaintInfo(names.NOT_READY_TAINT, "", "NoSchedule"),)),
        ClusterInfo("member2", {}),
    ]
    fresh = scheduling.schedule(policy_pb2.Placement(), replicas=1, clusters=tainted)
    assert [t.name for t in fresh.targets] == ["member2"]
    assert "not tolerated" in fresh.rejected["member1"]
    kept = scheduling.schedule(
        policy_pb2.Placement(), replicas=1, clusters=tainted, current=["member1"]
    )
    assert [t.name for t in kept.targets] == ["member1", "member2"]


def test_tolerations() -> None:
    tainted = [ClusterInfo("member1", {}, taints=(TaintInfo("dedicated", "ml", "NoSchedule"),))]
    place = policy_pb2.Placement(
        cluster_tolerations=[meta_pb2.Toleration(key="dedicated", operator="Equal", value="ml")]
    )
    assert scheduling.schedule(place, replicas=1, clusters=tainted).scheduled
    wrong = policy_pb2.Placement(
        cluster_tolerations=[meta_pb2.Toleration(key="dedicated", operator="Equal", value="web")]
    )
    assert not scheduling.schedule(wrong, replicas=1, clusters=tainted).scheduled


def test_deleting_clusters_are_skipped() -> None:
    clusters = [ClusterInfo("member1", {}, deleting=True), ClusterInfo("member2", {})]
    decision = scheduling.schedule(policy_pb2.Placement(), replicas=1, clusters=clusters)
    assert [t.name for t in decision.targets] == ["member2"]


def test_cluster_affinities_fall_back_in_order() -> None:
    place = policy_pb2.Placement(
        cluster_affinities=[
            policy_pb2.ClusterAffinityTerm(affinity_name="primary", cluster_names=["ghost"]),
            policy_pb2.ClusterAffinityTerm(affinity_name="backup", cluster_names=["member2"]),
        ]
    )
    decision = scheduling.schedule(place, replicas=1, clusters=CLUSTERS)
    assert decision.affinity_name == "backup"
    assert [t.name for t in decision.targets] == ["member2"]


GROUPS = policy_pb2.Placement(
    cluster_affinities=[
        policy_pb2.ClusterAffinityTerm(affinity_name="primary", cluster_names=["member1"]),
        policy_pb2.ClusterAffinityTerm(affinity_name="backup", cluster_names=["member2"]),
        policy_pb2.ClusterAffinityTerm(affinity_name="last", cluster_names=["member3"]),
    ]
)


@pytest.mark.parametrize(
    ("observing", "fresh", "clusters", "expected"),
    [
        pytest.param("", False, CLUSTERS, ("primary", "member1"), id="first-decision"),
        pytest.param("backup", False, CLUSTERS, ("backup", "member2"), id="stays-in-its-group"),
        pytest.param("backup", True, CLUSTERS, ("primary", "member1"), id="reschedule-starts-over"),
        pytest.param(
            "renamed", False, CLUSTERS, ("primary", "member1"), id="unknown-group-starts-over"
        ),
        pytest.param(
            "backup",
            False,
            [c for c in CLUSTERS if c.name != "member2"],
            ("last", "member3"),
            id="goes-on-to-later-groups",
        ),
        pytest.param(
            "last",
            False,
            [c for c in CLUSTERS if c.name != "member3"],
            ("primary", "member1"),
            id="earlier-groups-rather-than-nowhere",
        ),
    ],
)
def test_cluster_affinities_start_from_the_group_in_use(
    observing: str, fresh: bool, clusters: list[ClusterInfo], expected: tuple[str, str]
) -> None:
    decision = scheduling.schedule(
        GROUPS, replicas=1, clusters=clusters, observing_affinity=observing, fresh=fresh
    )
    assert (decision.affinity_name, *[t.name for t in decision.targets]) == expected


def divided(**strategy: object) -> policy_pb2.Placement:
    return policy_pb2.Placement(
        replica_scheduling=policy_pb2.ReplicaSchedulingStrategy(
            replica_scheduling_type="Divided",
            **strategy,  # type: ignore[arg-type]
        )
    )


def test_divided_without_weights_splits_evenly() -> None:
    decision = scheduling.schedule(divided(), replicas=6, clusters=CLUSTERS)
    assert {t.name: t.replicas for t in decision.targets} == {
        "member1": 2,
        "member2": 2,
        "member3": 2,
    }


def test_static_weights_select_clusters_by_affinity() -> None:
    place = divided(
        replica_division_preference="Weighted",
        weight_preference=policy_pb2.ClusterPreferences(
            static_weight_list=[
                policy_pb2.StaticClusterWeight(
                    target_cluster=policy_pb2.ClusterAffinity(cluster_names=["member1"]), weight=2
                ),
                policy_pb2.StaticClusterWeight(
                    target_cluster=policy_pb2.ClusterAffinity(
                        label_selector=meta_pb2.LabelSelector(match_labels={"tier": "silver"})
                    ),
                    weight=1,
                ),
            ]
        ),
    )
    decision = scheduling.schedule(place, replicas=3, clusters=CLUSTERS)
    # member3 matches no entry: weight 0, no replicas.
    assert {t.name: t.replicas for t in decision.targets} == {"member1": 2, "member2": 1}


def test_dynamic_weights_need_room() -> None:
    roomy = [
        ClusterInfo("a", {}, free={"cpu": Fraction(18), "pods": Fraction(100)}),
        ClusterInfo("b", {}, free={"cpu": Fraction(12), "pods": Fraction(100)}),
        ClusterInfo("c", {}, free={"cpu": Fraction(6), "pods": Fraction(100)}),
    ]
    place = divided(
        replica_division_preference="Weighted",
        weight_preference=policy_pb2.ClusterPreferences(dynamic_weight="AvailableReplicas"),
    )
    one_cpu = {"cpu": Fraction(1)}
    decision = scheduling.schedule(place, replicas=12, clusters=roomy, requests=one_cpu)
    assert {t.name: t.replicas for t in decision.targets} == {"a": 6, "b": 4, "c": 2}
    too_many = scheduling.schedule(place, replicas=40, clusters=roomy, requests=one_cpu)
    assert too_many.reason == "Unschedulable"
    assert "room for 36" in too_many.message
    unknown = [ClusterInfo("a", {})]
    assert scheduling.schedule(place, replicas=1, clusters=unknown, requests=one_cpu).reason == (
        "Unschedulable"
    )


@pytest.mark.parametrize(
    ("free", "requests", "expected"),
    [
        (
            {"cpu": Fraction(4), "memory": Fraction(8 * 2**30), "pods": Fraction(110)},
            {"cpu": Fraction(1, 2)},
            8,
        ),
        (
            {"cpu": Fraction(4), "memory": Fraction(2**30), "pods": Fraction(110)},
            {"cpu": Fraction(1, 10), "memory": Fraction(2**28)},
            4,
        ),
        ({"cpu": Fraction(4), "pods": Fraction(3)}, {"cpu": Fraction(1, 10)}, 3),
        ({"cpu": Fraction(4), "pods": Fraction(3)}, {}, 3),
        ({"cpu": Fraction(-1), "pods": Fraction(3)}, {"cpu": Fraction(1)}, 0),
    ],
)
def test_available_replicas_estimator(
    free: dict[str, Fraction], requests: dict[str, Fraction], expected: int
) -> None:
    assert scheduling.available_replicas(ClusterInfo("a", {}, free=free), requests) == expected


def test_no_ready_node_means_no_room() -> None:
    free = {"cpu": Fraction(8), "pods": Fraction(110)}
    assert scheduling.available_replicas(ClusterInfo("a", {}, free=free, ready_nodes=0), {}) == 0
    assert scheduling.available_replicas(ClusterInfo("a", {}, free=free, ready_nodes=2), {}) == 110


def test_objects_without_replicas_go_everywhere_under_divided() -> None:
    decision = scheduling.schedule(divided(), replicas=0, clusters=CLUSTERS)
    assert [t.name for t in decision.targets] == ["member1", "member2", "member3"]


@pytest.mark.parametrize(
    ("strategy", "duplicated"),
    [
        (None, True),
        ("Duplicated", True),
        ("", False),
        ("Divided", False),
    ],
)
def test_karmada_default_replica_scheduling(strategy: str | None, duplicated: bool) -> None:
    place = policy_pb2.Placement()
    if strategy is not None:
        place.replica_scheduling.replica_scheduling_type = strategy
        place.replica_scheduling.SetInParent()
    assert scheduling.is_duplicated(place) is duplicated


def test_api_enablement_filters_clusters_that_lack_the_kind() -> None:
    widget = ("example.com/v1", "Widget")
    clusters = [
        ClusterInfo("has", {}, api_resources=frozenset({widget, ("apps/v1", "Deployment")})),
        ClusterInfo("lacks", {}, api_resources=frozenset({("apps/v1", "Deployment")})),
        ClusterInfo("unknown", {}),
    ]
    decision = scheduling.schedule(
        policy_pb2.Placement(), replicas=1, clusters=clusters, resource=widget
    )
    assert [t.name for t in decision.targets] == ["has", "unknown"]
    assert decision.rejected["lacks"] == "does not serve Widget in example.com/v1"


REGIONS = [
    ClusterInfo("eu-1", {"env": "prod"}, provider="aws", region="eu", zones=("eu-a",)),
    ClusterInfo("eu-2", {"env": "prod"}, provider="gcp", region="eu", zones=("eu-b",)),
    ClusterInfo("us-1", {"env": "prod"}, provider="aws", region="us", zones=("us-a",)),
    ClusterInfo("us-2", {"env": "dev"}, provider="gcp", region="us", zones=("us-b",)),
    ClusterInfo("ap-1", {"env": "dev"}, provider="aws", region="ap", zones=("ap-a",)),
]


def spread_by(*constraints: tuple[str, int, int], label: str = "") -> policy_pb2.Placement:
    place = policy_pb2.Placement()
    for field, minimum, maximum in constraints:
        entry = place.spread_constraints.add(min_groups=minimum, max_groups=maximum)
        if field == "label":
            entry.spread_by_label = label
        else:
            entry.spread_by_field = field
    return place


@pytest.mark.parametrize(
    ("place", "current", "expected"),
    [
        pytest.param(spread_by(("cluster", 1, 2)), {}, {"ap-1", "eu-1"}, id="two-clusters-by-name"),
        pytest.param(
            spread_by(("cluster", 1, 2)), {"us-2": 1}, {"us-2", "ap-1"}, id="locality-first"
        ),
        pytest.param(
            spread_by(("region", 2, 2), ("cluster", 2, 2)), {}, {"ap-1", "eu-1"}, id="two-regions"
        ),
        pytest.param(
            spread_by(("region", 1, 1), ("cluster", 1, 5)),
            {"us-1": 1},
            {"us-1", "us-2"},
            id="one-region",
        ),
        pytest.param(
            spread_by(("provider", 2, 2), ("cluster", 2, 2)), {}, {"ap-1", "eu-2"}, id="providers"
        ),
        pytest.param(
            spread_by(("label", 1, 1), ("cluster", 1, 9), label="env"),
            {"eu-1": 1},
            {"eu-1", "eu-2", "us-1"},
            id="by-label",
        ),
    ],
)
def test_spread_constraints(
    place: policy_pb2.Placement, current: dict[str, int], expected: set[str]
) -> None:
    decision = scheduling.schedule(place, replicas=1, clusters=REGIONS, current=current)
    assert decision.scheduled, decision.message
    assert {t.name for t in decision.targets} == expected


@pytest.mark.parametrize(
    ("place", "message"),
    [
        (
            spread_by(("region", 4, 4), ("cluster", 1, 9)),
            "region needs at least 4 groups, 3 available",
        ),
        (spread_by(("cluster", 6, 9)), "cluster needs at least 6 clusters, 5 available"),
    ],
)
def test_unmeetable_spread_is_unschedulable(place: policy_pb2.Placement, message: str) -> None:
    decision = scheduling.schedule(place, replicas=1, clusters=REGIONS)
    assert decision.reason == "Unschedulable"
    assert message in decision.message


def test_success_says_why_other_clusters_were_filtered_out() -> None:
    decision = scheduling.schedule(
        placement(cluster_names=["member1", "member2"]), replicas=1, clusters=CLUSTERS
    )
    assert decision.message == (
        "scheduled to member1, member2; filtered out: member3: not in clusterNames"
    )


def test_assumed_capacity_prevents_oversubscription() -> None:
    clusters = [
        ClusterInfo("a", {}, free={"cpu": Fraction(10), "pods": Fraction(100)}),
        ClusterInfo("b", {}, free={"cpu": Fraction(4), "pods": Fraction(100)}),
    ]
    place = divided(replica_division_preference="Aggregated")
    one_cpu = {"cpu": Fraction(1)}
    assumed = scheduling.AssumedCapacity()

    first = scheduling.schedule(
        place, replicas=8, clusters=assumed.apply(clusters), requests=one_cpu
    )
    assert {t.name: t.replicas for t in first.targets} == {"a": 8}
    assumed.assume({}, {"a": 8}, one_cpu)
    # The heartbeat has not come yet: without the assumption "a" would look empty again.
    second = scheduling.schedule(
        place, replicas=5, clusters=assumed.apply(clusters), requests=one_cpu
    )
    assert {t.name: t.replicas for t in second.targets} == {"a": 2, "b": 3}
    assumed.assume({}, {"a": 2, "b": 3}, one_cpu)
    third = scheduling.schedule(
        place, replicas=2, clusters=assumed.apply(clusters), requests=one_cpu
    )
    assert third.reason == "Unschedulable"
    assert "room for 1" in third.message

    assumed.reported("a")  # the agent's figures now include what was placed there
    assert assumed.apply(clusters)[0].free == clusters[0].free


def test_overflow_tiers_expand_in_order_and_contract_in_reverse() -> None:
    def room(name: str, replicas: int) -> ClusterInfo:
        return ClusterInfo(name, {}, replicas_available=replicas)

    clusters = [room("home", 4), room("near", 3), room("far", 10)]
    place = policy_pb2.Placement(
        cluster_affinities=[
            policy_pb2.ClusterAffinityTerm(
                affinity_name="local",
                cluster_names=["home"],
                overflow_affinities=[
                    policy_pb2.ClusterAffinity(cluster_names=["near"]),
                    policy_pb2.ClusterAffinity(cluster_names=["far"]),
                ],
            )
        ],
        replica_scheduling=policy_pb2.ReplicaSchedulingStrategy(
            replica_scheduling_type="Divided", replica_division_preference="Aggregated"
        ),
    )

    def result(replicas: int, current: dict[str, int]) -> dict[str, int]:
        decision = scheduling.schedule(place, replicas=replicas, clusters=clusters, current=current)
        assert decision.scheduled, decision.message
        return {t.name: t.replicas for t in decision.targets}

    assert result(4, {}) == {"home": 4}
    assert result(6, {}) == {"home": 4, "near": 2}
    grown = result(12, {})
    assert grown["home"] == 4 and grown["near"] == 3 and grown["far"] == 5
    # Back down to what home holds: the overflow tiers are released.
    assert result(3, {"home": 4, "near": 3, "far": 5}) == {"home": 3}
