"""What the fuzzing tests share: the methods a server serves, random requests for any of
them, the identities each test runs as, and the rules every answer must keep.

Methods are discovered from the server itself, through reflection, so an RPC added
to the contract is fuzzed as soon as the server serves it, with no list to update.
Requests are built from the method's descriptor (whichever pool it comes from) and
sent as bytes, so anything, valid or not, can be sent.

The rules:

* never ``UNKNOWN`` or ``INTERNAL`` (the server's bugs, docs/limits.md);
* an identity that may not call a method gets ``PERMISSION_DENIED`` or
  ``UNAUTHENTICATED``, whatever it sends;
* every ``INVALID_ARGUMENT`` names the field: its message starts with a field path
  (``metadata.name: ...``, ``spec.placement.clusterAffinity.clusterNames[1]: ...``),
  as :class:`archipel.core.errors.Invalid` writes it (:func:`names_a_field`).
"""

from __future__ import annotations

import dataclasses
import enum
import re
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import grpc
from google.protobuf import descriptor_pool, json_format, message_factory, struct_pb2
from google.protobuf import message as pb_message
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)
from hypothesis import strategies as st

from archipel import limits
from archipel.core import roles
from archipel.core.roles import Role
from archipel.fleet.controlplane import ControlPlaneProcess
from archipel.v1alpha1 import (
    apps_pb2,
    cluster_pb2,
    interpreter_pb2,
    override_pb2,
    policy_pb2,
    work_pb2,
)
from tests import fuzzstats

BAD_CODES = frozenset({grpc.StatusCode.UNKNOWN, grpc.StatusCode.INTERNAL})
REFUSALS = frozenset({grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.UNAUTHENTICATED})
AGENT_SERVICE = "archipel.v1alpha1.AgentService"
# The member cluster whose agent token the "agent" identity holds. Fuzzed requests
# name clusters from FIELD_TEXT and random text, never this one, so none of them
# rotates its token or deletes it.
AGENT_CLUSTER = "fz-agent-q7"


# -- the methods the server serves -----------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Method:
    path: str
    """``/package.Service/Method``."""
    input: Descriptor
    client_streaming: bool
    server_streaming: bool

    @property
    def service(self) -> str:
        return self.path.split("/")[1]

    @property
    def name(self) -> str:
        return self.path.rpartition("/")[2]

    @property
    def short(self) -> str:
        """``v1alpha2.PropagationPolicyService/Apply``: for events and messages."""
        return self.path.removeprefix("/archipel.")

    def __repr__(self) -> str:
        return self.short


def served_methods(plane: ControlPlaneProcess) -> list[Method]:
    """Every method of every ``archipel.*`` service ``plane`` lists through reflection,
    with its request's descriptor."""
    with plane.channel() as channel:
        database = ProtoReflectionDescriptorDatabase(channel)
        pool = descriptor_pool.DescriptorPool(database)
        methods = []
        for name in sorted(database.get_services()):
            if not name.startswith("archipel."):
                continue
            service = pool.FindServiceByName(name)
            for method in service.methods:
                methods.append(
                    Method(
                        f"/{service.full_name}/{method.name}",
                        method.input_type,
                        method.client_streaming,
                        method.server_streaming,
                    )
                )
        # Everything reflection answered is resolved above, while the channel is open.
        return methods


# -- identities --------------------------------------------------------------------------


class Access(enum.Enum):
    SERVED = "served"
    """The call reaches the servicer: any meaningful answer."""
    REFUSED = "refused"
    """PERMISSION_DENIED or UNAUTHENTICATED, whatever the request."""
    EITHER = "either"
    """Depends on the request (a role limited to some namespaces)."""


@dataclasses.dataclass(frozen=True)
class Credentials:
    """The credentials a control plane under test issued."""

    admin_token: str
    agent_token: str
    users: dict[str, str] = dataclasses.field(default_factory=dict)
    """Users' tokens by user name (see ``ROLE_USERS``)."""


@dataclasses.dataclass(frozen=True)
class Identity:
    """A caller: the metadata it sends, and what it may call."""

    name: str
    metadata: Callable[[Credentials], tuple[tuple[str, str], ...]]
    may: Callable[[str], Access]
    """By method path (``/archipel.v1alpha2.PropagationPolicyService/Apply``)."""

    def __repr__(self) -> str:
        return self.name


def _bearer(token: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {token}"),)


# Services that take no bearer credential: an agent registering proves itself with the
# bootstrap token in its request, whoever calls.
OPEN_SERVICES = ("archipel.v1alpha2.RegistrationService",)


def _admin_may(method: str) -> Access:
    # The admin token is not a cluster's: the agent stream refuses it.
    return Access.REFUSED if method.startswith(f"/{AGENT_SERVICE}/") else Access.SERVED


def _role_may(identity: roles.Identity) -> Callable[[str], Access]:
    """What a user may call, from the role table (test_authorization.py checks the
    table itself against a written-out matrix; here it only says which answers are
    due). A user limited to namespaces is refused or served by the request."""

    def may(method: str) -> Access:
        if method.startswith(f"/{AGENT_SERVICE}/"):
            return Access.REFUSED
        if not roles.decide(identity, method).allowed:
            return Access.REFUSED
        return (
            Access.EITHER
            if identity.namespaces or identity.role is not Role.ADMIN
            else (Access.SERVED)
        )

    return may


# The users the fuzzing control plane is given, one per role (and a namespace-limited
# editor): their requests reach the servicers' namespace and Secret checks too.
ROLE_USERS = {
    "fz-operator": roles.Identity("fz-operator", Role.OPERATOR),
    "fz-editor": roles.Identity("fz-editor", Role.EDITOR),
    "fz-viewer": roles.Identity("fz-viewer", Role.VIEWER),
    "fz-team": roles.Identity("fz-team", Role.EDITOR, frozenset({"fz-target-ns"})),
}


def _open_or(may: Callable[[str], Access]) -> Callable[[str], Access]:
    def either(method: str) -> Access:
        return Access.SERVED if method.split("/")[1] in OPEN_SERVICES else may(method)

    return either


def _agent_may(method: str) -> Access:
    return Access.SERVED if method.startswith(f"/{AGENT_SERVICE}/") else Access.REFUSED


def _user(name: str, identity: roles.Identity) -> Identity:
    return Identity(name, lambda c: _bearer(c.users[name]), _open_or(_role_may(identity)))


IDENTITIES: list[Identity] = [
    Identity("admin", lambda c: _bearer(c.admin_token), _open_or(_admin_may)),
    Identity("anonymous", lambda c: (), _open_or(lambda method: Access.REFUSED)),
    # Not a token at all: no scheme, a stray separator, nothing any issuer makes.
    Identity(
        "malformed",
        lambda c: (("authorization", "Bearer ::not a token::"),),
        _open_or(lambda method: Access.REFUSED),
    ),
    Identity("agent", lambda c: _bearer(c.agent_token), _open_or(_agent_may)),
    *(_user(name, identity) for name, identity in ROLE_USERS.items()),
]


# -- the rules ---------------------------------------------------------------------------

# A field path: a JSON name (or ``#N``, a field number the server does not know), then
# any number of ``.name``, ``.#N`` and ``[index or key]``; then ``: ``. A key in
# brackets may be quoted (Python's repr) and hold anything, ``]`` and ``: `` included.
_SEGMENT = re.compile(r"#\d+|[A-Za-z_$][A-Za-z0-9_$-]*")
_QUOTED = re.compile(r"""'(?:[^'\\]|\\.)*'|"(?:[^"\\]|\\.)*\"""")


def field_path(message: str) -> str | None:
    """The field path ``message`` starts with (before ``": "``), or None."""
    position = 0
    match = _SEGMENT.match(message)
    if match is None:
        return None
    position = match.end()
    while position < len(message):
        if message.startswith(": ", position):
            return message[:position]
        char = message[position]
        if char == ".":
            match = _SEGMENT.match(message, position + 1)
            if match is None:
                # A manifest's keys may be anything: up to the next separator.
                end = re.compile(r"[^.\[:\s]+").match(message, position + 1)
                if end is None:
                    return None
                position = end.end()
            else:
                position = match.end()
        elif char == "[":
            quoted = _QUOTED.match(message, position + 1)
            if quoted is not None and message.startswith("]", quoted.end()):
                position = quoted.end() + 1
            else:
                closing = message.find("]", position + 1)
                if closing < 0:
                    return None
                position = closing + 1
        else:
            return None
    return None


def names_a_field(message: str) -> bool:
    return field_path(message) is not None


@dataclasses.dataclass
class Answer:
    code: grpc.StatusCode
    details: str


def check_answer(
    area: str, identity: Identity, method: Method, request: bytes, answer: Answer
) -> None:
    """The rules above, for one answer; the case is counted either way."""
    fuzzstats.record(
        area, answer.code.name, identity=identity.name, detail=f"{method.short} {answer.details}"
    )
    problem = ""
    access = identity.may(method.path)
    if answer.code in BAD_CODES:
        problem = f"{answer.code.name}"
    elif access is Access.REFUSED and answer.code not in REFUSALS:
        problem = f"{answer.code.name} where PERMISSION_DENIED or UNAUTHENTICATED was due"
    elif answer.code == grpc.StatusCode.INVALID_ARGUMENT and not names_a_field(answer.details):
        problem = "INVALID_ARGUMENT that names no field"
    if problem:
        kind = f"{area}: {method.short} as {identity.name}: {problem}"
        example = f"{answer.details!r} (request {request[:200]!r})"
        fuzzstats.finding(kind, example)
        raise AssertionError(f"{kind}: {example}")


# -- calls as bytes ------------------------------------------------------------------------


def _identity(data: bytes) -> bytes:
    return data


def channel(plane: ControlPlaneProcess) -> grpc.Channel:
    return plane.channel(
        options=[
            ("grpc.max_receive_message_length", limits.MAX_AGENT_RECEIVE_BYTES),
            ("grpc.max_send_message_length", 64 * 1024 * 1024),
        ],
    )


def call_unary(
    channel: grpc.Channel, method: Method, data: bytes, metadata: tuple[tuple[str, str], ...]
) -> Answer:
    call = channel.unary_unary(
        method.path, request_serializer=_identity, response_deserializer=_identity
    )
    try:
        call(data, metadata=metadata, timeout=30)
    except grpc.RpcError as error:
        return Answer(error.code(), error.details() or "")
    return Answer(grpc.StatusCode.OK, "")


def call_server_stream(
    channel: grpc.Channel,
    method: Method,
    data: bytes,
    metadata: tuple[tuple[str, str], ...],
    *,
    wait: float,
) -> Answer:
    """Open a server stream, read its first message or its status within ``wait``
    seconds, then cancel it: OK when a message came, else the stream's code
    (DEADLINE_EXCEEDED when nothing came in time: a valid watch with nothing to say)."""
    call = channel.unary_stream(
        method.path, request_serializer=_identity, response_deserializer=_identity
    )
    responses: Any = call(data, metadata=metadata, timeout=wait)
    try:
        next(responses)
    except StopIteration:
        return Answer(grpc.StatusCode.OK, "")
    except grpc.RpcError as error:
        return Answer(error.code(), error.details() or "")
    responses.cancel()
    return Answer(grpc.StatusCode.OK, "")


def call_bidi(
    channel: grpc.Channel,
    method: Method,
    messages: Sequence[bytes],
    metadata: tuple[tuple[str, str], ...],
    *,
    wait: float,
) -> Answer:
    """Send ``messages`` on a bidirectional stream, then close the sending side; read
    everything the server answers until the stream ends (or ``wait`` seconds)."""
    call = channel.stream_stream(
        method.path, request_serializer=_identity, response_deserializer=_identity
    )
    responses = call(iter(messages), metadata=metadata, timeout=wait)
    try:
        for _ in responses:
            pass
    except grpc.RpcError as error:
        return Answer(error.code(), error.details() or "")
    return Answer(grpc.StatusCode.OK, "")


# -- random requests -------------------------------------------------------------------------

# Values that get past the first checks, so the fuzzer reaches deeper code.
WORDS = [
    "",
    "a",
    "default",
    "member1",
    "archipel-es-member1",
    "_.web-deployment",
    "system:admin",
    "v1",
    "apps/v1",
    "policy.archipel.io/v1alpha1",
    "policy.karmada.io/v1alpha1",
    "Deployment",
    "ConfigMap",
    "Namespace",
    "In",
    "Exists",
    "Duplicated",
    "Divided",
    "Weighted",
    "replace",
    "/spec/replicas",
    "app=web",
    "a//b=c",
    "MTox",
    "-1",
    "0",
    "9223372036854775807",
]
TEXT = st.one_of(
    st.sampled_from(WORDS),
    st.text(st.characters(exclude_categories=["Cs"]), max_size=24),
)
# Most strings are drawn from what the field usually holds, so that many requests are
# valid enough to be stored and reach the controllers.
FIELD_TEXT: dict[str, st.SearchStrategy[str]] = {
    "name": st.sampled_from(["a", "web", "member1", "system:admin", "_.web-deployment"]),
    "namespace": st.sampled_from(["", "default", "archipel-es-member1"]),
    "api_version": st.sampled_from(["", "v1", "apps/v1", "a/b/c"]),
    "kind": st.sampled_from(["", "Deployment", "ConfigMap", "Bad/Kind"]),
    "label_selector": st.sampled_from(["", "app=web", "a//b=c", "tier in (gold)"]),
    "resource_version": st.sampled_from(["", "0", "1", "-1", "99999999"]),
    "cluster_names": st.sampled_from(["member1", "member2"]),
    "operator": st.sampled_from(["In", "Exists", "add", "replace", "Equal"]),
    "continue": st.sampled_from(["", "MTox", "bm90IGEgdG9rZW4=", "%%%"]),
}
FIELD_INTEGERS: dict[str, st.SearchStrategy[int]] = {
    "limit": st.sampled_from([0, 1, 2, -1, 1000, 1001, 2**31 - 1, -(2**31)]),
}
JSON_SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.floats(allow_nan=True, allow_infinity=True),
    st.integers(-(2**40), 2**40),
    TEXT,
)
JSON = st.recursive(
    JSON_SCALARS,
    lambda children: st.one_of(
        st.lists(children, max_size=3), st.dictionaries(TEXT, children, max_size=3)
    ),
    max_leaves=12,
)


def nested(levels: int, leaf: Any = "x") -> Any:
    """A JSON value ``levels`` levels deep (a scalar is one level)."""
    value: Any = leaf
    for index in range(levels - 1):
        value = {"n": value} if index % 2 else [value]
    return value


# Deeper than the limit allows, and far deeper (protobuf decoders stop at 100 levels of
# messages; a JSON level costs up to three).
DEEP = st.sampled_from([limits.MAX_MANIFEST_DEPTH, limits.MAX_MANIFEST_DEPTH + 1, 31]).map(nested)
MANIFEST = st.fixed_dictionaries(
    {
        "apiVersion": st.sampled_from(["v1", "apps/v1", "batch/v1", "a/b/c", ""]),
        "kind": st.sampled_from(["ConfigMap", "Deployment", "Job", "Namespace", "Bad/Kind"]),
        "metadata": st.fixed_dictionaries(
            {"name": TEXT}, optional={"namespace": TEXT, "labels": st.dictionaries(TEXT, TEXT)}
        ),
    },
    optional={
        "spec": st.dictionaries(st.sampled_from(["replicas", "parallelism", "x"]), JSON),
        "data": st.dictionaries(TEXT, st.one_of(TEXT, DEEP), max_size=2),
    },
)

SCALARS: dict[int, st.SearchStrategy[Any]] = {
    FieldDescriptor.TYPE_STRING: TEXT,
    FieldDescriptor.TYPE_BYTES: st.binary(max_size=24),
    FieldDescriptor.TYPE_BOOL: st.booleans(),
    FieldDescriptor.TYPE_DOUBLE: st.floats(),
    FieldDescriptor.TYPE_FLOAT: st.floats(width=32),
    FieldDescriptor.TYPE_INT32: st.integers(-(2**31), 2**31 - 1),
    FieldDescriptor.TYPE_SINT32: st.integers(-(2**31), 2**31 - 1),
    FieldDescriptor.TYPE_SFIXED32: st.integers(-(2**31), 2**31 - 1),
    FieldDescriptor.TYPE_INT64: st.integers(-(2**63), 2**63 - 1),
    FieldDescriptor.TYPE_SINT64: st.integers(-(2**63), 2**63 - 1),
    FieldDescriptor.TYPE_SFIXED64: st.integers(-(2**63), 2**63 - 1),
    FieldDescriptor.TYPE_UINT32: st.integers(0, 2**32 - 1),
    FieldDescriptor.TYPE_FIXED32: st.integers(0, 2**32 - 1),
    FieldDescriptor.TYPE_UINT64: st.integers(0, 2**64 - 1),
    FieldDescriptor.TYPE_FIXED64: st.integers(0, 2**64 - 1),
}


def _json_bytes(value: Any, type_name: str) -> bytes:
    """``value`` as a serialized Struct, Value or ListValue."""
    if type_name == "google.protobuf.Struct":
        struct = struct_pb2.Struct()
        struct.update(value if isinstance(value, dict) else {"v": value})
        return struct.SerializeToString()
    holder = struct_pb2.Struct()
    holder.update({"v": value})
    if type_name == "google.protobuf.ListValue":
        values = struct_pb2.ListValue()
        values.extend(value if isinstance(value, list) else [value])
        return values.SerializeToString()
    return holder.fields["v"].SerializeToString()


_JSON_TYPES = ("google.protobuf.Struct", "google.protobuf.Value", "google.protobuf.ListValue")


def _field_value(field: FieldDescriptor, depth: int) -> st.SearchStrategy[Any]:
    if field.type == FieldDescriptor.TYPE_STRING and field.name in FIELD_TEXT:
        return st.one_of(FIELD_TEXT[field.name], FIELD_TEXT[field.name], TEXT)
    if field.name in FIELD_INTEGERS and field.type in SCALARS:
        return st.one_of(FIELD_INTEGERS[field.name], SCALARS[field.type])
    if field.type == FieldDescriptor.TYPE_ENUM:
        # Unknown numbers too: proto3 enums are open.
        return st.one_of(
            st.sampled_from([v.number for v in field.enum_type.values]), st.integers(-3, 99)
        )
    if field.message_type is None:
        return SCALARS[field.type]
    return message_bytes(field.message_type, depth + 1)


@st.composite
def _message_bytes(draw: st.DrawFn, descriptor: Descriptor, depth: int) -> bytes:
    name = descriptor.full_name
    if name == "google.protobuf.Struct":
        manifest: Any = draw(
            st.one_of(MANIFEST, st.dictionaries(TEXT, st.one_of(JSON, DEEP), max_size=4))
        )
        return _json_bytes(manifest, name)
    if name in _JSON_TYPES:
        return _json_bytes(draw(st.one_of(JSON, JSON, DEEP)), name)
    message = message_factory.GetMessageClass(descriptor)()
    if depth > 4:
        return message.SerializeToString()
    for field in descriptor.fields:
        if draw(st.booleans()):  # leave about half of the fields unset
            continue
        if field.message_type is not None and field.message_type.GetOptions().map_entry:
            key = _field_value(field.message_type.fields_by_name["key"], depth)
            value = _field_value(field.message_type.fields_by_name["value"], depth)
            entries = draw(st.dictionaries(key, value, max_size=3))
            target = getattr(message, field.name)
            for k, v in entries.items():
                if (
                    isinstance(v, bytes)
                    and field.message_type.fields_by_name["value"].message_type is not None
                ):
                    target[k].MergeFromString(v)
                else:
                    target[k] = v
        elif field.is_repeated:
            items = draw(st.lists(_field_value(field, depth), max_size=3))
            target = getattr(message, field.name)
            for item in items:
                if field.message_type is not None:
                    target.add().MergeFromString(item)
                else:
                    target.append(item)
        elif field.message_type is not None:
            getattr(message, field.name).MergeFromString(draw(_field_value(field, depth)))
        else:
            setattr(message, field.name, draw(_field_value(field, depth)))
    data: bytes = message.SerializeToString()
    return data


def message_bytes(descriptor: Descriptor, depth: int = 0) -> st.SearchStrategy[bytes]:
    """A random message of ``descriptor``'s type, serialized."""
    return _message_bytes(descriptor, depth)


def _valid_objects() -> dict[str, bytes]:
    """A valid object of each kind, by message type: perturbed, most get past
    validation and are stored, so the fuzzer reaches the controllers too."""
    selector = [{"apiVersion": "apps/v1", "kind": "Deployment", "name": "web"}]
    placement = {"clusterAffinity": {"clusterNames": ["member1"]}}
    deployment: dict[str, Any] = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "web", "namespace": "default", "labels": {"app": "web"}},
        "spec": {"replicas": 3, "template": {"spec": {"containers": [{"name": "c"}]}}},
    }
    objects: list[tuple[pb_message.Message, dict[str, Any]]] = [
        (
            policy_pb2.PropagationPolicy(),
            {
                "metadata": {"name": "p", "namespace": "default", "labels": {"app": "web"}},
                "spec": {"resourceSelectors": selector, "placement": placement},
            },
        ),
        (
            policy_pb2.ClusterPropagationPolicy(),
            {"metadata": {"name": "cp"}, "spec": {"resourceSelectors": selector}},
        ),
        (
            override_pb2.OverridePolicy(),
            {
                "metadata": {"name": "o", "namespace": "default"},
                "spec": {
                    "resourceSelectors": selector,
                    "overrideRules": [
                        {
                            "overriders": {
                                "plaintext": [
                                    {"path": "/spec/replicas", "operator": "replace", "value": 2}
                                ]
                            }
                        }
                    ],
                },
            },
        ),
        (
            override_pb2.ClusterOverridePolicy(),
            {
                "metadata": {"name": "co"},
                "spec": {
                    "resourceSelectors": selector,
                    "overrideRules": [
                        {
                            "overriders": {
                                "labelsOverrider": [{"operator": "add", "value": {"a": "b"}}]
                            }
                        }
                    ],
                },
            },
        ),
        (
            cluster_pb2.MemberCluster(),
            {"metadata": {"name": "member2"}, "spec": {"syncMode": "Pull"}},
        ),
        (
            work_pb2.PropagationWork(),
            {
                "metadata": {"name": "default.web-deployment", "namespace": "archipel-es-member1"},
                "spec": {"workload": {"manifests": [deployment]}},
            },
        ),
        (
            apps_pb2.WorkloadRebalancer(),
            {
                "metadata": {"name": "r"},
                "spec": {
                    "workloads": [
                        {
                            "apiVersion": "apps/v1",
                            "kind": "Deployment",
                            "name": "web",
                            "namespace": "default",
                        }
                    ]
                },
            },
        ),
        (
            interpreter_pb2.ResourceInterpreterCustomization(),
            {
                "metadata": {"name": "c"},
                "spec": {
                    "target": {"apiVersion": "example.io/v1", "kind": "Widget"},
                    "customizations": {"replicaResource": {"jsonPath": "{.spec.size}"}},
                },
            },
        ),
    ]
    valid: dict[str, bytes] = {}
    for message, body in objects:
        try:
            parsed = json_format.ParseDict(body, message)
        except json_format.ParseError:
            continue  # a field renamed since: the random requests still cover the kind
        valid[message.DESCRIPTOR.full_name] = parsed.SerializeToString()
    template = work_pb2.ResourceTemplate()
    template.manifest.update(deployment)
    valid[template.DESCRIPTOR.full_name] = template.SerializeToString()
    return valid


VALID_OBJECTS = _valid_objects()


def valid_base(method: Method) -> bytes | None:
    """A valid request of ``method`` when it takes one of :data:`VALID_OBJECTS`,
    itself (v1alpha1's Apply) or as its ``object`` (later versions)."""
    if method.input.full_name in VALID_OBJECTS:
        return VALID_OBJECTS[method.input.full_name]
    wrapper = method.input.fields_by_name.get("object")
    if wrapper is not None and wrapper.message_type is not None:
        inner = VALID_OBJECTS.get(wrapper.message_type.full_name)
        if inner is not None:
            # Field ``object``, length-delimited: the tag, the length, the object.
            return _tag(wrapper.number, 2) + _varint(len(inner)) + inner
    return None


def _object_type(method: Method) -> Descriptor | None:
    """The object an Apply-like method takes: its request (v1alpha1), or the request's
    ``object`` (later versions)."""
    if method.input.full_name in VALID_OBJECTS:
        return method.input
    wrapper = method.input.fields_by_name.get("object")
    if wrapper is not None and wrapper.message_type is not None:
        return wrapper.message_type
    return None


@st.composite
def perturbation(draw: st.DrawFn, method: Method) -> bytes:
    """Random fields to merge over :func:`valid_base`'s request: mostly spec and labels,
    rarely the identity (apiVersion, kind, name, namespace), which would only be refused."""
    target = _object_type(method)
    if target is None:
        random: bytes = draw(message_bytes(method.input, 1))
        return random
    message = message_factory.GetMessageClass(target)()
    message.MergeFromString(draw(message_bytes(target, 1)))
    fields = target.fields_by_name
    for name in ("api_version", "kind"):
        if name in fields and draw(st.integers(0, 9)):
            message.ClearField(name)
    if "metadata" in fields and draw(st.integers(0, 4)):
        metadata = message.metadata  # type: ignore[attr-defined]
        for name in ("name", "namespace"):
            if name in metadata.DESCRIPTOR.fields_by_name:
                metadata.ClearField(name)
    data: bytes = message.SerializeToString()
    if target is method.input:
        return data
    number = method.input.fields_by_name["object"].number
    return _tag(number, 2) + _varint(len(data)) + data


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _tag(number: int, wire_type: int) -> bytes:
    return _varint(number << 3 | wire_type)


@st.composite
def mangled(draw: st.DrawFn, data: bytes) -> bytes:
    """``data`` broken: random bytes, cut short, a byte flipped or bytes spliced in."""
    how = draw(st.sampled_from(["random", "truncate", "flip", "splice", "invalid-utf8"]))
    if how == "random" or not data:
        return draw(st.binary(max_size=64))
    position = draw(st.integers(0, len(data) - 1))
    if how == "truncate":
        return data[:position]
    if how == "flip":
        return data[:position] + bytes([data[position] ^ 0xFF]) + data[position + 1 :]
    if how == "invalid-utf8":
        # Field 1 (a string in most requests) holding bytes that are not UTF-8.
        return data + _tag(1, 2) + _varint(2) + b"\xff\xfe"
    return data[:position] + draw(st.binary(min_size=1, max_size=8)) + data[position:]


# -- running many cases -------------------------------------------------------------------------


def serving_within(check: Callable[[], bool], seconds: float = 20.0) -> bool:
    """Whether ``check`` (a health check with a short deadline of its own) passes once
    within ``seconds``: one check that times out on a loaded machine is no crash."""
    deadline = time.monotonic() + seconds
    while not check():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.2)
    return True


class Health:
    """The control plane's health, checked now and then during a fuzz run."""

    def __init__(self, check: Callable[[], bool]) -> None:
        self._check = check
        self._lock = threading.Lock()
        self.cases = 0

    def tick(self, every: int = 50) -> None:
        with self._lock:
            self.cases += 1
            due = self.cases % every == 0
        if due:
            assert serving_within(self._check), "the control plane stopped serving"
