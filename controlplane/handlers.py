"""gRPC method handlers shaped like others: what interceptors answer with.

An interceptor that refuses a call, or wraps its servicer, must hand back a handler of
the same streaming shape and codecs as the one it replaces, or gRPC would decode the
request differently. The authentication, audit and rate-limit interceptors all build
theirs here.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import grpc

Behavior = Callable[..., Any]


def same_shape(
    handler: grpc.RpcMethodHandler[Any, Any], unary: Behavior, streaming: Behavior
) -> grpc.RpcMethodHandler[Any, Any]:
    """A handler like ``handler`` (same streaming shape and codecs) running ``unary`` or
    ``streaming``, whichever its shape answers with."""
    if handler.request_streaming and handler.response_streaming:
        factory: Callable[..., grpc.RpcMethodHandler[Any, Any]] = (
            grpc.stream_stream_rpc_method_handler
        )
    elif handler.request_streaming:
        factory = grpc.stream_unary_rpc_method_handler
    elif handler.response_streaming:
        factory = grpc.unary_stream_rpc_method_handler
    else:
        factory = grpc.unary_unary_rpc_method_handler
    return factory(
        streaming if handler.response_streaming else unary,
        request_deserializer=handler.request_deserializer,
        response_serializer=handler.response_serializer,
    )


def refusing(
    handler: grpc.RpcMethodHandler[Any, Any],
    code: grpc.StatusCode,
    message: str,
    *,
    trailing_metadata: tuple[tuple[str, str], ...] = (),
    before: Callable[[Any, grpc.aio.ServicerContext[Any, Any]], None] | None = None,
) -> grpc.RpcMethodHandler[Any, Any]:
    """A handler of ``handler``'s shape that only answers ``code`` with ``message``;
    ``before`` sees the request and context first (to audit the refusal)."""

    async def refuse(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> None:
        if before is not None:
            before(request, context)
        await context.abort(code, message, trailing_metadata=trailing_metadata)

    return same_shape(handler, refuse, refuse)
