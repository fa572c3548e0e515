"""The agent side of the stream's outgoing half, shared by the real and simulated agents.

Acknowledgements, status reports and deletions that pile up while the stream is busy
go out as one batch message; everything else goes out as it is, in order.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from archipel.v1alpha1 import agent_pb2


async def outgoing(
    hello: agent_pb2.Hello, outbox: asyncio.Queue[agent_pb2.AgentMessage], *, limit: int = 200
) -> AsyncIterator[agent_pb2.AgentMessage]:
    """The hello, then whatever is put into ``outbox``, batched when it piles up."""
    yield agent_pb2.AgentMessage(hello=hello)
    while True:
        message = await outbox.get()
        if outbox.empty():
            yield message
            continue
        pending = [message]
        while not outbox.empty() and len(pending) < limit:
            pending.append(outbox.get_nowait())
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
