"""Shards and agent streams shared by control-plane replicas, on a real etcd.

Each replica here is a :class:`Shards` with its own etcd connection, run in this
process; the control-plane processes run the same object (tests/e2e exercise those).
A replica "dies" by having its tasks cancelled without leaving: its lease then expires
on etcd's clock, as a killed process's would.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator, Callable

import pytest

from archipel.core.errors import Conflict, FailedPrecondition
from archipel.fleet.etcd import EtcdServer
from controlplane.etcd import Etcd, Put
from controlplane.shards import Shards, assignment
from tests.integration.agents import eventually

pytestmark = pytest.mark.servers
COUNT = 16
LEASE = 2


class Replicas:
    def __init__(self, endpoint: str) -> None:
        self.endpoint = endpoint
        self.prefix = f"/shards-{uuid.uuid4().hex[:8]}/"
        self.running: dict[str, tuple[Shards, asyncio.Task[None]]] = {}
        self.connections: list[Etcd] = []

    async def start(self, name: str) -> Shards:
        etcd = Etcd([self.endpoint], prefix=self.prefix)
        await etcd.connect()
        self.connections.append(etcd)
        shards = Shards(etcd, replica=name, count=COUNT, lease_seconds=LEASE)
        self.running[name] = (shards, asyncio.create_task(shards.run()))
        return shards

    async def kill(self, name: str) -> None:
        """Stop acting and renewing, without leaving: as kill -9 would."""
        _, task = self.running.pop(name)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    async def leave(self, name: str) -> None:
        shards, _ = self.running[name]
        await self.kill(name)
        await shards.stop()

    async def close(self) -> None:
        for name in list(self.running):
            await self.leave(name)
        for etcd in self.connections:
            await etcd.close()


@pytest.fixture
async def replicas(etcd_server: EtcdServer) -> AsyncIterator[Replicas]:
    group = Replicas(etcd_server.endpoint)
    yield group
    await group.close()


def settled(*replicas: Shards) -> Callable[[], asyncio.Future[bool]]:
    """Whether every shard is held by the replica the assignment names, and by no other."""
    names = [r.replica for r in replicas]

    async def check() -> bool:
        wanted = assignment(names, COUNT)
        return all(
            set(r.held) == {s for s, owner in wanted.items() if owner == r.replica}
            for r in replicas
        )

    return check  # type: ignore[return-value]


async def test_one_replica_holds_every_shard(replicas: Replicas) -> None:
    alone = await replicas.start("a")
    await asyncio.wait_for(alone.ready.wait(), 10)
    assert set(alone.held) == set(range(COUNT))
    assert all(alone.owns(shard) for shard in range(COUNT))


async def test_replicas_joining_share_the_shards_and_never_both_hold_one(
    replicas: Replicas,
) -> None:
    a = await replicas.start("a")
    await asyncio.wait_for(a.ready.wait(), 10)
    b = await replicas.start("b")
    c = await replicas.start("c")
    await eventually("the shards to spread over three replicas", settled(a, b, c))
    assert not (set(a.held) & set(b.held) or set(a.held) & set(c.held) or set(b.held) & set(c.held))
    assert set(a.held) | set(b.held) | set(c.held) == set(range(COUNT))


async def test_a_dead_replicas_shards_are_taken_once_its_lease_expires(
    replicas: Replicas,
) -> None:
    a = await replicas.start("a")
    b = await replicas.start("b")
    await eventually("the shards to spread", settled(a, b))
    lost = set(a.held)
    await replicas.kill("a")
    killed = time.monotonic()
    await eventually("b to take the dead replica's shards", settled(b))
    took = time.monotonic() - killed
    print(f"shards of a killed replica taken over in {took:.1f}s (lease {LEASE}s)")
    assert lost <= set(b.held)


async def test_a_replica_that_lost_its_shard_writes_nothing(replicas: Replicas) -> None:
    """Fencing: a write guarded by a claim that expired fails as a whole, even when the
    replica still believes it holds the shard (a paused process that woke up)."""
    a = await replicas.start("a")
    await asyncio.wait_for(a.ready.wait(), 10)
    stale = a.guard(3)
    await replicas.kill("a")
    b = await replicas.start("b")
    await eventually("b to hold shard 3", lambda: _true(b.owns(3)))
    landed = await b.etcd.commit([Put("objects/x", b"from-a", 0), stale])
    assert landed is None, "a write of the replica that lost the shard landed"
    assert await b.etcd.get("objects/x") is None
    landed = await b.etcd.commit([Put("objects/x", b"from-b", 0), b.guard(3)])
    assert landed is not None


async def test_a_replica_that_stopped_renewing_stops_acting_on_its_own(
    replicas: Replicas,
) -> None:
    a = await replicas.start("a")
    await asyncio.wait_for(a.ready.wait(), 10)
    await replicas.kill("a")  # nothing renews any more
    await eventually("a to stop owning its shards", lambda: _true(not a.owns(0)))
    with pytest.raises(Conflict):
        a.guard(0)


async def test_a_replica_leaving_hands_its_shards_over_at_once(replicas: Replicas) -> None:
    a = await replicas.start("a")
    b = await replicas.start("b")
    await eventually("the shards to spread", settled(a, b))
    left = time.monotonic()
    await replicas.leave("a")
    await eventually("b to take every shard", settled(b), seconds=LEASE * 0.9)
    print(f"shards of a replica that left taken over in {time.monotonic() - left:.2f}s")


async def test_agent_streams_are_fenced_by_epoch_across_replicas(replicas: Replicas) -> None:
    a = await replicas.start("a")
    b = await replicas.start("b")
    await asyncio.wait_for(a.ready.wait(), 10)
    taken: list[tuple[str, str]] = []
    a.on_stream_lost(lambda cluster, session: taken.append((cluster, session)))
    await a.claim_stream("member1", "session-a", "agent-1", 2)
    assert a.stream_guard("member1") is not None
    with pytest.raises(FailedPrecondition, match="epoch 1 is older"):
        await b.claim_stream("member1", "session-b", "agent-0", 1)
    await b.claim_stream("member1", "session-b", "agent-2", 3)
    await eventually("a to hear its stream was taken", lambda: _true(taken))
    assert taken == [("member1", "session-a")]
    assert a.stream_guard("member1") is None and b.stream_guard("member1") is not None
    # The newest epoch outlives the stream: an older leader is refused after it ended.
    await b.release_stream("member1", "session-b")
    with pytest.raises(FailedPrecondition):
        await a.claim_stream("member1", "session-a2", "agent-1", 2)


async def test_a_cluster_without_a_stream_belongs_to_the_fleet_shard(replicas: Replicas) -> None:
    a = await replicas.start("a")
    await asyncio.wait_for(a.ready.wait(), 10)
    guards = a.owns_cluster("member9")
    assert guards is not None and len(guards) == 2  # the fleet shard, and no stream
    await a.claim_stream("member9", "s", "", 0)
    assert a.owns_cluster("member9") == a.stream_guard("member9")


async def _true(value: object) -> bool:
    return bool(value)


async def test_reports_are_written_by_the_streams_holder_or_while_nobody_holds_it(
    replicas: Replicas,
) -> None:
    a = await replicas.start("a")
    b = await replicas.start("b")
    await asyncio.wait_for(a.ready.wait(), 10)
    vacant = b.owns_reports("member5")
    assert vacant is not None and vacant[0].expect_mod_revision == 0
    await a.claim_stream("member5", "s", "", 0)
    await eventually("b to see a's stream", lambda: _true("member5" in b.streams))
    assert b.owns_reports("member5") is None
    assert a.owns_reports("member5") == a.stream_guard("member5")
    # A write b made while the stream was vacant fails once a holds it.
    assert await b.etcd.commit([Put("objects/report", b"late", 0), *vacant]) is None
