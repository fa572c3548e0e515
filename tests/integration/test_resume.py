"""The agent-session resume protocol, against a real control plane on a real etcd.

An agent opens its stream with a hello naming the works it holds (uid and
generation), in HeldWorks continuation messages when there are many. The control plane
answers with only the works that are new or changed, a delete for each work the agent
should no longer hold, and then ``synced`` with what it sent, deleted and found
unchanged (controlplane/controllers/execution.py). The agents here are the protocol
spoken by hand, and every test asserts on what the stream carried up to ``synced``,
which marks the end of the resume: nothing here waits on a sleep.

The control plane's caches follow etcd through watches, so a change the API already
shows may not have reached the work cache yet. Before an agent connects, the tests
wait for a barrier: a work written after every change, seen arriving at another
cluster's connected agent, proves the work cache has seen everything before it.
"""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import AsyncIterator, Iterable, Sequence

import pytest

from archipel import agentstream, limits
from archipel.v1alpha1 import agent_pb2, work_pb2
from tests.integration.agents import Api, Opening, RawAgent, Resume, config_map, eventually

pytestmark = pytest.mark.servers
NAMESPACE = "resume"
CLUSTER = "member"
PROBE_NAMESPACE = "resume-probe"
PROBE_CLUSTER = "probe"
NAMES = [f"settings-{index}" for index in range(6)]
Works = dict[str, work_pb2.PropagationWork]


def work_name(template: str, namespace: str = NAMESPACE) -> str:
    return f"{namespace}.{template}-configmap"


class Probe:
    """Another cluster's agent, connected all along, to tell when the control plane's
    work cache has caught up with etcd."""

    def __init__(self, api: Api, agent: RawAgent) -> None:
        self.api = api
        self.agent = agent
        self._count = itertools.count()

    async def barrier(self) -> None:
        """Return once the work cache has seen every work written before this call."""
        template = f"barrier-{next(self._count)}"
        await self.api.apply(config_map(template, namespace=PROBE_NAMESPACE))
        name = work_name(template, PROBE_NAMESPACE)
        await self.agent.wait(f"the work {name} at the probe", lambda: name in self.agent.works)


@pytest.fixture
async def probe(api: Api) -> AsyncIterator[Probe]:
    token = await api.join(PROBE_CLUSTER)
    await api.propagate_config_maps(PROBE_CLUSTER, namespace=PROBE_NAMESPACE)
    agent = RawAgent(api.plane, PROBE_CLUSTER, token)
    agent.start(agent_pb2.Hello(cluster=PROBE_CLUSTER))
    try:
        yield Probe(api, agent)
    finally:
        await agent.close()


async def member_with_works(
    api: Api, probe: Probe, names: Sequence[str] = NAMES, *, data: dict[str, str] | None = None
) -> str:
    """Join the member, propagate a ConfigMap for each of ``names`` to it, and wait
    until the control plane holds all their works; the member's token."""
    token = await api.join(CLUSTER)
    await api.propagate_config_maps(CLUSTER, namespace=NAMESPACE)
    for name in names:
        await api.apply(config_map(name, namespace=NAMESPACE, data=data))
    wanted = {work_name(name) for name in names}

    async def all_there() -> bool:
        return set(await api.cluster_works(CLUSTER)) == wanted

    await eventually(f"the works {sorted(wanted)}", all_there)
    await probe.barrier()
    return token


@contextlib.asynccontextmanager
async def connected(
    api: Api, token: str, opening: Opening, *, max_bytes: int = limits.MAX_REPORT_BATCH_BYTES
) -> AsyncIterator[RawAgent]:
    """The member's agent, its stream open with ``opening`` until the block ends."""
    agent = RawAgent(api.plane, CLUSTER, token)
    agent.start(opening, max_bytes=max_bytes)
    try:
        yield agent
    finally:
        await agent.close()


async def resume(
    api: Api, token: str, opening: Opening, *, max_bytes: int = limits.MAX_REPORT_BATCH_BYTES
) -> Resume:
    """Connect with ``opening``; what the control plane sent up to ``synced``."""
    async with connected(api, token, opening, max_bytes=max_bytes) as agent:
        return await agent.resumed()


def hello(held: Iterable[agent_pb2.HeldWork]) -> agent_pb2.Hello:
    return agent_pb2.Hello(cluster=CLUSTER, agent_version="test", held_works=held)


def holding(works: Iterable[work_pb2.PropagationWork]) -> list[agent_pb2.HeldWork]:
    """What an agent that applied ``works`` names in its hello."""
    return [
        agent_pb2.HeldWork(
            name=work.metadata.name, uid=work.metadata.uid, generation=work.metadata.generation
        )
        for work in works
    ]


def identity(work: work_pb2.PropagationWork) -> tuple[str, str, int]:
    return work.metadata.name, work.metadata.uid, work.metadata.generation


def synced(sent: int, deleted: int, unchanged: int) -> agent_pb2.SyncComplete:
    return agent_pb2.SyncComplete(sent=sent, deleted=deleted, unchanged=unchanged)


async def first_session(api: Api, token: str) -> Works:
    """An empty hello's session: the works it received, by name."""
    async with connected(api, token, hello([])) as agent:
        resumed = await agent.resumed()
        assert resumed.synced == synced(len(NAMES), 0, 0)
        return {work.metadata.name: work for work in resumed.works}


async def test_a_first_connect_receives_every_work_then_synced(api: Api, probe: Probe) -> None:
    token = await member_with_works(api, probe)
    stored = await api.cluster_works(CLUSTER)

    async with connected(api, token, hello([])) as agent:
        resumed = await agent.resumed()
        assert agent.received[0].WhichOneof("message") == "welcome"

    assert sorted(resumed.sent) == sorted(stored) == sorted(work_name(n) for n in NAMES)
    assert sorted(map(identity, resumed.works)) == sorted(map(identity, stored.values()))
    assert resumed.deletes == []
    assert resumed.synced == synced(len(NAMES), 0, 0)


async def test_a_reconnect_holding_every_work_is_sent_nothing(api: Api, probe: Probe) -> None:
    token = await member_with_works(api, probe)
    held = await first_session(api, token)

    resumed = await resume(api, token, hello(holding(held.values())))

    assert resumed.works == []
    assert resumed.deletes == []
    assert resumed.synced == synced(0, 0, len(NAMES))


async def test_a_reconnect_after_changes_gets_exactly_the_changes(api: Api, probe: Probe) -> None:
    token = await member_with_works(api, probe)
    held = await first_session(api, token)
    changed, removed, *_ = NAMES

    # While the agent is away: a template changes, one is deleted, one is added.
    await api.apply(config_map(changed, namespace=NAMESPACE, data={"key": "changed"}))
    await api.delete_config_map(removed, namespace=NAMESPACE)
    await api.apply(config_map("added", namespace=NAMESPACE))
    before = held[work_name(changed)].metadata.generation

    async def done() -> bool:
        works = await api.cluster_works(CLUSTER)
        gone = works.get(work_name(removed))
        return (
            works[work_name(changed)].metadata.generation > before
            # Its agent has not said it deleted the work's objects: the work waits.
            and (gone is None or gone.metadata.HasField("deletion_timestamp"))
            and work_name("added") in works
        )

    await eventually("the changes in the member's works", done)
    await probe.barrier()
    stored = await api.cluster_works(CLUSTER)

    resumed = await resume(api, token, hello(holding(held.values())))

    assert sorted(map(identity, resumed.works)) == sorted(
        identity(stored[name]) for name in (work_name(changed), work_name("added"))
    )
    assert identity(stored[work_name(changed)])[2] > before
    assert resumed.deletes == [
        agent_pb2.WorkDelete(name=work_name(removed), uid=held[work_name(removed)].metadata.uid)
    ]
    assert resumed.synced == synced(2, 1, len(NAMES) - 2)


async def test_unknown_and_recreated_works_in_a_hello(api: Api, probe: Probe) -> None:
    token = await member_with_works(api, probe)
    stored = await api.cluster_works(CLUSTER)
    recreated, ahead, *unchanged = sorted(stored)
    held = holding(stored[name] for name in unchanged)
    # The same name, another uid: the work was deleted and created again since.
    held.append(agent_pb2.HeldWork(name=recreated, uid="an-older-uid", generation=1))
    # A generation the control plane never wrote (say, etcd was restored from a backup).
    held.append(
        agent_pb2.HeldWork(
            name=ahead,
            uid=stored[ahead].metadata.uid,
            generation=stored[ahead].metadata.generation + 5,
        )
    )
    never = work_name("never-there")
    held.append(agent_pb2.HeldWork(name=never, uid="uid-of-nothing", generation=3))

    resumed = await resume(api, token, hello(held))

    assert sorted(map(identity, resumed.works)) == sorted(
        [identity(stored[recreated]), identity(stored[ahead])]
    )
    assert resumed.deletes == [agent_pb2.WorkDelete(name=never, uid="uid-of-nothing")]
    assert resumed.synced == synced(2, 1, len(unchanged))


UNKNOWN = [
    agent_pb2.HeldWork(name=work_name(f"gone-{index}"), uid=f"uid-{index}", generation=2)
    for index in range(3)
]


async def test_a_hello_in_parts_is_one_hello(api: Api, probe: Probe) -> None:
    token = await member_with_works(api, probe)
    stored = await api.cluster_works(CLUSTER)
    # Small parts, as agentstream cuts them: the works it knows, then three unknown.
    full = hello([*holding(stored[name] for name in sorted(stored)), *UNKNOWN])
    parts = agentstream.hello_messages(full, max_bytes=200)
    assert len(parts) >= 3
    assert parts[0].hello.more_held_works
    assert not ({w.name for w in UNKNOWN} & {w.name for w in parts[0].hello.held_works})
    assert all(p.held_works.more for p in parts[1:-1]) and not parts[-1].held_works.more

    resumed = await resume(api, token, full, max_bytes=200)

    assert resumed.works == []
    assert sorted(resumed.deleted) == sorted(w.name for w in UNKNOWN)
    assert resumed.synced == synced(0, len(UNKNOWN), len(stored))


async def test_a_hello_in_parts_built_by_hand(api: Api, probe: Probe) -> None:
    token = await member_with_works(api, probe)
    stored = await api.cluster_works(CLUSTER)
    held = holding(stored[name] for name in sorted(stored))
    # A hello naming nothing itself, an empty part in the middle, unknown works last.
    opening = [
        agent_pb2.AgentMessage(hello=agent_pb2.Hello(cluster=CLUSTER, more_held_works=True)),
        agent_pb2.AgentMessage(held_works=agent_pb2.HeldWorks(works=held[:2], more=True)),
        agent_pb2.AgentMessage(held_works=agent_pb2.HeldWorks(more=True)),
        agent_pb2.AgentMessage(
            held_works=agent_pb2.HeldWorks(works=[*held[2:], *UNKNOWN], more=False)
        ),
    ]

    resumed = await resume(api, token, opening)

    assert resumed.works == []
    assert sorted(resumed.deleted) == sorted(w.name for w in UNKNOWN)
    assert resumed.synced == synced(0, len(UNKNOWN), len(stored))


async def test_generation_zero_in_a_hello_sends_the_work_again(api: Api, probe: Probe) -> None:
    token = await member_with_works(api, probe)
    stored = await api.cluster_works(CLUSTER)
    by_hashes, *current = sorted(stored)
    # Held by hashes only, as an agent's ledger names a work after a restart.
    held = [
        agent_pb2.HeldWork(name=by_hashes, uid=stored[by_hashes].metadata.uid, generation=0),
        *holding(stored[name] for name in current),
    ]

    resumed = await resume(api, token, hello(held))

    assert list(map(identity, resumed.works)) == [identity(stored[by_hashes])]
    assert resumed.deletes == []
    assert resumed.synced == synced(1, 0, len(current))


async def test_a_restarted_control_plane_resends_nothing(api: Api, probe: Probe) -> None:
    token = await member_with_works(api, probe)
    held = await first_session(api, token)

    api.plane.stop()
    api.plane.start(timeout=120)
    resumed = await resume(api, token, hello(holding(held.values())))

    assert resumed.works == []
    assert resumed.deletes == []
    assert resumed.synced == synced(0, 0, len(NAMES))


class SyncedEarly(AssertionError):
    """``synced`` came before works the resume still had to send."""


async def test_synced_comes_after_every_work_while_statuses_are_written(
    api: Api, probe: Probe
) -> None:
    # Works of about 0.9 MiB: four to a stream message, and a fifth cut from each full
    # one goes to the back of the queue. Sixty of them: the first sync takes more
    # messages than the buffers between the two sides hold, so most of it is still to
    # be made when the statuses are written.
    names = [f"large-{index:02d}" for index in range(60)]
    chunk = "x" * (100 * 1024)
    token = await member_with_works(api, probe, names, data={f"k{i}": chunk for i in range(9)})
    agent = RawAgent(api.plane, CLUSTER, token)
    # The agent reads the first batch and no more for now: the control plane's sends
    # wait on flow control, the rest of the first sync still to come.
    agent.pause_after = lambda message: message.WhichOneof("message") == "batch"
    agent.start(hello([]))
    try:
        await agent.wait("the first batch", lambda: not agent.reading.is_set())
        first = list(agent.works.values())
        assert 0 < len(first) < len(names)
        versions: dict[str, str] = {}
        for work in first:
            stored = await api.work(CLUSTER, work.metadata.name)
            assert stored is not None
            versions[work.metadata.name] = stored.metadata.resource_version
        # What a real agent does once it applied them: report their status, which the
        # control plane writes to the works.
        for work in first:
            agent.outbox.put_nowait(
                agent_pb2.AgentMessage(
                    status=agent_pb2.WorkStatusReport(
                        name=work.metadata.name,
                        uid=work.metadata.uid,
                        generation=work.metadata.generation,
                        applied=True,
                    )
                )
            )

        async def written() -> bool:
            for name, version in versions.items():
                stored = await api.work(CLUSTER, name)
                if stored is None or stored.metadata.resource_version == version:
                    return False
            return True

        await eventually("the statuses written to the works", written)
        await probe.barrier()
        agent.pause_after = lambda message: False
        agent.reading.set()
        resumed = await agent.resumed(seconds=120)
    finally:
        await agent.close()

    late = sorted({work_name(name) for name in names} - set(resumed.sent))
    if late:
        raise SyncedEarly(
            f"synced (sent {resumed.synced.sent}, unchanged {resumed.synced.unchanged}) "
            f"came before {len(late)} of the {len(names)} works: {late}"
        )
    assert resumed.synced.sent == len(names)
    assert resumed.synced.deleted == 0
