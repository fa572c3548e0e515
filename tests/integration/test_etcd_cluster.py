"""Losing an etcd member: a real 3-member cluster, members killed with SIGKILL.

Each test kills every member in turn (the leader among them; the control plane's
requests go round robin to all members, so whichever one its watches were on dies
too), goes on working while the member is down, then starts it again on its data
directory and sees it rejoin. Nothing waits on a sleep: every wait is for something
to arrive. How long each loss kept a write from landing is printed as a figure
(``pytest -s``), never asserted.
"""

from __future__ import annotations

import asyncio
import functools
import operator
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from archipel.core.errors import Unavailable
from archipel.fleet.controlplane import ControlPlaneProcess
from archipel.fleet.etcd import EtcdCluster, EtcdServer, free_port
from archipel.v1alpha1 import agent_pb2, service_pb2
from controlplane.etcd import Etcd, Put
from tests.integration.agents import Api, RawAgent, config_map, eventually

pytestmark = pytest.mark.servers
NAMESPACE = "ha"
CLUSTER = "member"


@pytest.fixture
def etcd_members(etcd_cluster: EtcdCluster) -> Iterator[EtcdCluster]:
    """The module's cluster (tests/conftest.py), every member running and healthy
    before and after the test."""
    _revive(etcd_cluster)
    yield etcd_cluster
    _revive(etcd_cluster)


def _revive(cluster: EtcdCluster) -> None:
    for member in cluster:
        if not member.running:
            member.start()
    cluster.wait_healthy()


def _kill_order(cluster: EtcdCluster, *, first: str = "") -> list[EtcdServer]:
    """Every member once: the one at endpoint ``first`` (the one a client is on), then
    the leader (losing it costs an election too), then the others."""
    leader = cluster.leader()
    return sorted(cluster, key=lambda member: (member.endpoint != first, member is not leader))


async def _rejoin(member: EtcdServer) -> None:
    """Start the member again on its data directory; until it is healthy (caught up
    with its cluster's leader)."""
    # Started from the main thread: the kernel ties the child's parent-death signal to
    # the thread that forks it.
    member.launch()
    await asyncio.to_thread(member.wait_ready)


async def test_writes_land_and_the_watch_loses_nothing_while_members_die(
    etcd_members: EtcdCluster,
) -> None:
    # One flag value holding every endpoint, as ``--etcd a,b,c`` gives it.
    etcd = Etcd([",".join(etcd_members.endpoints)], prefix=f"/ha-{uuid.uuid4().hex[:8]}/")
    await etcd.connect()
    written: list[str] = []
    seen: list[str] = []
    everything = asyncio.Event()
    total = 0

    async def watch(start: int) -> None:
        async for events in etcd.watch("k/", start_revision=start):
            seen.extend(event.key for event in events)
            if total and len(seen) >= total:
                everything.set()

    async def write(count: int) -> None:
        for _ in range(count):
            key = f"k/{len(written):05d}"
            if await etcd.commit([Put(key, b"v", 0)]) is None:
                # A transaction whose member died after applying it, before answering:
                # its retry fails the guard (the documented conflict). It did land.
                assert await etcd.get(key) is not None, key
            written.append(key)

    watcher = asyncio.create_task(watch(await etcd.current_revision() + 1))
    try:
        await write(20)
        for member in _kill_order(etcd_members, first=etcd.current_endpoint):
            was_leader = member is etcd_members.leader()
            was_current = member.endpoint == etcd.current_endpoint
            member.kill()
            lost = time.monotonic()
            await write(1)
            if was_current:
                # The client moved on from the member it was on, watch included.
                assert etcd.current_endpoint != member.endpoint
            print(
                f"\n{member.name} ({'leader' if was_leader else 'follower'}"
                f"{', the one the client was on' if was_current else ''}) killed: "
                f"the next write landed after {time.monotonic() - lost:.2f}s"
            )
            await write(20)
            await _rejoin(member)
            await write(20)
        total = len(written)
        if len(seen) >= total:
            everything.set()
        arrived = asyncio.create_task(everything.wait())
        await asyncio.wait({arrived, watcher}, timeout=60, return_when=asyncio.FIRST_COMPLETED)
        arrived.cancel()
        if watcher.done():
            watcher.result()  # the watch's own error, if it ended with one
        assert everything.is_set(), f"the watch saw {len(seen)} of {total} writes"
        # Every key once, in order: nothing lost, nothing repeated across the resumes.
        assert seen == written
        assert etcd_members.healthy()
        # Each member, once back, holds everything written while it was away.
        for member in etcd_members:
            held = await eventually(
                f"an answer from {member.name} alone", functools.partial(_keys, member, etcd.prefix)
            )
            assert held == written, member.name
    finally:
        watcher.cancel()
        await asyncio.gather(watcher, return_exceptions=True)
        await etcd.close()


async def _keys(member: EtcdServer, prefix: str) -> list[str] | None:
    """The keys under ``prefix``/k/ as ``member`` alone answers, or None while it does
    not: gRPC shares connections between clients, and one to a member that was down
    waits out its reconnection backoff (5 s at most) before it is tried again."""
    alone = Etcd([member.endpoint], prefix=prefix)
    await alone.connect()
    try:
        items, _, _ = await alone.range("k/")
    except Unavailable:
        return None
    finally:
        await alone.close()
    return [item.key for item in items]


@pytest.fixture
def ha_plane(etcd_members: EtcdCluster, tmp_path: Path) -> Iterator[ControlPlaneProcess]:
    """A control plane given every member of the cluster (``--etcd a,b,c``)."""
    plane = ControlPlaneProcess(
        etcd_endpoint=",".join(etcd_members.endpoints),
        etcd_prefix=f"/plane-{uuid.uuid4().hex[:8]}/",
        directory=tmp_path / "cp",
    )
    plane.start()
    yield plane
    plane.stop()


@pytest.fixture
async def ha_api(ha_plane: ControlPlaneProcess) -> AsyncIterator[Api]:
    api = Api(ha_plane)
    yield api
    await api.close()


def work_name(template: str) -> str:
    return f"{NAMESPACE}.{template}-configmap"


async def test_the_control_plane_keeps_propagating_while_members_die(
    etcd_members: EtcdCluster, ha_plane: ControlPlaneProcess, ha_api: Api
) -> None:
    token = await ha_api.join(CLUSTER)
    await ha_api.propagate_config_maps(CLUSTER, namespace=NAMESPACE)
    agent = RawAgent(ha_plane, CLUSTER, token)
    agent.start(agent_pb2.Hello(cluster=CLUSTER))
    try:
        await ha_api.apply(config_map("before", namespace=NAMESPACE))
        await agent.wait("the first work", lambda: work_name("before") in agent.works)
        for index, member in enumerate(_kill_order(etcd_members)):
            was_leader = member is etcd_members.leader()
            member.kill()
            lost = time.monotonic()
            template = f"after-loss-{index}"
            # Through every controller: the policy's binding, the scheduler, the
            # binding's work, the execution controller's stream to the agent.
            await ha_api.apply(config_map(template, namespace=NAMESPACE))
            name = work_name(template)
            await agent.wait(
                f"the work {name}", functools.partial(operator.contains, agent.works, name)
            )
            print(
                f"\n{member.name} ({'leader' if was_leader else 'follower'}) killed: "
                f"a new template reached the agent after {time.monotonic() - lost:.2f}s"
            )
            binding = await ha_api.bindings.Get(
                service_pb2.GetRequest(namespace=NAMESPACE, name=f"{template}-configmap"),
                metadata=ha_api.metadata,
            )
            assert [c.name for c in binding.spec.clusters] == [CLUSTER]
            assert await ha_api.work(CLUSTER, work_name(template)) is not None
            await _rejoin(member)
        # The control plane never stopped (a dead informer or controller would have
        # ended it with exit code 1), and the cluster is whole again.
        ha_plane.process.check_running()
        assert etcd_members.healthy()
        await ha_api.apply(config_map("after", namespace=NAMESPACE))
        await agent.wait("the last work", lambda: work_name("after") in agent.works)
    finally:
        await agent.close()


async def test_a_member_stopped_cleanly_rejoins_with_its_data(etcd_members: EtcdCluster) -> None:
    etcd = Etcd(etcd_members.endpoints, prefix=f"/ha-{uuid.uuid4().hex[:8]}/")
    await etcd.connect()
    try:
        member = etcd_members[0]
        member.stop()
        assert await etcd.commit([Put("k/while-away", b"v", 0)]) is not None
        await _rejoin(member)
        assert etcd_members.healthy()
        held = await eventually(
            f"an answer from {member.name} alone", functools.partial(_keys, member, etcd.prefix)
        )
        assert "k/while-away" in held
    finally:
        await etcd.close()


async def test_members_named_by_host_name_with_a_dead_one_first(
    etcd_members: EtcdCluster,
) -> None:
    # Host names, as production names its members, resolved by gRPC; and an endpoint
    # where nothing listens, first: the client turns to the next.
    named = [e.replace("127.0.0.1", "localhost") for e in etcd_members.endpoints]
    etcd = Etcd([f"http://127.0.0.1:{free_port()}", *named], prefix=f"/ha-{uuid.uuid4().hex[:8]}/")
    await etcd.connect()
    try:
        assert await etcd.commit([Put("named", b"v", 0)]) is not None
        found = await etcd.get("named")
        assert found is not None and found.value == b"v"
        assert etcd.current_endpoint in named
    finally:
        await etcd.close()
