"""Failover on real members, with no configuration but shorter timings: a failed
member loses its workloads to the others, its old copy is kept until they are healthy
there, nothing comes back by itself when it returns, and with most of the fleet down
nothing is evicted at all.

Faults are real: a member's API server stopped, its agent killed. Deployments become
Ready through kwok (the ``full`` profile), so "healthy elsewhere" is the members' own
word. Each test asserts where the replicas are at every step.
"""

from __future__ import annotations

import datetime
import functools
from collections.abc import Iterator
from typing import Any

import pytest

from archipel.client import message_to_document
from archipel.fleet.members import FAULT_LABEL, Fleet
from tests.e2e.conftest import (
    QUICK_HEALTH,
    Pipeline,
    deployment,
    start_pipeline,
    wait_for,
)

pytestmark = pytest.mark.members(count=3, profile="full", isolated=True)

MEMBERS = ("member1", "member2", "member3")
# A failed member is tainted NoExecute 3 s after it turns not Ready; the old copy is
# kept at most 30 s. The defaults (60 s and 600 s) differ only in how long they wait.
FAILOVER_ARGS = (
    *QUICK_HEALTH,
    "--failover-grace-period=3",
    "--eviction-interval=1",
    "--graceful-eviction-timeout=30",
)
TIMEOUT = 120
# The fault label as a JSON pointer segment ("/" escaped).
FAULT_PATH = FAULT_LABEL[0].replace("/", "~1")


@pytest.fixture(scope="module")
def failover(members: Fleet, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pipeline]:
    yield from start_pipeline(members, tmp_path_factory.mktemp("failover"), FAILOVER_ARGS)


def spread_policy(
    namespace: str, *, divided: bool = True, purge_mode: str = "", tolerate: int | None = None
) -> dict[str, Any]:
    placement: dict[str, Any] = {"clusterAffinity": {"clusterNames": list(MEMBERS)}}
    if divided:
        placement["replicaScheduling"] = {
            "replicaSchedulingType": "Divided",
            "replicaDivisionPreference": "Weighted",
            "weightPreference": {
                "staticWeightList": [
                    {"targetCluster": {"clusterNames": [name]}, "weight": 1} for name in MEMBERS
                ]
            },
        }
    if tolerate is not None:
        placement["clusterTolerations"] = [
            {
                "key": "cluster.karmada.io/not-ready",
                "operator": "Exists",
                "effect": "NoExecute",
                "tolerationSeconds": tolerate,
            }
        ]
    spec: dict[str, Any] = {
        "resourceSelectors": [{"apiVersion": "apps/v1", "kind": "Deployment"}],
        "placement": placement,
    }
    if purge_mode:
        spec["failover"] = {"cluster": {"purgeMode": purge_mode}}
    return {
        "apiVersion": "policy.karmada.io/v1alpha1",
        "kind": "PropagationPolicy",
        "metadata": {"name": "web", "namespace": namespace},
        "spec": spec,
    }


def binding(pipeline: Pipeline, namespace: str) -> dict[str, Any]:
    api = pipeline.client()
    try:
        found = api.binding_of("apps/v1", "Deployment", namespace, "web")
    finally:
        api.close()
    return message_to_document(found) if found is not None else {}


def scheduled(pipeline: Pipeline, namespace: str) -> dict[str, int]:
    clusters = binding(pipeline, namespace).get("spec", {}).get("clusters", [])
    return {c["name"]: int(c.get("replicas", 0)) for c in clusters}


def scheduled_condition(pipeline: Pipeline, namespace: str) -> str:
    """The Scheduled condition's message (it names the clusters filtered out, and why)."""
    for found in binding(pipeline, namespace).get("status", {}).get("conditions", []):
        if found["type"] == "Scheduled":
            return str(found.get("message", ""))
    return ""


def tasks(pipeline: Pipeline, namespace: str) -> list[str]:
    spec = binding(pipeline, namespace).get("spec", {})
    return [t["fromCluster"] for t in spec.get("gracefulEvictionTasks", [])]


def running(
    pipeline: Pipeline, namespace: str, members: tuple[str, ...] = MEMBERS
) -> dict[str, int]:
    """Replicas of the Deployment in each member that has it (its own API server's word)."""
    found = {}
    for member in members:
        current = pipeline.deployment(member, namespace, "web")
        if current is not None:
            found[member] = int(current.spec.replicas or 0)
    return found


def healthy_everywhere(pipeline: Pipeline, namespace: str, clusters: set[str]) -> bool:
    items = binding(pipeline, namespace).get("status", {}).get("aggregatedStatus", [])
    healthy = {i["clusterName"] for i in items if i.get("health") == "Healthy" and i.get("applied")}
    return clusters <= healthy


def taints(pipeline: Pipeline, cluster: str) -> list[tuple[str, str]]:
    spec = pipeline.cluster(cluster).get("spec", {})
    return [(t["key"], t["effect"]) for t in spec.get("taints", [])]


def condition(pipeline: Pipeline, cluster: str, kind: str) -> dict[str, Any]:
    for found in pipeline.cluster(cluster).get("status", {}).get("conditions", []):
        if found["type"] == kind:
            return dict(found)
    return {}


def start_spread(pipeline: Pipeline, namespace: str, policy: dict[str, Any]) -> None:
    pipeline.apply(deployment(namespace, replicas=6), policy)
    expected = (
        dict.fromkeys(MEMBERS, 2)
        if "replicaScheduling" in policy["spec"]["placement"]
        else dict.fromkeys(MEMBERS, 6)
    )
    wait_for("2 replicas in each member", lambda: running(pipeline, namespace) == expected)
    wait_for(
        "healthy in every member",
        functools.partial(healthy_everywhere, pipeline, namespace, set(MEMBERS)),
        # A member whose API server was restarted by an earlier test runs pods again
        # only once its own controllers and kwok have caught up: up to ~100 s here
        # (bench/failover.py measured it), nothing of Archipel's.
        timeout=2 * TIMEOUT,
    )


def test_a_failed_member_fails_over_gracefully_and_nothing_comes_back_by_itself(
    failover: Pipeline, namespace: str
) -> None:
    start_spread(failover, namespace, spread_policy(namespace))
    member3 = failover.fleet["member3"]
    member3.stop_apiserver()
    try:
        wait_for(
            "member3 tainted NoExecute",
            lambda: ("cluster.archipel.io/not-ready", "NoExecute") in taints(failover, "member3"),
            timeout=TIMEOUT,
        )
        wait_for(
            "member3's replicas moved to member1 and member2",
            lambda: scheduled(failover, namespace) == {"member1": 3, "member2": 3},
            timeout=TIMEOUT,
        )
        wait_for(
            "3 replicas in member1 and member2",
            lambda: (
                running(failover, namespace, ("member1", "member2")) == {"member1": 3, "member2": 3}
            ),
        )
        # The old copy is kept until the workload is healthy where it moved: then the
        # task ends, well before the 30 s grace.
        wait_for(
            "healthy in member1 and member2, and the eviction over",
            lambda: (
                healthy_everywhere(failover, namespace, {"member1", "member2"})
                and not tasks(failover, namespace)
            ),
            timeout=TIMEOUT,
        )
        history = binding(failover, namespace)["status"]["failoverHistory"]
        assert [(h["originCluster"], h["reason"]) for h in history] == [
            ("member3", "TaintUntolerated")
        ]
        described = failover.cli("describe", "deployment", "web", "-n", namespace)
        assert "member3 (TaintUntolerated): member1,member2,member3 -> member1,member2" in (
            described.stdout
        )
    finally:
        member3.start_apiserver()
        member3.wait_components(timeout=TIMEOUT)
    wait_for("member3 Ready again", lambda: failover.ready("member3") == "True", timeout=TIMEOUT)
    wait_for(
        "member3's old copy deleted when its agent can reach it again",
        lambda: "member3" not in running(failover, namespace),
        timeout=TIMEOUT,
    )
    assert ("cluster.archipel.io/not-ready", "NoExecute") not in taints(failover, "member3")
    # Back and healthy, member3 gets nothing back unasked: every move disrupts. The
    # barrier: the scheduler has decided since member3 recovered (its condition no
    # longer filters member3 out).
    wait_for(
        "a decision that saw member3 healthy",
        lambda: "member3" not in scheduled_condition(failover, namespace),
        timeout=TIMEOUT,
    )
    assert scheduled(failover, namespace) == {"member1": 3, "member2": 3}
    assert running(failover, namespace) == {"member1": 3, "member2": 3}
    # Asked, it does.
    asked = failover.cli("rebalance", "deployment/web", "-n", namespace)
    assert asked.returncode == 0, asked.stderr
    wait_for(
        "the preferred placement restored",
        lambda: running(failover, namespace) == dict.fromkeys(MEMBERS, 2),
        timeout=TIMEOUT,
    )


def test_a_workload_divided_by_dynamic_weights_leaves_a_failed_member_too(
    failover: Pipeline, namespace: str
) -> None:
    # Karmada#3623: with dynamic weights, a NoExecute taint moved nothing.
    policy = spread_policy(namespace)
    policy["spec"]["placement"]["replicaScheduling"] = {
        "replicaSchedulingType": "Divided",
        "replicaDivisionPreference": "Weighted",
        "weightPreference": {"dynamicWeight": "AvailableReplicas"},
    }
    failover.apply(deployment(namespace, replicas=6), policy)
    wait_for(
        "6 replicas across the members",
        lambda: (
            sum(running(failover, namespace).values()) == 6
            and "member3" in running(failover, namespace)
        ),
        timeout=TIMEOUT,
    )
    member3 = failover.fleet["member3"]
    member3.stop_apiserver()
    try:

        def moved_off() -> dict[str, int]:
            placement = scheduled(failover, namespace)
            done = "member3" not in placement and sum(placement.values()) == 6
            return placement if done else {}

        moved = wait_for("member3's replicas moved", moved_off, timeout=TIMEOUT)
        wait_for(
            "healthy where it moved",
            functools.partial(healthy_everywhere, failover, namespace, set(moved)),
            timeout=TIMEOUT,
        )
        assert sum(running(failover, namespace, ("member1", "member2")).values()) == 6
    finally:
        member3.start_apiserver()
        member3.wait_components(timeout=TIMEOUT)
    wait_for(
        "member3's old copy deleted",
        lambda: "member3" not in running(failover, namespace),
        timeout=TIMEOUT,
    )


def test_purge_mode_directly_removes_the_old_copy_at_once(
    failover: Pipeline, namespace: str
) -> None:
    start_spread(failover, namespace, spread_policy(namespace, purge_mode="Directly"))
    member2 = failover.fleet["member2"]
    failover.agents["member2"].kill()
    try:
        wait_for(
            "member2's replicas moved",
            lambda: scheduled(failover, namespace) == {"member1": 3, "member3": 3},
            timeout=TIMEOUT,
        )
        # No task keeps member2's copy: its work is already on its way out.
        assert tasks(failover, namespace) == []
        assert binding(failover, namespace)["status"]["failoverHistory"][-1]["originCluster"] == (
            "member2"
        )
    finally:
        failover.start_agent(member2)
    wait_for(
        "member2's copy deleted once its agent is back",
        lambda: "member2" not in running(failover, namespace),
        timeout=TIMEOUT,
    )
    wait_for("member2 Ready again", lambda: failover.ready("member2") == "True", timeout=TIMEOUT)


def test_a_tolerated_taint_keeps_the_workload_for_its_toleration_seconds(
    failover: Pipeline, namespace: str
) -> None:
    start_spread(failover, namespace, spread_policy(namespace, tolerate=10))
    member3 = failover.fleet["member3"]
    member3.stop_apiserver()
    try:
        wait_for(
            "member3's replicas moved once the toleration ran out",
            lambda: scheduled(failover, namespace) == {"member1": 3, "member2": 3},
            timeout=TIMEOUT,
        )
        taint = next(
            t for t in failover.cluster("member3")["spec"]["taints"] if t["effect"] == "NoExecute"
        )
        (moved,) = binding(failover, namespace)["status"]["failoverHistory"]
        # The eviction came no sooner than 10 s after the taint (Karmada's key in the
        # toleration tolerated Archipel's taint that long).
        assert _seconds(moved["startTime"]) - _seconds(taint["timeAdded"]) >= 10
    finally:
        member3.start_apiserver()
        member3.wait_components(timeout=TIMEOUT)
    wait_for("member3 Ready again", lambda: failover.ready("member3") == "True", timeout=TIMEOUT)


def test_with_most_of_the_fleet_down_nothing_is_evicted(failover: Pipeline, namespace: str) -> None:
    start_spread(failover, namespace, spread_policy(namespace, divided=False))
    before = binding(failover, namespace)["metadata"]["generation"]
    for name in ("member1", "member2"):
        failover.agents[name].kill()
    try:
        for name in ("member1", "member2"):
            wait_for(
                f"{name}'s eviction halted",
                functools.partial(
                    lambda cluster: (
                        condition(failover, cluster, "Failover").get("reason") == "EvictionHalted"
                    ),
                    name,
                ),
                timeout=TIMEOUT,
            )
            assert ("cluster.archipel.io/unreachable", "NoExecute") not in taints(failover, name)
        # Two of three clusters down points at the control plane's network: the
        # workload stays where it is.
        assert scheduled(failover, namespace) == dict.fromkeys(MEMBERS, 6)
        assert binding(failover, namespace)["metadata"]["generation"] == before
    finally:
        for name in ("member1", "member2"):
            failover.start_agent(failover.fleet[name])
    for name in ("member1", "member2"):
        wait_for(f"{name} Ready", functools.partial(lambda c: failover.ready(c) == "True", name))


def test_a_workload_failing_in_one_member_moves_and_carries_its_state(
    failover: Pipeline, namespace: str
) -> None:
    policy = spread_policy(namespace)
    placement = policy["spec"]["placement"]
    placement["replicaScheduling"] = {
        "replicaSchedulingType": "Divided",
        "replicaDivisionPreference": "Aggregated",
    }
    # Karmada's application failover, as its documentation writes it. Never: the old
    # copy stays, and with it the state the new copy was given.
    policy["spec"]["failover"] = {
        "application": {
            "decisionConditions": {"tolerationSeconds": 5},
            "purgeMode": "Never",
            "statePreservation": {
                "rules": [
                    {"aliasLabelName": "failover.example.com/updated", "jsonPath": "{.replicas}"}
                ]
            },
        }
    }
    failover.apply(deployment(namespace, replicas=2), policy)
    first = wait_for("the workload placed", lambda: scheduled(failover, namespace))
    (origin,) = first
    wait_for(
        f"healthy in {origin}",
        functools.partial(healthy_everywhere, failover, namespace, {origin}),
        timeout=TIMEOUT,
    )
    # Its pods in that member alone stop being Ready (kwok's fault stage): the
    # application fails there, not the cluster.
    failover.apply(
        {
            "apiVersion": "policy.karmada.io/v1alpha1",
            "kind": "OverridePolicy",
            "metadata": {"name": "break-it", "namespace": namespace},
            "spec": {
                "resourceSelectors": [{"apiVersion": "apps/v1", "kind": "Deployment"}],
                "overrideRules": [
                    {
                        "targetCluster": {"clusterNames": [origin]},
                        "overriders": {
                            "plaintext": [
                                {
                                    "path": f"/spec/template/metadata/labels/{FAULT_PATH}",
                                    "operator": "add",
                                    "value": FAULT_LABEL[1],
                                }
                            ]
                        },
                    }
                ],
            },
        }
    )
    moved = wait_for(
        f"the workload moved off {origin}",
        lambda: [c for c in scheduled(failover, namespace) if c != origin],
        timeout=TIMEOUT,
    )
    (target,) = moved
    history = binding(failover, namespace)["status"]["failoverHistory"]
    assert (history[-1]["originCluster"], history[-1]["reason"]) == (origin, "ApplicationFailure")
    (task,) = binding(failover, namespace)["spec"]["gracefulEvictionTasks"]
    preserved = task["preservedLabelState"]
    assert set(preserved) == {"failover.example.com/updated"}

    def labelled() -> bool:
        found = failover.deployment(target, namespace, "web")
        return (
            found is not None
            and found.metadata.labels.get("failover.example.com/updated")
            == preserved["failover.example.com/updated"]
        )

    wait_for(f"the old copy's state on the new copy in {target}", labelled, timeout=TIMEOUT)
    wait_for(
        f"healthy in {target}",
        functools.partial(healthy_everywhere, failover, namespace, {target}),
        timeout=TIMEOUT,
    )
    # purgeMode Never: the failing copy is still there, and the cluster is not chosen
    # again while its eviction is pending.
    assert origin in running(failover, namespace)
    assert scheduled(failover, namespace) == {target: 2}


def test_suspended_dispatching_holds_a_clusters_work_back_without_deleting_it(
    failover: Pipeline, namespace: str
) -> None:
    policy = spread_policy(namespace, divided=False)
    failover.apply(deployment(namespace, replicas=6), policy)
    wait_for(
        "6 replicas everywhere", lambda: running(failover, namespace) == dict.fromkeys(MEMBERS, 6)
    )
    policy["spec"]["suspension"] = {"dispatchingOnClusters": {"clusterNames": ["member2"]}}
    failover.apply(policy)
    wait_for(
        "the binding suspended on member2",
        lambda: binding(failover, namespace)["spec"].get("suspension", {}) != {},
    )
    failover.apply(deployment(namespace, replicas=4))
    wait_for(
        "the change dispatched to member1 and member3",
        lambda: (
            running(failover, namespace, ("member1", "member3")) == {"member1": 4, "member3": 4}
        ),
    )
    # Same change, same moment: member2's copy is held back, not deleted.
    assert running(failover, namespace, ("member2",)) == {"member2": 6}
    del policy["spec"]["suspension"]
    failover.apply(policy)
    wait_for(
        "member2 gets the change once dispatching resumes",
        lambda: running(failover, namespace) == dict.fromkeys(MEMBERS, 4),
    )


def test_a_flapping_member_leaves_no_task_behind_and_moves_nothing_twice(
    failover: Pipeline, namespace: str
) -> None:
    start_spread(failover, namespace, spread_policy(namespace))
    member3 = failover.fleet["member3"]
    for outage in range(3):
        member3.stop_apiserver()
        try:
            if outage == 0:
                # The first outage lasts long enough to move the workload.
                wait_for(
                    "member3's replicas moved",
                    lambda: scheduled(failover, namespace) == {"member1": 3, "member2": 3},
                    timeout=TIMEOUT,
                )
            else:
                wait_for(
                    "member3 not Ready",
                    lambda: failover.ready("member3") == "False",
                    timeout=TIMEOUT,
                )
        finally:
            member3.start_apiserver()
        member3.wait_components(timeout=TIMEOUT)
        wait_for("member3 Ready", lambda: failover.ready("member3") == "True", timeout=TIMEOUT)
    wait_for(
        "every eviction task over, member3's copy gone",
        lambda: not tasks(failover, namespace) and "member3" not in running(failover, namespace),
        timeout=TIMEOUT,
    )
    # One move, not one per outage: the later ones found nothing of it on member3.
    history = binding(failover, namespace)["status"]["failoverHistory"]
    assert [h["originCluster"] for h in history] == ["member3"]
    assert scheduled(failover, namespace) == {"member1": 3, "member2": 3}
    assert running(failover, namespace) == {"member1": 3, "member2": 3}


def test_suspended_scheduling_places_nothing_until_resumed(
    failover: Pipeline, namespace: str
) -> None:
    policy = spread_policy(namespace, divided=False)
    policy["spec"]["suspension"] = {"scheduling": True}
    failover.apply(deployment(namespace, replicas=2), policy)

    def suspended() -> bool:
        conditions = binding(failover, namespace).get("status", {}).get("conditions", [])
        return any(c["type"] == "SchedulingSuspended" and c["status"] == "True" for c in conditions)

    wait_for("the binding's scheduling suspended", suspended)
    assert scheduled(failover, namespace) == {}
    assert running(failover, namespace) == {}
    policy["spec"]["suspension"] = {"scheduling": False}
    failover.apply(policy)
    wait_for(
        "placed once scheduling resumes",
        lambda: running(failover, namespace) == dict.fromkeys(MEMBERS, 2),
    )


def _seconds(stamp: str) -> float:
    return datetime.datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()
