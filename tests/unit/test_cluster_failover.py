"""The cluster controller's failover bookkeeping around its pure plan.

The plan's decisions are tables in test_plan_cluster.py; here the glue that feeds it:
the fleet's counts and the halt gauge kept from the clusters cache (and who is looked
at again when they change), the rate limit's in-flight mark, and since when an agent
has reported what it reports. No etcd: the controller is built on a store it never
reaches, and the cache is filled as its watch would.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from prometheus_client import REGISTRY

from archipel.core import kinds
from archipel.core.conditions import set_condition
from archipel.v1alpha1 import agent_pb2, cluster_pb2
from controlplane.context import Context, Settings
from controlplane.controllers import cluster as cluster_controller
from controlplane.controllers.cluster import (
    ClusterController,
    Observed,
    RecordEviction,
    newest_no_execute,
)
from controlplane.etcd import Etcd
from controlplane.plan import Plan
from controlplane.store import Store


def key(name: str) -> str:
    return kinds.MEMBER_CLUSTER.key("", name)


def member(name: str, ready: str | None, *, deleting: bool = False) -> cluster_pb2.MemberCluster:
    result = cluster_pb2.MemberCluster()
    result.metadata.name = name
    result.metadata.resource_version = "1"
    if ready is not None:
        set_condition(result.status.conditions, "Ready", ready, "r", "m")
    if deleting:
        result.metadata.deletion_timestamp.FromSeconds(1)
    return result


@pytest.fixture
def controller() -> Iterator[ClusterController]:
    settings = Settings(etcd_endpoints=["http://127.0.0.1:1"], cluster_grace_period=40.0)
    yield ClusterController(Context.build(settings, Store(Etcd(settings.etcd_endpoints))))


def store(
    controller: ClusterController, cluster: cluster_pb2.MemberCluster | None, name: str
) -> None:
    """What the clusters watch delivers: the cache changes and its handlers run."""
    controller.context.clusters._set(key(name), cluster)


def drain(controller: ClusterController) -> set[str]:
    """The keys queued since the last drain."""
    queue = controller.controller.queue
    keys: set[str] = set()
    while len(queue):
        _, _, got = queue._ready.get_nowait()
        queue._waiting.discard(got)
        keys.add(got)
    return keys


def halted() -> float | None:
    return REGISTRY.get_sample_value("archipel_eviction_halted")


def test_the_fleet_counts_and_the_halt_follow_the_cache(controller: ClusterController) -> None:
    for name in ("a", "b", "c"):
        store(controller, member(name, "True"), name)
    assert (len(controller.fleet), controller.fleet_not_ready) == (3, 0)
    drain(controller)
    assert halted() == 0

    # One of three failing is no halt: only the changed cluster is looked at.
    store(controller, member("a", "False"), "a")
    assert controller.fleet_not_ready == 1
    assert drain(controller) == {key("a")}
    assert halted() == 0

    # Two of three is: everyone is looked at again (a due taint is held back now).
    store(controller, member("b", "Unknown"), "b")
    assert (controller.fleet_not_ready, halted()) == (2, 1)
    assert drain(controller) == {key("a"), key("b"), key("c")}

    # A status change that keeps readiness looks only at its cluster.
    store(controller, member("b", "False"), "b")
    assert drain(controller) == {key("b")}

    # A deleting cluster leaves the fleet: 1 of 2, the halt lifts, everyone looks again.
    store(controller, member("b", "False", deleting=True), "b")
    assert (len(controller.fleet), controller.fleet_not_ready, halted()) == (2, 1, 0)
    assert drain(controller) == {key("a"), key("b"), key("c")}
    store(controller, None, "b")
    assert drain(controller) == {key("b")}
    assert (len(controller.fleet), controller.fleet_not_ready) == (2, 1)


async def test_the_plan_sees_the_other_clusters_and_the_rate_limit(
    controller: ClusterController, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[Observed] = []
    adds_taint = True

    def fake_plan(observed: Observed) -> Plan:
        seen.append(observed)
        result = Plan()
        if adds_taint:
            result.committed.append(
                RecordEviction(
                    observed.evictions, key(observed.cluster.metadata.name), 5.0, "NotReady"
                )
            )
        return result

    monkeypatch.setattr(cluster_controller, "plan", fake_plan)
    for name, ready in (("a", "False"), ("b", "False"), ("c", "True"), ("d", None)):
        store(controller, member(name, ready), name)

    first = await controller.reconcile(key("a"))
    assert first is not None
    assert (seen[-1].other_clusters, seen[-1].other_not_ready) == (3, 2)  # b and d
    assert seen[-1].next_eviction_at < 0  # never evicted: free to
    # While a's taint is being committed, b waits an interval from now.
    assert controller.evictions.in_flight == key("a")
    adds_taint = False
    await controller.reconcile(key("b"))
    assert seen[-1].next_eviction_at >= seen[-1].now_monotonic + 10.0

    # a's plan lost its race (its bookkeeping never ran): its next pass frees the turn.
    await controller.reconcile(key("a"))
    assert controller.evictions.in_flight == ""
    assert seen[-1].next_eviction_at < 0

    # Committed: the turn is used, from when the plan was made.
    adds_taint = True
    committed = await controller.reconcile(key("a"))
    assert committed is not None
    for bookkeeping in committed.committed:
        bookkeeping()
    assert (controller.evictions.in_flight, controller.evictions.last) == ("", 5.0)
    adds_taint = False
    await controller.reconcile(key("c"))
    assert seen[-1].next_eviction_at == 15.0


def test_steady_since_restarts_when_the_report_changes_or_after_a_silence(
    controller: ClusterController,
) -> None:
    def beat(ready: bool, *, silent: float = 0.0) -> bool:
        """Whether the heartbeat restarted the count (from a mark left before it)."""
        live = controller.liveness.get("a")
        if live is not None:
            live.steady_since = -1.0
            live.received_at -= silent
        controller.heartbeat("a", agent_pb2.Heartbeat(api_server_ready=ready))
        return controller.liveness["a"].steady_since != -1.0

    assert beat(True)  # the first
    assert not beat(True)  # the same report
    assert beat(False)  # another
    assert not beat(False, silent=39.0)
    assert beat(False, silent=41.0)  # a silence past the 40 s grace breaks the count


def test_the_rate_limit_counts_no_execute_taints_any_replica_added() -> None:
    """The newest NoExecute taint of the other clusters, from the clusters cache."""

    def member(name: str, *taints: tuple[str, int]) -> cluster_pb2.MemberCluster:
        built = cluster_pb2.MemberCluster()
        built.metadata.name = name
        for effect, added in taints:
            taint = built.spec.taints.add(key="k", effect=effect)
            taint.time_added.FromSeconds(added)
        return built

    clusters = [
        member("a", ("NoExecute", 100), ("NoSchedule", 900)),
        member("b", ("NoExecute", 300)),
        member("c"),
    ]
    assert newest_no_execute(clusters, besides="memberclusters/_/c") == 300.0
    assert newest_no_execute(clusters, besides="memberclusters/_/b") == 100.0
    assert newest_no_execute(clusters[2:], besides="") is None
