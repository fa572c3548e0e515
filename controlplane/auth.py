"""Who is calling, whether they may, and the audit record of what they did.

* Callers authenticate with ``authorization: Bearer <token>``: the admin token (in a
  file the operator controls; the server keeps only its hash), or a user's token
  (:mod:`controlplane.users`), each giving an :class:`~archipel.core.roles.Identity`.
* :func:`archipel.core.roles.decide` allows or refuses the RPC from its name alone;
  the servicers then hold the identity to the request's namespace and to Secrets
  (:func:`check_namespace`, :func:`reading_secrets`), through the call's context.
* An agent's credential (its cluster's token, or its client certificate) opens its own
  cluster's agent stream and nothing else: the stream authenticates itself, and the
  credential of a cluster on any other call is PERMISSION_DENIED.
* Health checks, server reflection (so grpcurl can list and describe) and agent
  registration (which checks its bootstrap token itself) are open.
* Every mutating call and every read of Secrets is written to the audit log
  (:mod:`controlplane.audit`) with its outcome, refusals included.
"""

from __future__ import annotations

import asyncio
import contextvars
import dataclasses
import hashlib
import os
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import grpc
from google.protobuf import descriptor_pool, message_factory
from google.protobuf.message import DecodeError

from archipel import structs
from archipel.core import roles
from archipel.core.errors import ArchipelError, PermissionDenied, Unauthenticated
from archipel.core.roles import Identity, Role
from archipel.v1alpha2 import access_pb2
from controlplane import handlers
from controlplane.audit import AuditLog
from controlplane.ratelimit import RateLimitInterceptor, identity_key
from controlplane.users import UserDirectory

OPEN_PREFIXES = (
    "/grpc.health.v1.Health/",
    "/grpc.reflection.v1alpha.ServerReflection/",
    "/grpc.reflection.v1.ServerReflection/",
    # An agent that registers has no identity yet; its bootstrap token is checked by
    # the registration service itself.
    "/archipel.v1alpha2.RegistrationService/",
)
AGENT_PREFIX = "/archipel.v1alpha1.AgentService/"

ADMIN = Identity("admin", Role.ADMIN)


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


# -- the call under way --------------------------------------------------------------


@dataclasses.dataclass
class Call:
    """One authorized call: who makes it, and what the servicer found it is about."""

    identity: Identity
    method: str
    kind: str = ""
    namespace: str = ""
    name: str = ""
    reads_secrets: bool = False


_CALL: contextvars.ContextVar[Call | None] = contextvars.ContextVar("archipel_call", default=None)


def current_call() -> Call:
    """The call being served. Fails closed: code reached without an authorized call
    (a path the interceptor did not wrap) may do nothing."""
    call = _CALL.get()
    if call is None:
        raise PermissionDenied("no authenticated caller")
    return call


def caller() -> Identity:
    return current_call().identity


def describe(*, kind: str = "", namespace: str = "", name: str = "") -> None:
    """Say what the call is about, for the audit log."""
    call = _CALL.get()
    if call is not None:
        call.kind = kind or call.kind
        call.namespace = namespace or call.namespace
        call.name = name or call.name


def check_namespace(namespace: str, *, namespaced: bool, write: bool) -> None:
    caller().check_namespace(namespace, namespaced=namespaced, write=write)


def may_read_secrets() -> bool:
    return caller().may_read_secrets()


def reading_secrets(what: str = "Secrets") -> None:
    """The call reads Secrets: refused unless the caller may, and audited either way."""
    call = current_call()
    call.reads_secrets = True
    call.identity.check_secrets(what)


# -- the interceptor -----------------------------------------------------------------


class AuthInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[type-arg]
    def __init__(
        self,
        *,
        admin_token: str,
        users: UserDirectory,
        authenticate_cluster: Callable[[str], Awaitable[str]],
        audit: AuditLog,
        limiter: RateLimitInterceptor | None = None,
    ) -> None:
        self._admin_hash = hashlib.sha256(admin_token.encode()).digest()
        self._users = users
        self._authenticate_cluster = authenticate_cluster
        self._audit = audit
        self._limiter = limiter

    def is_admin(self, token: str) -> bool:
        return secrets.compare_digest(hashlib.sha256(token.encode()).digest(), self._admin_hash)

    async def authenticate(self, token: str | None) -> Identity:
        if token is None:
            raise Unauthenticated("missing credentials: send 'authorization: Bearer <token>'")
        if self.is_admin(token):
            return ADMIN
        if self._users.is_user_token(token):
            return await self._users.authenticate(token)
        try:
            cluster = await self._authenticate_cluster(token)
        except Unauthenticated:
            raise Unauthenticated("invalid credentials") from None
        raise PermissionDenied(
            f"the credential of cluster {cluster} may only open the agent stream"
        )

    async def intercept_service(
        self,
        continuation: Callable[
            [grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any]]
        ],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any]:
        handler = await continuation(handler_call_details)
        method: str = handler_call_details.method
        if handler is None:
            return handler
        if method.startswith(OPEN_PREFIXES) or method.startswith(AGENT_PREFIX):
            # The agent stream authenticates itself: it needs to know which cluster.
            # These are limited by their bearer token (an agent's) or as anonymous.
            if self._limiter is None:
                return handler
            key = identity_key(handler_call_details.invocation_metadata)
            return self._limiter.check(key, method, handler)
        try:
            identity = await self.authenticate(
                bearer_token(handler_call_details.invocation_metadata)
            )
        except ArchipelError as error:
            return self._refusing(handler, Call(Identity("", Role.VIEWER), method), error)
        decision = roles.decide(identity, method)
        if not decision.allowed:
            return self._refusing(
                handler, Call(identity, method), PermissionDenied(decision.reason)
            )
        if self._limiter is not None:
            # A refusal (RESOURCE_EXHAUSTED) is served, and audited, like any answer.
            handler = self._limiter.check(f"user:{identity.name}", method, handler)
        return self._serving(handler, identity, method)

    # -- audit ---------------------------------------------------------------------------

    def _record(self, call: Call, peer: str, code: str) -> None:
        _, verb = roles.split_method(call.method)
        if not (roles.is_mutating(verb) or call.reads_secrets):
            return
        self._audit.record(
            access_pb2.AuditEvent(
                identity=call.identity.name,
                role=call.identity.role.value if call.identity.name else "",
                method=call.method,
                verb=verb,
                kind=call.kind,
                namespace=call.namespace,
                name=call.name,
                code=code,
                peer=peer,
            )
        )

    @staticmethod
    def _failure(context: grpc.aio.ServicerContext[Any, Any], error: BaseException) -> str:
        """The code a call that raised ``error`` ends with. A call the client cancelled
        (or whose deadline passed) is over: its context must not be asked anything more,
        gRPC's C core has freed it."""
        if isinstance(error, (asyncio.CancelledError, GeneratorExit)):
            return "CANCELLED"
        code = context.code()
        # An abort sets the code; an exception that escaped the servicer did not.
        return code.name if isinstance(code, grpc.StatusCode) else "UNKNOWN"

    # -- handlers ------------------------------------------------------------------------

    def _refusing(
        self, handler: grpc.RpcMethodHandler[Any, Any], call: Call, error: ArchipelError
    ) -> grpc.RpcMethodHandler[Any, Any]:
        def record(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> None:
            call.kind, call.namespace, call.name = _what(call.method, request)
            self._record(call, context.peer(), error.code.name)

        return handlers.refusing(handler, error.code, str(error), before=record)

    def _serving(
        self, handler: grpc.RpcMethodHandler[Any, Any], identity: Identity, method: str
    ) -> grpc.RpcMethodHandler[Any, Any]:
        unary: handlers.Behavior | None = handler.unary_unary or handler.stream_unary
        streaming: handlers.Behavior | None = handler.unary_stream or handler.stream_stream

        async def serve_unary(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
            call = Call(identity, method)
            peer = context.peer()
            token = _CALL.set(call)
            try:
                assert unary is not None
                answer = await unary(request, context)
            except BaseException as error:
                self._record(call, peer, self._failure(context, error))
                raise
            finally:
                _CALL.reset(token)
            self._record(call, peer, "OK")
            return answer

        async def serve_stream(
            request: Any, context: grpc.aio.ServicerContext[Any, Any]
        ) -> AsyncIterator[Any]:
            # Each RPC is served in its own task, so the call stays in its context.
            call = Call(identity, method)
            peer = context.peer()
            _CALL.set(call)
            try:
                assert streaming is not None
                async for item in streaming(request, context):
                    yield item
            except BaseException as error:
                self._record(call, peer, self._failure(context, error))
                raise
            self._record(call, peer, "OK")

        return handlers.same_shape(handler, serve_unary, serve_stream)


def _what(method: str, request: Any) -> tuple[str, str, str]:
    """(kind, namespace, name) of a refused request, as far as it can be read: the audit
    log says what someone tried to change, not only that they tried."""
    if not isinstance(request, bytes):
        return "", "", ""
    service_name, _, method_name = method.lstrip("/").partition("/")
    try:
        service = descriptor_pool.Default().FindServiceByName(service_name)
        request_type = message_factory.GetMessageClass(
            service.methods_by_name[method_name].input_type
        )
        message = request_type.FromString(request)
    except (KeyError, DecodeError):
        return "", "", ""
    fields = message.DESCRIPTOR.fields_by_name
    target: Any = getattr(message, "object") if "object" in fields else message  # noqa: B009
    kind = service.name.removesuffix("Service")
    if "manifest" in target.DESCRIPTOR.fields_by_name:  # a resource template
        manifest = structs.from_struct(target.manifest)
        metadata = manifest.get("metadata")
        metadata = metadata if isinstance(metadata, dict) else {}
        return (
            str(manifest.get("kind", "")),
            str(metadata.get("namespace", "")),
            str(metadata.get("name", "")),
        )
    if "metadata" in target.DESCRIPTOR.fields_by_name:
        return kind, target.metadata.namespace, target.metadata.name
    return (
        str(getattr(message, "kind", "")) or kind,
        str(getattr(message, "namespace", "")),
        str(getattr(message, "name", "")),
    )
