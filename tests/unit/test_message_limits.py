"""Message sizes both ways: what each side sends stays within what the other accepts."""

from __future__ import annotations

from typing import Any

import grpc
import pytest

from agent.main import Agent
from archipel import limits


def test_each_side_sends_no_more_than_the_other_accepts() -> None:
    assert limits.MAX_SEND_BYTES <= limits.MAX_AGENT_RECEIVE_BYTES
    assert limits.MAX_AGENT_SEND_BYTES <= limits.MAX_RECEIVE_BYTES
    # What an agent batches, and a List page, leave room under the limits.
    assert limits.MAX_REPORT_BATCH_BYTES < limits.MAX_AGENT_SEND_BYTES
    assert limits.MAX_LIST_PAGE_BYTES + limits.MAX_OBJECT_BYTES < limits.MAX_SEND_BYTES


def _same(data: bytes) -> bytes:
    return data


async def test_an_agent_never_sends_a_message_the_control_plane_would_refuse() -> None:
    # A server that would take anything: the refusal must come from the agent's side.
    server = grpc.aio.server(options=[("grpc.max_receive_message_length", 64 * 1024 * 1024)])

    async def echo(request: bytes, context: Any) -> bytes:
        return b"ok"

    server.add_generic_rpc_handlers(
        [
            grpc.method_handlers_generic_handler(
                "test.Sink", {"Take": grpc.unary_unary_rpc_method_handler(echo)}
            )
        ]
    )
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        agent = Agent(
            server=f"127.0.0.1:{port}",
            token="t",
            cluster="m",
            kube=object(),  # type: ignore[arg-type]
            insecure=True,
        )
        async with agent._channel() as channel:
            take = channel.unary_unary(
                "/test.Sink/Take", request_serializer=_same, response_deserializer=_same
            )
            assert await take(b"x" * limits.MAX_REPORT_BATCH_BYTES) == b"ok"
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await take(b"x" * (limits.MAX_AGENT_SEND_BYTES + 1))
            assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    finally:
        await server.stop(None)
