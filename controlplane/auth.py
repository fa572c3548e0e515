"""Who may call what.

* Admin calls need the admin credential: ``authorization: Bearer <admin token>``.
  The token lives in a file the operator controls; the server keeps only its hash.
* Agents authenticate with their cluster's token on the agent stream, and only there;
  a cluster token on an admin call is PERMISSION_DENIED, an unknown one
  UNAUTHENTICATED.
* Health checks and server reflection are open, so grpcurl can list and describe.
"""

from __future__ import annotations

import hashlib
import os
import secrets
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import grpc

from archipel.core.errors import Unauthenticated

OPEN_PREFIXES = (
    "/grpc.health.v1.Health/",
    "/grpc.reflection.v1alpha.ServerReflection/",
    "/grpc.reflection.v1.ServerReflection/",
    # Agents registering: the bootstrap token in the request is checked by the
    # service itself (controlplane/registration.py).
    "/archipel.v1alpha2.RegistrationService/",
)
AGENT_PREFIX = "/archipel.v1alpha1.AgentService/"


def load_or_create_admin_token(path: Path) -> str:
    """The admin token from ``path``; a new random one is written there if it is missing."""
    if path.exists():
        token = path.read_text().strip()
        if not token:
            raise ValueError(f"{path}: empty admin token file")
        return token
    path.parent.mkdir(parents=True, exist_ok=True)
    token = "admin." + secrets.token_urlsafe(32)
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "w") as handle:
        handle.write(token + "\n")
    return token


def bearer_token(metadata: Sequence[tuple[str, str | bytes]] | None) -> str | None:
    for key, value in metadata or ():
        if key.lower() == "authorization":
            text = value.decode() if isinstance(value, bytes) else value
            scheme, _, token = text.partition(" ")
            if scheme.lower() == "bearer" and token.strip():
                return token.strip()
    return None


def _rejecting(
    handler: grpc.RpcMethodHandler[Any, Any], code: grpc.StatusCode, message: str
) -> grpc.RpcMethodHandler[Any, Any]:
    async def abort(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> None:
        await context.abort(code, message)

    if handler.request_streaming and handler.response_streaming:
        factory = grpc.stream_stream_rpc_method_handler
    elif handler.request_streaming:
        factory = grpc.stream_unary_rpc_method_handler
    elif handler.response_streaming:
        factory = grpc.unary_stream_rpc_method_handler
    else:
        factory = grpc.unary_unary_rpc_method_handler
    rejecting: grpc.RpcMethodHandler[Any, Any] = factory(
        abort,
        request_deserializer=handler.request_deserializer,
        response_serializer=handler.response_serializer,
    )
    return rejecting


class AuthInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[type-arg]
    def __init__(
        self, *, admin_token: str, authenticate_cluster: Callable[[str], Awaitable[str]]
    ) -> None:
        self._admin_hash = hashlib.sha256(admin_token.encode()).digest()
        self._authenticate_cluster = authenticate_cluster

    def is_admin(self, token: str) -> bool:
        return secrets.compare_digest(hashlib.sha256(token.encode()).digest(), self._admin_hash)

    async def intercept_service(
        self,
        continuation: Callable[
            [grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any]]
        ],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any]:
        handler = await continuation(handler_call_details)
        method: str = handler_call_details.method
        if handler is None or method.startswith(OPEN_PREFIXES) or method.startswith(AGENT_PREFIX):
            # The agent stream authenticates itself: it needs to know which cluster.
            return handler
        token = bearer_token(handler_call_details.invocation_metadata)
        if token is None:
            return _rejecting(
                handler,
                grpc.StatusCode.UNAUTHENTICATED,
                "missing credentials: send 'authorization: Bearer <admin token>'",
            )
        if self.is_admin(token):
            return handler
        try:
            cluster = await self._authenticate_cluster(token)
        except Unauthenticated:
            return _rejecting(handler, grpc.StatusCode.UNAUTHENTICATED, "invalid credentials")
        return _rejecting(
            handler,
            grpc.StatusCode.PERMISSION_DENIED,
            f"the credential of cluster {cluster} may only open the agent stream",
        )
