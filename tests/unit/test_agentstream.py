"""The agent's outgoing stream: batches bounded by count and bytes, statuses bounded."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from archipel import agentstream, limits, structs
from archipel.v1alpha1 import agent_pb2, work_pb2


def status(name: str, reflected: dict[str, Any] | None = None) -> agent_pb2.AgentMessage:
    report = agent_pb2.WorkStatusReport(name=name, uid="u", generation=1, applied=True)
    manifest = report.manifest_statuses.add(
        identifier=work_pb2.ResourceIdentifier(version="v1", kind="ConfigMap", name=name),
        health="Healthy",
    )
    if reflected is not None:
        manifest.status.CopyFrom(structs.to_struct(reflected))
    return agent_pb2.AgentMessage(status=report)


async def drain(
    messages: list[agent_pb2.AgentMessage], **options: Any
) -> list[agent_pb2.AgentMessage]:
    """Everything ``outgoing`` sends for ``messages`` queued at once, the hello aside."""
    outbox: asyncio.Queue[agent_pb2.AgentMessage] = asyncio.Queue()
    for message in messages:
        outbox.put_nowait(message)
    stream = agentstream.outgoing(agent_pb2.Hello(cluster="m"), outbox, **options)
    assert (await anext(stream)).HasField("hello")
    sent = []
    while not outbox.empty():
        sent.append(await asyncio.wait_for(anext(stream), timeout=5))
    # A message taken from the queue but carried over to the next batch.
    with contextlib.suppress(TimeoutError):
        sent.append(await asyncio.wait_for(anext(stream), timeout=0.2))
    return sent


def names(sent: list[agent_pb2.AgentMessage]) -> list[str]:
    found = []
    for message in sent:
        if message.HasField("batch"):
            found += [s.name for s in message.batch.statuses]
        elif message.HasField("status"):
            found.append(message.status.name)
    return found


async def test_batches_are_bounded_by_bytes() -> None:
    # 200 reports of 100 KiB each: a batch bounded by count alone would be 20 MiB,
    # over what the control plane accepts.
    payload = {"blob": "x" * (100 * 1024)}
    messages = [status(f"w{i}", payload) for i in range(200)]
    sent = await drain(messages)
    assert names(sent) == [f"w{i}" for i in range(200)]  # all of them, in order
    assert len(sent) > 1
    for message in sent:
        assert message.ByteSize() <= limits.MAX_REPORT_BATCH_BYTES
    assert any(len(m.batch.statuses) > 1 for m in sent)


async def test_one_message_over_the_byte_bound_goes_alone() -> None:
    messages = [status("small-1"), status("big", {"blob": "x" * 2000}), status("small-2")]
    sent = await drain(messages, max_bytes=1000)
    assert names(sent) == ["small-1", "big", "small-2"]
    for message in sent:
        statuses = message.batch.statuses if message.HasField("batch") else [message.status]
        assert len(statuses) == 1 or message.ByteSize() <= 1000


def nested(levels: int) -> dict[str, Any]:
    """A value ``levels`` deep, as :func:`archipel.limits.depth` counts (a scalar is one)."""
    value: Any = 1
    for _ in range(levels - 1):
        value = {"x": value}
    assert limits.depth(value, stop_after=levels) == levels
    return dict(value)


async def test_a_status_too_deep_is_replaced_by_an_empty_one() -> None:
    at_limit = nested(limits.MAX_MANIFEST_DEPTH)
    sent = await drain(
        [status("deep", nested(limits.MAX_MANIFEST_DEPTH + 1)), status("fine", at_limit)]
    )
    [batch] = sent
    deep, fine = (report.manifest_statuses[0] for report in batch.batch.statuses)
    assert deep.HasField("status") and not deep.status.fields
    assert "deeper than" in deep.health_message
    assert deep.health == "Healthy"
    assert structs.from_struct(fine.status) == at_limit
    assert fine.health_message == ""


async def test_a_status_too_large_is_replaced_by_an_empty_one() -> None:
    huge = {"blob": "x" * (limits.MAX_REPORTED_STATUS_BYTES + 1)}
    small = {"ok": "yes"}
    sent = await drain([status("huge", huge), status("small", small)])
    [batch] = sent
    first, second = batch.batch.statuses
    assert not first.manifest_statuses[0].status.fields
    assert "bytes" in first.manifest_statuses[0].health_message
    assert structs.from_struct(second.manifest_statuses[0].status) == small
    assert second.manifest_statuses[0].health_message == ""


def test_a_large_hello_goes_in_parts_within_the_limit() -> None:
    hello = agent_pb2.Hello(
        cluster="c1", agent_version="v", leader_identity="agent-x", leader_epoch=7
    )
    for index in range(50_000):
        hello.held_works.add(name=f"namespace.workload-{index}-deployment", uid="u" * 36)
    messages = agentstream.hello_messages(hello)
    assert len(messages) > 1
    assert all(m.ByteSize() <= limits.MAX_REPORT_BATCH_BYTES + 64 for m in messages)
    first, rest = messages[0].hello, [m.held_works for m in messages[1:]]
    assert first.cluster == "c1" and first.more_held_works
    # The leader's identity and epoch are the first part's, which the fence reads.
    assert (first.leader_identity, first.leader_epoch) == ("agent-x", 7)
    assert [part.more for part in rest] == [True] * (len(rest) - 1) + [False]
    names = [w.name for w in first.held_works] + [w.name for p in rest for w in p.works]
    assert names == [w.name for w in hello.held_works]


def test_a_small_hello_is_one_message() -> None:
    hello = agent_pb2.Hello(cluster="c1")
    hello.held_works.add(name="a", uid="u", generation=2)
    (only,) = agentstream.hello_messages(hello)
    assert only.hello == hello and not only.hello.more_held_works
