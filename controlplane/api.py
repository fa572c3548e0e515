"""The gRPC servicers: validate, convert at the edge, delegate to the store.

Every kind gets the same five calls (Get, List, Watch, Apply, Delete) from one
implementation, :class:`KindService`; resource templates, addressed by apiVersion and
kind as well, get :class:`TemplateService`. Errors from below are
:mod:`archipel.core.errors`, turned into gRPC status codes in exactly one place,
:func:`_guard` / :func:`_guard_stream`.

Two versions of the administration API are served from the same servicers: each
servicer is built for one :class:`ApiVersion`, which says how that version's messages
carry objects and event types. The objects themselves are the same in both.
"""

from __future__ import annotations

import dataclasses
import functools
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, Generic, NoReturn, TypeVar

import grpc
from google.protobuf import descriptor as pb_descriptor
from google.protobuf import message as pb_message
from google.protobuf import message_factory
from tenacity import AsyncRetrying, retry_if_exception_type, stop_after_attempt, wait_random

from archipel import interpreter, limits, structs
from archipel.core import kinds, scopes, selectors, validation
from archipel.core.errors import (
    ArchipelError,
    Conflict,
    Corrupt,
    Expired,
    FailedPrecondition,
    Invalid,
)
from archipel.core.kinds import Kind, Manifest
from archipel.core.names import DELETION_PROTECTION_LABELS
from archipel.core.scopes import KindScopes
from archipel.v1alpha1 import (
    cluster_pb2,
    interpreter_pb2,
    override_pb2,
    policy_pb2,
    work_pb2,
)
from archipel.v1alpha1 import service_pb2 as v1alpha1_pb2
from archipel.v1alpha2 import service_pb2 as v1alpha2_pb2
from archipel.v1alpha2 import storage_pb2
from archipel.version import VERSION
from controlplane import auth, encryption, memory
from controlplane.controllers.cluster import ClusterController
from controlplane.etcd import Compacted, Etcd
from controlplane.informers import Informer
from controlplane.store import Store, decode, report_corrupt

T = TypeVar("T", bound=pb_message.Message)
M = TypeVar("M", bound=pb_message.Message)
R = TypeVar("R")


@dataclasses.dataclass(frozen=True)
class ApiVersion:
    """One version of the administration API, as its servicers need to know it."""

    name: str
    file: pb_descriptor.FileDescriptor
    # v1alpha1 takes the object itself in Apply and answers Get and Apply with it;
    # later versions carry it in the request's and response's ``object`` field.
    wraps_objects: bool
    # The wire value of a watch event's type ("ADDED", "MODIFIED", "DELETED").
    event_type: Callable[[str], Any]

    def service(self, name: str) -> pb_descriptor.ServiceDescriptor:
        return self.file.services_by_name[name]

    def serves(self, kind: Kind[Any]) -> bool:
        """Whether this version declares a service for ``kind`` (kinds added after a
        version was frozen are served by the later versions only)."""
        return kind.service in self.file.services_by_name

    def responses(self, service_name: str) -> dict[str, Any]:
        """Each method's response class, by method name."""
        return {
            method.name: message_factory.GetMessageClass(method.output_type)
            for method in self.service(service_name).methods
        }


V1ALPHA1 = ApiVersion("v1alpha1", v1alpha1_pb2.DESCRIPTOR, wraps_objects=False, event_type=str)
V1ALPHA2 = ApiVersion(
    "v1alpha2",
    v1alpha2_pb2.DESCRIPTOR,
    wraps_objects=True,
    event_type=lambda name: v1alpha2_pb2.EventType.Value(f"EVENT_TYPE_{name}"),
)
# Every version served, the preferred first.
API_VERSIONS = (V1ALPHA2, V1ALPHA1)


def status_message(text: str) -> str:
    """A status message cut to what gRPC trailers carry (see ``MAX_STATUS_MESSAGE_BYTES``).

    Validation already quotes values through :func:`limits.echo`; this is the last
    line of defence for any message that still grew too long.
    """
    raw = text.encode()
    if len(raw) <= limits.MAX_STATUS_MESSAGE_BYTES:
        return text
    kept = raw[: limits.MAX_STATUS_MESSAGE_BYTES - 64].decode(errors="ignore")
    return f"{kept}... (message cut from {len(raw)} bytes)"


async def _abort(context: grpc.aio.ServicerContext[Any, Any], error: ArchipelError) -> NoReturn:
    """The one place an error becomes a gRPC status."""
    code, message = error.code, status_message(str(error))
    # gRPC keeps the exception that ends a call for a while; with its traceback would
    # go every frame's locals (the whole refused request, megabytes of it), so the
    # error goes before the call ends.
    error.__traceback__ = error.__cause__ = error.__context__ = None
    del error
    await context.abort(code, message)
    raise AssertionError("unreachable: abort raises")


def _guard(
    method: Callable[..., Awaitable[R]],
) -> Callable[..., Awaitable[R]]:
    @functools.wraps(method)
    async def wrapper(self: Any, request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> R:
        try:
            return await method(self, request, context)
        except ArchipelError as error:
            await _abort(context, error)

    return wrapper


# For servicers outside this module (controlplane/registration.py): the same mapping.
guarded = _guard


def _guard_stream(
    method: Callable[..., AsyncIterator[R]],
) -> Callable[..., AsyncIterator[R]]:
    @functools.wraps(method)
    async def wrapper(
        self: Any, request: Any, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[R]:
        try:
            async for item in method(self, request, context):
                yield item
        except ArchipelError as error:
            await _abort(context, error)

    return wrapper


# -- decoding requests -----------------------------------------------------------------
#
# gRPC's generated handlers decode requests before any servicer code runs, and answer
# UNKNOWN or INTERNAL when that fails. The handlers below receive the raw bytes and
# decode them here, so a request that is not valid protobuf (or holds invalid UTF-8)
# gets INVALID_ARGUMENT naming the field.


def _varint(data: bytes, position: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if position >= len(data) or shift > 63:
            raise ValueError("truncated varint")
        byte = data[position]
        position += 1
        result |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            return result, position


def undecodable_field(descriptor: Any, data: bytes) -> str:
    """The path of the first field that makes ``data`` undecodable, or ``""``.

    A best-effort walk of the wire format, for the error message only; without
    recursion, so a deeply nested request cannot exhaust the stack.
    """
    pending: list[tuple[Any, bytes, str]] = [(descriptor, data, "")]
    while pending:
        message, buffer, path = pending.pop()
        position = 0
        while position < len(buffer):
            where = path
            try:
                tag, position = _varint(buffer, position)
                number, wire_type = tag >> 3, tag & 7
                field = message.fields_by_number.get(number) if message else None
                name = field.json_name if field is not None else f"#{number}"
                where = f"{path}.{name}" if path else name
                if number == 0:
                    return where
                if wire_type == 0:
                    _, position = _varint(buffer, position)
                elif wire_type in (1, 5):
                    position += 8 if wire_type == 1 else 4
                elif wire_type == 2:
                    length, position = _varint(buffer, position)
                    chunk = buffer[position : position + length]
                    position += length
                    if len(chunk) < length:
                        return where
                    if field is not None and field.type == field.TYPE_STRING:
                        chunk.decode()
                    elif field is not None and field.type == field.TYPE_MESSAGE:
                        pending.append((field.message_type, chunk, where))
                else:
                    return where
            except (ValueError, UnicodeDecodeError):
                return where
            if position > len(buffer):
                return where
    return ""


def _bulk_field(descriptor: Any) -> str:
    """Where the bulk of an oversized request is: the template's manifest, or the object."""
    fields = descriptor.fields_by_name
    if "manifest" in fields:
        return "manifest"  # v1alpha1's template Apply: the template itself
    if "object" in fields:
        inner = fields["object"].message_type.fields_by_name
        return "object.manifest" if "manifest" in inner else "object"
    return "request"


def decode_request(
    message_type: type[M], data: bytes, *, max_bytes: int = limits.MAX_REQUEST_BYTES
) -> M:
    """Decode a request; bytes that are not a ``message_type`` are :class:`Invalid`.

    A request larger than ``max_bytes`` (by default, than any acceptable object) is
    refused before it is decoded: turning megabytes of protobuf into Python objects
    only to refuse them costs memory that the allocator does not hand back.
    """
    memory.after_large_request(len(data))
    if len(data) > max_bytes:
        raise Invalid(
            _bulk_field(message_type.DESCRIPTOR),
            f"{len(data)} bytes, over the limit of {max_bytes} bytes for one "
            f"request (objects may have {limits.MAX_OBJECT_BYTES} bytes)",
        )
    try:
        return message_type.FromString(data)
    except pb_message.DecodeError as error:
        descriptor = message_type.DESCRIPTOR
        field = undecodable_field(descriptor, data) or "request"
        reason = str(error).rpartition(": ")[2] or "malformed"
        raise Invalid(
            field, f"cannot decode the {descriptor.full_name} request: {reason}"
        ) from error


async def _decoded(
    request_type: type[M], data: bytes, context: grpc.aio.ServicerContext[Any, Any]
) -> M:
    try:
        return decode_request(request_type, data)
    except Invalid as error:
        await _abort(context, error)


def _unary_handler(
    method: Callable[..., Awaitable[Any]], request_type: type[pb_message.Message]
) -> grpc.RpcMethodHandler[bytes, pb_message.Message]:
    async def handle(data: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        return await method(await _decoded(request_type, data, context), context)

    return grpc.unary_unary_rpc_method_handler(handle, response_serializer=_serialize)


def _stream_handler(
    method: Callable[..., AsyncIterator[Any]], request_type: type[pb_message.Message]
) -> grpc.RpcMethodHandler[bytes, pb_message.Message]:
    async def handle(data: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        async for item in method(await _decoded(request_type, data, context), context):
            yield item

    return grpc.unary_stream_rpc_method_handler(handle, response_serializer=_serialize)


def _serialize(message: pb_message.Message) -> bytes:
    return message.SerializeToString()


def service_handler(
    service: pb_descriptor.ServiceDescriptor, servicer: object
) -> grpc.GenericRpcHandler[Any, Any]:
    """The handler of one service of the API, decoding requests itself.

    ``servicer`` has one coroutine (or async generator, for streams) per method.
    """
    handlers: dict[str, grpc.RpcMethodHandler[Any, Any]] = {}
    for method in service.methods:
        if method.client_streaming:
            raise TypeError(
                f"{service.full_name}.{method.name}: client streams are not served here"
            )
        request_type = message_factory.GetMessageClass(method.input_type)
        implementation = getattr(servicer, method.name)
        if method.server_streaming:
            handlers[method.name] = _stream_handler(implementation, request_type)
        else:
            handlers[method.name] = _unary_handler(implementation, request_type)
    return grpc.method_handlers_generic_handler(service.full_name, handlers)


def _label_filter(text: str) -> selectors.Selector:
    return selectors.parse(text, field="labelSelector")


async def watch_events(
    store: Store,
    kind: Kind[Any],
    prefix: str,
    *,
    resource_version: str,
    matches: Callable[[Any], bool],
) -> AsyncIterator[tuple[str, Any, str]]:
    """(type, object, resourceVersion) for a Watch call, Kubernetes-style."""
    if resource_version:
        start = parse_resource_version(resource_version) + 1
    else:
        # The initial state comes in pages, all at the first page's revision.
        token, revision = "", 0
        while True:
            items, token, at = await store.list(kind, prefix, continue_token=token)
            revision = revision or at
            for obj in items:
                if matches(obj):
                    yield "ADDED", obj, kind.meta(obj).resource_version
            if not token:
                break
        start = revision + 1
    try:
        async for events in store.etcd.watch(prefix, start_revision=start, previous=True):
            for event in events:
                try:
                    obj = decode(kind, event.key, event.value, event.mod_revision)
                except Corrupt as error:
                    report_corrupt(error, event.mod_revision)
                    continue
                if not matches(obj):
                    continue
                if event.type == "DELETE":
                    yield "DELETED", obj, str(event.mod_revision)
                else:
                    yield ("ADDED" if event.created else "MODIFIED"), obj, str(event.mod_revision)
    except Compacted as error:
        # Kubernetes' 410 Gone: the history is gone, the caller must list again.
        raise Expired(
            f"resourceVersion: {limits.echo(resource_version)} is too old ({error}); list again"
        ) from error


# etcd revisions are positive int64s; "0" asks for whatever comes next.
_RESOURCE_VERSION = re.compile(r"^(0|[1-9][0-9]{0,18})$")


def parse_resource_version(text: str, field: str = "resourceVersion") -> int:
    """A resourceVersion a caller sent, as the revision it names."""
    if not _RESOURCE_VERSION.match(text) or int(text) >= 2**63 - 1:
        raise Invalid(
            field, f"{limits.echo(text)} is not a resourceVersion (a non-negative integer)"
        )
    return int(text)


def _namespace(request: Any) -> str:
    # v1alpha2's requests for cluster-scoped kinds have no namespace field at all.
    namespace: str = getattr(request, "namespace", "")
    return namespace


class KindService(Generic[T]):
    """Get, List, Watch, Apply and Delete for one protobuf kind, in one API version."""

    def __init__(
        self,
        store: Store,
        kind: Kind[T],
        api: ApiVersion,
        *,
        validate: Callable[[T], None],
    ) -> None:
        self.store = store
        self.kind = kind
        self.api = api
        self.responses = api.responses(kind.service)
        self.validate = validate

    def _reply(self, method: str, obj: T) -> Any:
        return self.responses[method](object=obj) if self.api.wraps_objects else obj

    def _check_namespace(self, namespace: str) -> None:
        """The namespace of a List or Watch: empty means every namespace."""
        if not namespace:
            return
        if not self.kind.namespaced:
            raise Invalid("namespace", f"must be empty: {self.kind.name} is cluster-scoped")
        validation.check_dns_label(namespace, "namespace")

    def _key(self, namespace: str, name: str) -> str:
        # Bindings and works are named after templates, whose names may be RBAC-style
        # (system:...), and works after their binding: <namespace or _>.<binding>.
        if self.kind is kinds.PROPAGATION_WORK:
            validation.check_work_name(name, "name")
        elif self.kind is kinds.PROPAGATION_BINDING:
            validation.check_object_name(name, "name")
        else:
            validation.check_name(name, "name")
        if self.kind is kinds.PROPAGATION_BINDING and not namespace:
            # The binding of a cluster-scoped template (a Namespace, a ClusterRole) has
            # no namespace, as Karmada's ClusterResourceBinding has none.
            return self.kind.key("", name)
        if self.kind.namespaced:
            validation.check_dns_label(namespace, "namespace")
        elif namespace:
            raise Invalid("namespace", f"must be empty: {self.kind.name} is cluster-scoped")
        return self.kind.key(namespace, name)

    def _reach(self, namespace: str, name: str = "", *, write: bool) -> None:
        """Hold the caller to its namespaces, and say what the call is about."""
        auth.describe(kind=self.kind.name, namespace=namespace, name=name)
        auth.check_namespace(namespace, namespaced=self.kind.namespaced, write=write)
        if self.kind is kinds.PROPAGATION_WORK and not write:
            auth.reading_secrets("works (they carry the rendered Secrets)")

    @_guard
    async def Get(self, request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        self._reach(_namespace(request), request.name, write=False)
        key = self._key(_namespace(request), request.name)
        return self._reply("Get", await self.store.must_get(self.kind, key))

    @_guard
    async def List(
        self, request: Any, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb_message.Message:
        if request.limit < 0:
            raise Invalid("limit", "must not be negative")
        namespace = _namespace(request)
        self._check_namespace(namespace)
        self._reach(namespace, write=False)
        selector = _label_filter(request.label_selector)
        items, token, revision = await self.store.list(
            self.kind,
            self.kind.prefix(namespace),
            limit=limits.page_size(request.limit),
            continue_token=getattr(request, "continue"),
            keep=lambda obj: selector.matches(self.kind.meta(obj).labels),
        )
        response = self.responses["List"](resource_version=str(revision))
        response.items.extend(items)
        setattr(response, "continue", token)
        return response  # type: ignore[no-any-return]

    @_guard_stream
    async def Watch(
        self, request: Any, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[pb_message.Message]:
        namespace = _namespace(request)
        self._check_namespace(namespace)
        self._reach(namespace, write=False)
        selector = _label_filter(request.label_selector)
        event = self.responses["Watch"]
        async for type_, obj, revision in watch_events(
            self.store,
            self.kind,
            self.kind.prefix(namespace),
            resource_version=request.resource_version,
            matches=lambda o: selector.matches(self.kind.meta(o).labels),
        ):
            yield event(type=self.api.event_type(type_), object=obj, resource_version=revision)

    @_guard
    async def Apply(self, request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        wanted: T = request.object if self.api.wraps_objects else request
        # Size and depth first: everything after walks the object.
        validation.check_message(wanted, self.kind.name)
        obj = self.kind.copy(wanted)
        api_version: str = obj.api_version  # type: ignore[attr-defined]
        if api_version and api_version not in self.kind.accepted_api_versions:
            raise Invalid(
                "apiVersion",
                f"{self.kind.name} must be {' or '.join(self.kind.accepted_api_versions)}, "
                f"not {limits.echo(api_version)}",
            )
        if obj.kind and obj.kind != self.kind.name:  # type: ignore[attr-defined]
            raise Invalid("kind", f"must be {self.kind.name}, not {limits.echo(obj.kind)}")  # type: ignore[attr-defined]
        obj.api_version = self.kind.api_version  # type: ignore[attr-defined]
        obj.kind = self.kind.name  # type: ignore[attr-defined]
        self._reach(self.kind.meta(obj).namespace, self.kind.meta(obj).name, write=True)
        # Identity, history and deletion are the store's, whatever the caller sent.
        metadata = obj.metadata  # type: ignore[attr-defined]
        for field in ("uid", "generation", "creation_timestamp", "deletion_timestamp"):
            metadata.ClearField(field)
        self.validate(obj)
        applied = await _unless_named(
            obj_version(self.kind, obj), lambda: apply(self.store, self.kind, self.kind.copy(obj))
        )
        return self._reply("Apply", applied)

    @_guard
    async def Delete(self, request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        self._reach(_namespace(request), request.name, write=True)
        deleted = await self.store.delete(
            self.kind,
            self._key(_namespace(request), request.name),
            resource_version=request.resource_version,
        )
        return self.responses["Delete"](deleted=deleted)


U = TypeVar("U")


def obj_version(kind: Kind[T], obj: T) -> str:
    return str(kind.meta(obj).resource_version)


async def _unless_named(resource_version: str, attempt: Callable[[], Awaitable[U]]) -> U:
    """Run an apply; when the caller named no resourceVersion, again on a lost race.

    An apply without a resourceVersion means "make it so", as kubectl apply does: a
    controller writing the object's status between our read and our write is no reason
    to fail the caller. One that names a version asked for exactly that version, and
    gets the conflict.
    """
    if resource_version:
        return await attempt()
    async for retry in AsyncRetrying(
        retry=retry_if_exception_type(Conflict),
        stop=stop_after_attempt(_APPLY_ATTEMPTS),
        wait=wait_random(0, 0.05),
        reraise=True,
    ):
        with retry:
            return await attempt()
    raise AssertionError("unreachable: tenacity reraises the last conflict")


_APPLY_ATTEMPTS = 8


async def apply(store: Store, kind: Kind[T], obj: T) -> T:
    """Create, or replace spec, labels and annotations; writes nothing when unchanged."""
    requested = kind.meta(obj)
    current = await store.get(kind, kind.key_of(obj))
    if current is None:
        # Status belongs to the controllers, never to the caller.
        if "status" in obj.DESCRIPTOR.fields_by_name:
            obj.ClearField("status")
        return await store.create(kind, obj)
    stored = kind.meta(current)
    if requested.resource_version and requested.resource_version != stored.resource_version:
        raise Conflict(
            f"{kind.name} {requested.name} is at resourceVersion {stored.resource_version}, "
            f"not {limits.echo(requested.resource_version)}"
        )
    updated = kind.copy(current)
    updated.spec.CopyFrom(obj.spec)  # type: ignore[attr-defined]
    meta = kind.meta(updated)
    meta.labels.clear()
    meta.labels.update(requested.labels)
    meta.annotations.clear()
    meta.annotations.update(requested.annotations)
    if updated == current:
        return current
    return await store.update(kind, updated, current=current)


def _check_policy(policy: policy_pb2.PropagationPolicy) -> None:
    validation.check_metadata(policy.metadata, namespaced=True)
    validation.check_propagation_spec(policy.spec, policy_namespace=policy.metadata.namespace)


def _check_cluster_policy(policy: policy_pb2.ClusterPropagationPolicy) -> None:
    validation.check_metadata(policy.metadata, namespaced=False)
    validation.check_propagation_spec(policy.spec, policy_namespace="")


def _check_customization(customization: interpreter_pb2.ResourceInterpreterCustomization) -> None:
    validation.check_metadata(customization.metadata, namespaced=False)
    try:
        interpreter.compile_customization(customization)
    except interpreter.CustomizationInvalid as error:
        raise Invalid(error.field, error.message) from error


def _check_override(policy: Any) -> None:
    namespaced = isinstance(policy, override_pb2.OverridePolicy)
    validation.check_metadata(policy.metadata, namespaced=namespaced)
    validation.check_override_spec(
        policy.spec, policy_namespace=policy.metadata.namespace if namespaced else ""
    )


def _check_work(work: work_pb2.PropagationWork) -> None:
    validation.check_metadata(work.metadata, namespaced=True)
    validation.check_work_spec(work.spec)


def _check_binding(binding: work_pb2.PropagationBinding) -> None:
    """A binding lives where its template does: the binding of a cluster-scoped
    template (Karmada's ClusterResourceBinding) has no namespace either."""
    resource = binding.spec.resource
    cluster_scoped = bool(resource.kind) and not resource.namespace
    validation.check_metadata(binding.metadata, namespaced=not cluster_scoped)


# How each API kind is checked before it is stored (the kinds themselves, their
# services and messages come from the one registry, ``kinds.API_KINDS``).
_VALIDATORS: dict[str, Callable[[Any], None]] = {
    kinds.MEMBER_CLUSTER.name: validation.check_member_cluster,
    kinds.PROPAGATION_POLICY.name: _check_policy,
    kinds.CLUSTER_PROPAGATION_POLICY.name: _check_cluster_policy,
    kinds.OVERRIDE_POLICY.name: _check_override,
    kinds.CLUSTER_OVERRIDE_POLICY.name: _check_override,
    kinds.RESOURCE_INTERPRETER_CUSTOMIZATION.name: _check_customization,
    kinds.PROPAGATION_BINDING.name: _check_binding,
    kinds.PROPAGATION_WORK.name: _check_work,
    kinds.WORKLOAD_REBALANCER.name: validation.check_workload_rebalancer,
    kinds.CLUSTER_TAINT_POLICY.name: validation.check_cluster_taint_policy,
}


def kind_services(store: Store, api: ApiVersion) -> dict[str, KindService[Any]]:
    """One servicer per API kind that ``api`` declares, keyed by the generated service's
    name."""
    return {
        kind.service: KindService(store, kind, api, validate=_VALIDATORS[kind.name])
        for kind in kinds.API_KINDS.values()
        if api.serves(kind)
    }


def _template_filter(namespace: str, selector: selectors.Selector) -> Callable[[Manifest], bool]:
    """Whether a template is in ``namespace`` (any, when empty) and matches ``selector``."""

    def matches(manifest: Manifest) -> bool:
        meta = manifest.get("metadata", {})
        if namespace and meta.get("namespace") != namespace:
            return False
        return selector.matches(meta.get("labels", {}))

    return matches


def _is_secret(api_version: str, kind: str) -> bool:
    return api_version == "v1" and kind == "Secret"


class TemplateService:
    """Resource templates: any Kubernetes object, as a Struct on the wire.

    Whether a kind is namespaced comes from ``scopes``, which the control plane keeps
    current from ``templates`` (the template cache): see :mod:`archipel.core.scopes`.
    A CRD template changes a kind's scope, so its Apply and Delete are refused when the
    kind's stored templates would then contradict it, and an applied CRD is in the cache
    before the Apply answers: the next Apply (its custom resources, often the next
    document of the same file) is held to its scope.
    """

    def __init__(
        self,
        store: Store,
        api: ApiVersion,
        *,
        templates: Informer[Manifest],
        scopes: KindScopes,
    ) -> None:
        self.store = store
        self.kind = kinds.RESOURCE_TEMPLATE
        self.api = api
        self.responses = api.responses("ResourceTemplateService")
        self.templates = templates
        self.scopes = scopes

    def _reply(self, method: str, template: work_pb2.ResourceTemplate) -> Any:
        return self.responses[method](object=template) if self.api.wraps_objects else template

    @staticmethod
    def _wire(manifest: Manifest) -> work_pb2.ResourceTemplate:
        return work_pb2.ResourceTemplate(manifest=structs.to_struct(manifest))

    @staticmethod
    def _type_prefix(api_version: str, kind: str) -> str:
        if bool(api_version) != bool(kind):
            raise Invalid(
                "apiVersion" if not api_version else "kind", "give apiVersion and kind together"
            )
        if not kind:
            return "templates/"
        validation.check_api_version(api_version)
        validation.check_kind(kind)
        return kinds.template_type_prefix(api_version, kind)

    @staticmethod
    def _check_namespace(namespace: str) -> None:
        if namespace:
            validation.check_dns_label(namespace, "namespace")

    def _key(self, api_version: str, kind: str, namespace: str, name: str) -> str:
        validation.check_api_version(api_version)
        validation.check_kind(kind)
        self._check_namespace(namespace)
        # The loosest rule: a lookup must still reach templates stored under older,
        # laxer admission rules (Apply holds new ones to their kind's rule).
        validation.check_object_name(name, "name")
        return kinds.template_key(api_version, kind, namespace, name)

    @staticmethod
    def _reach(api_version: str, kind: str, namespace: str, name: str = "", *, write: bool) -> None:
        """Hold the caller to its namespaces (a template without a namespace is
        cluster-scoped) and, for reads, to Secrets; say what the call is about."""
        auth.describe(kind=kind, namespace=namespace, name=name)
        auth.check_namespace(namespace, namespaced=bool(namespace), write=write)
        if not write and _is_secret(api_version, kind):
            auth.reading_secrets()

    def _reach_all(self, api_version: str, kind: str, namespace: str) -> Callable[[Manifest], bool]:
        """The same for a List or Watch; answers which templates the caller may see
        (a caller who may not read Secrets reads every other kind)."""
        namespaced = True if not kind else self.scopes.scope(api_version, kind).namespaced
        auth.describe(kind=kind, namespace=namespace)
        auth.check_namespace(namespace, namespaced=namespaced, write=False)
        if kind:
            if _is_secret(api_version, kind):
                auth.reading_secrets()
            return lambda manifest: True
        if auth.may_read_secrets():
            auth.reading_secrets()
            return lambda manifest: True
        return lambda manifest: (
            not _is_secret(manifest.get("apiVersion", ""), manifest.get("kind", ""))
        )

    @_guard
    async def Get(self, request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        key = self._key(request.api_version, request.kind, request.namespace, request.name)
        self._reach(request.api_version, request.kind, request.namespace, request.name, write=False)
        return self._reply("Get", self._wire(await self.store.must_get(self.kind, key)))

    @_guard
    async def List(self, request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        if request.limit < 0:
            raise Invalid("limit", "must not be negative")
        self._check_namespace(request.namespace)
        selector = _label_filter(request.label_selector)
        prefix = self._type_prefix(request.api_version, request.kind)
        visible = self._reach_all(request.api_version, request.kind, request.namespace)
        in_namespace = _template_filter(request.namespace, selector)
        # Pages are bounded by what templates weigh on the wire (a Struct can be several
        # times its JSON), and each is converted once.
        wired: dict[int, work_pb2.ResourceTemplate] = {}

        def weigh(manifest: Manifest) -> int:
            wire = wired[id(manifest)] = self._wire(manifest)
            return wire.ByteSize()

        items, token, revision = await self.store.list(
            self.kind,
            prefix,
            limit=limits.page_size(request.limit),
            continue_token=getattr(request, "continue"),
            weigh=weigh,
            keep=lambda manifest: in_namespace(manifest) and visible(manifest),
        )
        response = self.responses["List"](resource_version=str(revision))
        response.items.extend(wired.get(id(m)) or self._wire(m) for m in items)
        setattr(response, "continue", token)
        return response

    @_guard_stream
    async def Watch(
        self, request: Any, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[Any]:
        self._check_namespace(request.namespace)
        in_namespace = _template_filter(request.namespace, _label_filter(request.label_selector))
        prefix = self._type_prefix(request.api_version, request.kind)
        visible = self._reach_all(request.api_version, request.kind, request.namespace)
        event = self.responses["Watch"]
        async for type_, manifest, revision in watch_events(
            self.store,
            self.kind,
            prefix,
            resource_version=request.resource_version,
            matches=lambda manifest: in_namespace(manifest) and visible(manifest),
        ):
            yield event(
                type=self.api.event_type(type_),
                object=self._wire(manifest),
                resource_version=revision,
            )

    @_guard
    async def Apply(self, request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        wanted: work_pb2.ResourceTemplate = request.object if self.api.wraps_objects else request
        manifest = validation.check_template(
            structs.from_struct(wanted.manifest), scope_of=self.scopes.scope
        )
        metadata = manifest.get("metadata", {})
        self._reach(
            manifest.get("apiVersion", ""),
            manifest.get("kind", ""),
            metadata.get("namespace", ""),
            metadata.get("name", ""),
            write=True,
        )
        defined = scopes.crd_scope(manifest)
        if defined is not None:
            self._refuse_contradictions(defined.group, defined.kind, defined.namespaced, "apply")
        version = manifest.get("metadata", {}).get("resourceVersion", "")
        applied = await _unless_named(
            version, lambda: apply_template(self.store, kinds.RESOURCE_TEMPLATE.copy(manifest))
        )
        if defined is not None:
            # The kind's scope holds for the caller's next call, not some time later.
            revision = applied.get("metadata", {}).get("resourceVersion", "")
            await self.templates.wait_for_revision(int(revision or 0))
        return self._reply("Apply", self._wire(applied))

    def _refuse_contradictions(self, group: str, kind: str, namespaced: bool, verb: str) -> None:
        """FAILED_PRECONDITION when stored templates of ``group``/``kind`` would disagree
        with the scope ``namespaced``: the CLI would then look for them where they are
        not. Read from the template cache, which a write made in the same instant by
        another client may not have reached yet (docs/semantics.md says so)."""
        prefix = kinds.template_group_kind_prefix(group, kind)
        found = scopes.contradicting(namespaced, self.templates.objects(prefix))
        if found:
            scope = "namespaced" if namespaced else "cluster-scoped"
            shown = ", ".join(found[:5]) + (f" and {len(found) - 5} more" if len(found) > 5 else "")
            raise FailedPrecondition(
                f"cannot {verb} the CustomResourceDefinition: {kind}.{group} would be {scope}, "
                f"but templates of it are stored {'without' if namespaced else 'with'} a "
                f"namespace ({shown}); delete them first"
            )

    @_guard
    async def GetScope(self, request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        api_version = validation.check_api_version(request.api_version)
        kind = validation.check_kind(request.kind)
        scope = self.scopes.scope(api_version, kind)
        return self.responses["GetScope"](
            group=scope.group,
            kind=scope.kind,
            namespaced=scope.namespaced,
            custom_resource_definition=scope.defined_by,
        )

    @_guard
    async def Delete(self, request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        key = self._key(request.api_version, request.kind, request.namespace, request.name)
        self._reach(request.api_version, request.kind, request.namespace, request.name, write=True)
        try:
            current = await self.store.must_get(self.kind, key)
        except Corrupt:
            current = {}  # no label can be read, so none protects it: deleting is the way out
        labels = current.get("metadata", {}).get("labels", {})
        for label in DELETION_PROTECTION_LABELS:
            if labels.get(label) == "Always":
                raise FailedPrecondition(
                    f"{request.kind} {request.name} is protected by the label {label}=Always; "
                    "remove the label to delete it"
                )
        defined = scopes.crd_scope(current)
        if defined is not None:
            # Without this CRD the kind falls back to the built-in rule.
            fallback = scopes.builtin_namespaced(defined.kind)
            if fallback != defined.namespaced:
                self._refuse_contradictions(defined.group, defined.kind, fallback, "delete")
        deleted, revision = await self.store.delete_at(
            self.kind, key, resource_version=request.resource_version
        )
        if defined is not None:
            # As for an apply: the kind's scope has changed when the caller hears back.
            await self.templates.wait_for_revision(revision)
        return self.responses["Delete"](deleted=deleted)


async def apply_template(store: Store, manifest: Manifest) -> Manifest:
    kind = kinds.RESOURCE_TEMPLATE
    metadata = manifest["metadata"]
    requested_version = metadata.get("resourceVersion", "")
    for field in kinds.SERVER_METADATA_FIELDS:
        metadata.pop(field, None)
    manifest.pop("status", None)
    current = await store.get(kind, kind.key_of(manifest))
    if current is None:
        return await store.create(kind, manifest)
    stored = current.get("metadata", {})
    if requested_version and requested_version != stored.get("resourceVersion"):
        raise Conflict(
            f"{manifest['kind']} {metadata['name']} is at resourceVersion "
            f"{stored.get('resourceVersion')}, not {requested_version}"
        )
    updated: Manifest = dict(manifest)
    updated["metadata"] = {
        **metadata,
        **{f: stored[f] for f in kinds.SERVER_METADATA_FIELDS if f in stored},
    }
    if "finalizers" in stored:
        updated["metadata"]["finalizers"] = stored["finalizers"]
    if "status" in current:
        updated["status"] = current["status"]
    if updated == current:
        return current
    return await store.update(kind, updated, current=current)


class InfoService:
    """What this control plane is."""

    def __init__(self, api: ApiVersion) -> None:
        self.api = api

    @_guard
    async def GetVersion(self, request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        if self.api is V1ALPHA1:
            return v1alpha1_pb2.GetVersionResponse(version=VERSION, api_version=V1ALPHA1.name)
        return v1alpha2_pb2.GetVersionResponse(
            version=VERSION, api_versions=[served.name for served in API_VERSIONS]
        )


class ClusterAdminService:
    def __init__(
        self,
        clusters: ClusterController,
        api: ApiVersion,
        revoke: Callable[[str], Awaitable[None]] | None = None,
    ) -> None:
        self.clusters = clusters
        self.responses = api.responses("ClusterAdminService")
        self._revoke = revoke

    @_guard
    async def Revoke(self, request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        assert self._revoke is not None, "Revoke is served by versions that declare it"
        await self._revoke(request.name)
        return self.responses["Revoke"](
            message=f"cluster {request.name} revoked: its certificates and token no longer "
            "work, and its agent's stream is closed"
        )

    @_guard
    async def Join(self, request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        cluster = cluster_pb2.MemberCluster(
            api_version=kinds.MEMBER_CLUSTER.api_version, kind="MemberCluster"
        )
        cluster.metadata.name = request.name
        cluster.metadata.labels.update(request.labels)
        cluster.spec.sync_mode = "Pull"
        cluster.spec.provider = request.provider
        cluster.spec.region = request.region
        cluster.spec.zone = request.zone
        if request.zone:
            cluster.spec.zones.append(request.zone)
        validation.check_member_cluster(cluster)
        auth.describe(kind="MemberCluster", name=request.name)
        joined, token = await self.clusters.join(cluster, rotate=request.rotate)
        return self.responses["Join"](cluster=joined, token=token)


class StorageAdminService:
    """Rewriting what is stored: archipel.v1alpha2.StorageAdminService (admin only, as
    every call but the agents' is)."""

    def __init__(self, etcd: Etcd, encrypting: encryption.Encryption | None) -> None:
        self.etcd = etcd
        self.encryption = encrypting

    @_guard
    async def Reencrypt(
        self, request: storage_pb2.ReencryptRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> storage_pb2.ReencryptResponse:
        if self.encryption is None:
            raise FailedPrecondition(
                "this control plane runs without --encryption-provider-config: it has no "
                "key to rewrite with"
            )
        counts = await encryption.reencrypt(self.etcd, self.encryption, dry_run=request.dry_run)
        return storage_pb2.ReencryptResponse(
            resources=[
                storage_pb2.ReencryptedResource(
                    resource=name,
                    rewritten=tally.rewritten,
                    unchanged=tally.unchanged,
                    unreadable=tally.unreadable,
                    skipped=tally.skipped,
                )
                for name, tally in sorted(counts.items())
            ]
        )
