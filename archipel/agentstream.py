"""The agent side of the stream's outgoing half, shared by the real and simulated agents.

Acknowledgements, status reports and deletions that pile up while the stream is busy
go out as one batch message, bounded by count and by bytes; everything else goes out
as it is, in order.

Every status report is checked on its way out: a reflected status comes from a member
object Archipel does not control, and one too deep or too large would make a message
the control plane cannot decode (or refuses), failing the stream and every report
behind it. Such a status is replaced by an empty one, with a health message saying why.
The control plane checks every report it receives the same way (:func:`bound_report`),
since an agent may be older, buggy or hostile.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from google.protobuf import struct_pb2
from google.protobuf.message import Message

from archipel import limits
from archipel.v1alpha1 import agent_pb2

# What a batch adds per item on top of the item itself: a field tag and a length.
_ITEM_OVERHEAD = 6


def bound_report(report: agent_pb2.WorkStatusReport) -> agent_pb2.WorkStatusReport:
    """``report`` with every reflected status that is too large or too deep emptied,
    and its health message saying why. Changed in place, and returned."""
    for manifest in report.manifest_statuses:
        if not manifest.HasField("status"):
            continue
        size = manifest.status.ByteSize()
        problem = ""
        if size > limits.MAX_REPORTED_STATUS_BYTES:
            problem = (
                f"status not reported: {size} bytes, more than {limits.MAX_REPORTED_STATUS_BYTES}"
            )
        elif struct_depth(manifest.status) > limits.MAX_MANIFEST_DEPTH:
            problem = f"status not reported: nested deeper than {limits.MAX_MANIFEST_DEPTH} levels"
        if problem:
            manifest.ClearField("status")
            manifest.status.SetInParent()  # an empty status, not a missing one
            manifest.health_message = (
                f"{manifest.health_message}; {problem}" if manifest.health_message else problem
            )
    return report


def struct_depth(struct: struct_pb2.Struct) -> int:
    """Levels of nesting of a Struct as JSON (the object itself is level 1), counted
    on the message itself, without recursion, and no further than the limit plus one."""
    deepest = 0
    pending: list[tuple[struct_pb2.Value | struct_pb2.Struct, int]] = [(struct, 1)]
    while pending:
        item, level = pending.pop()
        if level > deepest:
            deepest = level
            if deepest > limits.MAX_MANIFEST_DEPTH:
                return deepest
        if isinstance(item, struct_pb2.Struct):
            pending.extend((child, level + 1) for child in item.fields.values())
            continue
        which = item.WhichOneof("kind")
        if which == "struct_value":
            pending.extend((child, level + 1) for child in item.struct_value.fields.values())
        elif which == "list_value":
            pending.extend((child, level + 1) for child in item.list_value.values)
    return deepest


def _bounded(message: agent_pb2.AgentMessage) -> agent_pb2.AgentMessage:
    which = message.WhichOneof("message")
    if which == "status":
        bound_report(message.status)
    elif which == "batch":
        for status in message.batch.statuses:
            bound_report(status)
    return message


def _size(message: agent_pb2.AgentMessage) -> int:
    """What ``message`` adds to a batch, in bytes (nothing if it goes out alone)."""
    which = message.WhichOneof("message")
    if which == "batch":
        return message.batch.ByteSize()
    if which in ("ack", "status", "deleted"):
        inner: Message = getattr(message, which)
        return inner.ByteSize() + _ITEM_OVERHEAD
    return 0


def hello_messages(
    hello: agent_pb2.Hello, *, max_bytes: int = limits.MAX_REPORT_BATCH_BYTES
) -> list[agent_pb2.AgentMessage]:
    """The hello, and as many HeldWorks messages after it as keep each within
    ``max_bytes``: a member may hold more works than one message can name."""
    held = list(hello.held_works)
    # Everything the hello says but its held works (the leader's identity and epoch too).
    first = agent_pb2.Hello()
    first.CopyFrom(hello)
    first.ClearField("held_works")
    chunks: list[list[agent_pb2.HeldWork]] = [[]]
    size = 0
    for work in held:
        work_size = work.ByteSize() + _ITEM_OVERHEAD
        if chunks[-1] and size + work_size > max_bytes:
            chunks.append([])
            size = 0
        chunks[-1].append(work)
        size += work_size
    first.held_works.extend(chunks[0])
    first.more_held_works = len(chunks) > 1
    messages = [agent_pb2.AgentMessage(hello=first)]
    for index, chunk in enumerate(chunks[1:], start=2):
        messages.append(
            agent_pb2.AgentMessage(
                held_works=agent_pb2.HeldWorks(works=chunk, more=index < len(chunks))
            )
        )
    return messages


async def outgoing(
    hello: agent_pb2.Hello,
    outbox: asyncio.Queue[agent_pb2.AgentMessage],
    *,
    limit: int = 200,
    max_bytes: int = limits.MAX_REPORT_BATCH_BYTES,
) -> AsyncIterator[agent_pb2.AgentMessage]:
    """The hello, then whatever is put into ``outbox``, batched when it piles up.

    A batch holds at most ``limit`` messages and, unless one message alone is larger,
    at most ``max_bytes``; what does not fit goes into the next one.
    """
    for message in hello_messages(hello, max_bytes=max_bytes):
        yield message
    carried: agent_pb2.AgentMessage | None = None
    while True:
        if carried is not None:
            message, carried = carried, None
        else:
            message = _bounded(await outbox.get())
        if outbox.empty():
            yield message
            continue
        pending = [message]
        size = _size(message)
        while not outbox.empty() and len(pending) < limit:
            item = _bounded(outbox.get_nowait())
            item_size = _size(item)
            if size + item_size > max_bytes:
                carried = item  # the first of the next batch
                break
            pending.append(item)
            size += item_size
        batch = agent_pb2.AgentBatch()
        for item in pending:
            which = item.WhichOneof("message")
            if which == "ack":
                batch.acks.append(item.ack)
            elif which == "status":
                batch.statuses.append(item.status)
            elif which == "deleted":
                batch.deleted.append(item.deleted)
            elif which == "batch":
                batch.MergeFrom(item.batch)
            else:
                yield item
        if batch.acks or batch.statuses or batch.deleted:
            yield agent_pb2.AgentMessage(batch=batch)
