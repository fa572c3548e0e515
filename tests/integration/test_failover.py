"""The cluster side of failover, end to end: a real control plane with short failover
timings, and agents spoken by hand that report their API server ready or not.

A cluster whose agent reports its API server not ready turns Ready=False once the
failure threshold has passed, gets its NoExecute taint once the failover grace has,
keeps it while the whole fleet failing halts new ones, and loses it once it has been
healthy for the success threshold. Every step is waited for with a deadline; nothing
is concluded from a sleep.
"""

from __future__ import annotations

import asyncio
import time
import urllib.request
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from archipel.core import names
from archipel.core.conditions import find
from archipel.fleet.controlplane import ControlPlaneProcess
from archipel.fleet.etcd import EtcdServer
from archipel.v1alpha1 import agent_pb2, cluster_pb2, service_pb2, service_pb2_grpc
from tests.integration.agents import Api, RawAgent, eventually

pytestmark = pytest.mark.servers

FAILURE_THRESHOLD = 1
SUCCESS_THRESHOLD = 1
FAILOVER_GRACE = 2
NOT_READY = names.NOT_READY_TAINT


@pytest.fixture
def plane(etcd_server: EtcdServer, tmp_path: Path) -> Iterator[ControlPlaneProcess]:
    """A control plane whose failover takes seconds, not minutes."""
    process = ControlPlaneProcess(
        etcd_endpoint=etcd_server.endpoint,
        etcd_prefix=f"/failover-{uuid.uuid4().hex[:8]}/",
        directory=tmp_path / "cp",
        extra_args=[
            f"--cluster-failure-threshold={FAILURE_THRESHOLD}",
            f"--cluster-success-threshold={SUCCESS_THRESHOLD}",
            f"--failover-grace-period={FAILOVER_GRACE}",
            "--eviction-interval=1",
        ],
    )
    process.start()
    yield process
    process.stop()


@pytest.fixture
async def api(plane: ControlPlaneProcess) -> AsyncIterator[Api]:
    client = Api(plane)
    yield client
    await client.close()


class Agents:
    """Agents for some clusters, each beating every 0.2 s with its API server's health
    as ``healthy`` says."""

    def __init__(self, api: Api) -> None:
        self.api = api
        self.clusters = service_pb2_grpc.MemberClusterServiceStub(api.channel)
        self.healthy: dict[str, bool] = {}
        self.agents: list[RawAgent] = []
        self._beating: list[asyncio.Task[None]] = []

    async def start(self, name: str) -> None:
        agent = RawAgent(self.api.plane, name, await self.api.join(name))
        agent.start(agent_pb2.Hello(cluster=name))
        self.agents.append(agent)
        self.healthy[name] = True
        self._beating.append(asyncio.create_task(self._beat(agent)))

    async def _beat(self, agent: RawAgent) -> None:
        while True:
            heartbeat = agent_pb2.Heartbeat(
                kubernetes_version="v1.31.2", api_server_ready=self.healthy[agent.cluster]
            )
            if not heartbeat.api_server_ready:
                heartbeat.message = "readyz: etcd failed"
            agent.outbox.put_nowait(agent_pb2.AgentMessage(heartbeat=heartbeat))
            await asyncio.sleep(0.2)

    async def get(self, name: str) -> cluster_pb2.MemberCluster:
        found: cluster_pb2.MemberCluster = await self.clusters.Get(
            service_pb2.GetRequest(name=name), metadata=self.api.metadata
        )
        return found

    async def wait(
        self, name: str, *, ready: str, failover: str | None = None, no_execute: bool
    ) -> cluster_pb2.MemberCluster:
        """The cluster, once its Ready status, Failover reason and NoExecute taint are
        as given."""

        async def check() -> cluster_pb2.MemberCluster | None:
            cluster = await self.get(name)
            condition = find(cluster.status.conditions, "Ready")
            reason = find(cluster.status.conditions, "Failover")
            tainted = any(t.effect == "NoExecute" for t in cluster.spec.taints)
            if (
                condition is not None
                and condition.status == ready
                and (reason.reason if reason is not None else None) == failover
                and tainted == no_execute
            ):
                return cluster
            return None

        what = f"{name}: Ready {ready}, Failover {failover}, NoExecute {no_execute}"
        found: cluster_pb2.MemberCluster = await eventually(what, check, seconds=30)
        return found

    async def close(self) -> None:
        for task in self._beating:
            task.cancel()
        await asyncio.gather(*self._beating, return_exceptions=True)
        for agent in self.agents:
            await agent.close()


@pytest.fixture
async def agents(api: Api) -> AsyncIterator[Agents]:
    result = Agents(api)
    yield result
    await result.close()


def metric(plane: ControlPlaneProcess, name: str, labels: dict[str, str] | None = None) -> float:
    text = urllib.request.urlopen(f"http://127.0.0.1:{plane.metrics_port}/metrics").read()
    for family in text_string_to_metric_families(text.decode()):
        for sample in family.samples:
            if sample.name == name and sample.labels == (labels or {}):
                return float(sample.value)
    return 0.0


async def metric_is(
    plane: ControlPlaneProcess, value: float, name: str, labels: dict[str, str] | None = None
) -> None:
    """Wait for the metric to say ``value``: it is set when the write is committed, or
    when the cache sees it, a moment after the API can already read it."""

    async def check() -> bool:
        return await asyncio.to_thread(metric, plane, name, labels) == value

    await eventually(f"{name}{labels or ''} = {value}", check, seconds=10)


async def test_a_failing_cluster_is_tainted_no_execute_and_recovers(
    plane: ControlPlaneProcess, agents: Agents
) -> None:
    await agents.start("east")
    await agents.start("west")
    for name in ("east", "west"):
        await agents.wait(name, ready="True", no_execute=False)

    # east's API server fails: Ready False after the failure threshold, NoExecute after
    # the failover grace. One of two clusters failing is no halt.
    failed_at = time.time()
    agents.healthy["east"] = False
    east = await agents.wait("east", ready="False", failover="Evicting", no_execute=True)
    ready = find(east.status.conditions, "Ready")
    assert ready is not None
    assert ready.message == "readyz: etcd failed"
    assert ready.last_transition_time.seconds >= int(failed_at) + FAILURE_THRESHOLD
    (no_execute,) = [t for t in east.spec.taints if t.effect == "NoExecute"]
    assert no_execute.key == NOT_READY
    assert no_execute.time_added.seconds >= ready.last_transition_time.seconds + FAILOVER_GRACE
    assert [(t.key, t.effect) for t in east.spec.taints] == [
        (NOT_READY, "NoSchedule"),
        (NOT_READY, "NoExecute"),
    ]
    await metric_is(plane, 1, "archipel_cluster_evictions_total", {"reason": "NotReady"})
    await metric_is(plane, 0, "archipel_eviction_halted")

    # west fails too: two of two is more than 55%, so west gets no NoExecute taint and
    # says why, while east keeps the one it has.
    agents.healthy["west"] = False
    west = await agents.wait("west", ready="False", failover="EvictionHalted", no_execute=False)
    condition = find(west.status.conditions, "Failover")
    assert condition is not None
    assert condition.message.startswith("2 of 2 member clusters are not Ready")
    await metric_is(plane, 1, "archipel_eviction_halted")
    east = await agents.get("east")
    assert [t for t in east.spec.taints if t.effect == "NoExecute"] == [no_execute]

    # Both recover: the taints go after the success threshold, and so does the halt.
    agents.healthy["east"] = agents.healthy["west"] = True
    await agents.wait("east", ready="True", failover="ClusterReady", no_execute=False)
    await agents.wait("west", ready="True", failover="ClusterReady", no_execute=False)
    assert [t.key for t in (await agents.get("east")).spec.taints] == []
    await metric_is(plane, 0, "archipel_eviction_halted")
    assert metric(plane, "archipel_cluster_evictions_total", {"reason": "NotReady"}) == 1
