"""Fuzzing the API: whatever a caller sends, the answer is never UNKNOWN or INTERNAL.

Random messages built from the descriptors of every unary method's request type,
random bytes, and mutated valid messages go to a real control plane on a real etcd;
each answer must carry a meaningful code, and the server must stay healthy.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import grpc
import pytest
from google.protobuf import json_format, message_factory, struct_pb2
from google.protobuf import message as pb_message
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from archipel.v1alpha1 import cluster_pb2, override_pb2, policy_pb2, service_pb2, work_pb2
from tests.integration.rawgrpc import Plane, start_plane

pytestmark = pytest.mark.servers

BAD_CODES = (grpc.StatusCode.UNKNOWN, grpc.StatusCode.INTERNAL)
SETTINGS = settings(
    max_examples=600,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


def _unary_methods() -> list[tuple[str, Descriptor]]:
    methods = []
    for service in service_pb2.DESCRIPTOR.services_by_name.values():
        for method in service.methods:
            if not method.server_streaming and not method.client_streaming:
                methods.append((f"/{service.full_name}/{method.name}", method.input_type))
    return methods


METHODS = _unary_methods()

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
    "resource_version": st.sampled_from(["", "0", "1", "-1"]),
    "cluster_names": st.sampled_from(["member1", "member2"]),
    "operator": st.sampled_from(["In", "Exists", "add", "replace", "Equal"]),
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
MANIFEST = st.fixed_dictionaries(
    {
        "apiVersion": st.sampled_from(["v1", "apps/v1", "batch/v1", "a/b/c", ""]),
        "kind": st.sampled_from(["ConfigMap", "Deployment", "Job", "Namespace", "Bad/Kind"]),
        "metadata": st.fixed_dictionaries(
            {"name": TEXT}, optional={"namespace": TEXT, "labels": st.dictionaries(TEXT, TEXT)}
        ),
    },
    optional={"spec": st.dictionaries(st.sampled_from(["replicas", "parallelism", "x"]), JSON)},
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


def _json_value(value: Any) -> struct_pb2.Value:
    struct = struct_pb2.Struct()
    struct.update({"v": value})
    return struct.fields["v"]


def _field_value(field: FieldDescriptor, depth: int) -> st.SearchStrategy[Any]:
    if field.type == FieldDescriptor.TYPE_STRING and field.name in FIELD_TEXT:
        return st.one_of(FIELD_TEXT[field.name], FIELD_TEXT[field.name], TEXT)
    if field.type == FieldDescriptor.TYPE_ENUM:
        return st.sampled_from([v.number for v in field.enum_type.values])
    if field.type != FieldDescriptor.TYPE_MESSAGE:
        return SCALARS[field.type]
    return messages(field.message_type, depth + 1)


@st.composite
def _message(draw: st.DrawFn, descriptor: Any, depth: int) -> pb_message.Message:
    cls = message_factory.GetMessageClass(descriptor)
    name = descriptor.full_name
    if name == "google.protobuf.Struct":
        if draw(st.booleans()):
            manifest: Any = draw(MANIFEST)
        else:
            manifest = draw(st.dictionaries(TEXT, JSON, max_size=4))
        struct = struct_pb2.Struct()
        struct.update(manifest)
        return struct
    if name == "google.protobuf.Value":
        return _json_value(draw(JSON))
    if name == "google.protobuf.ListValue":
        values = struct_pb2.ListValue()
        values.extend(draw(st.lists(JSON, max_size=3)))
        return values
    message = cls()
    if depth > 4:
        return message
    for field in descriptor.fields:
        if draw(st.booleans()):  # leave about half of the fields unset
            continue
        if field.message_type is not None and field.message_type.GetOptions().map_entry:
            key = _field_value(field.message_type.fields_by_name["key"], depth)
            value = _field_value(field.message_type.fields_by_name["value"], depth)
            entries = draw(st.dictionaries(key, value, max_size=3))
            target = getattr(message, field.name)
            for k, v in entries.items():
                if isinstance(v, pb_message.Message):
                    target[k].CopyFrom(v)
                else:
                    target[k] = v
        elif field.is_repeated:
            items = draw(st.lists(_field_value(field, depth), max_size=3))
            target = getattr(message, field.name)
            for item in items:
                if isinstance(item, pb_message.Message):
                    target.add().CopyFrom(item)
                else:
                    target.append(item)
        elif field.type == FieldDescriptor.TYPE_MESSAGE:
            getattr(message, field.name).CopyFrom(draw(_field_value(field, depth)))
        else:
            setattr(message, field.name, draw(_field_value(field, depth)))
    return message


def messages(descriptor: Any, depth: int = 0) -> st.SearchStrategy[pb_message.Message]:
    return _message(descriptor, depth)


@st.composite
def requests(draw: st.DrawFn) -> tuple[str, bytes]:
    method, descriptor = draw(st.sampled_from(METHODS))
    return method, draw(messages(descriptor)).SerializeToString()


def _valid_bases() -> dict[str, pb_message.Message]:
    """A valid request for each Apply method, to be perturbed."""
    selector = [{"apiVersion": "apps/v1", "kind": "Deployment", "name": "web"}]
    placement = {"clusterAffinity": {"clusterNames": ["member1"]}}
    bases: dict[str, tuple[Any, Any]] = {
        "PropagationPolicyService": (
            policy_pb2.PropagationPolicy(),
            {
                "metadata": {"name": "p", "namespace": "default", "labels": {"app": "web"}},
                "spec": {"resourceSelectors": selector, "placement": placement},
            },
        ),
        "ClusterPropagationPolicyService": (
            policy_pb2.ClusterPropagationPolicy(),
            {"metadata": {"name": "cp"}, "spec": {"resourceSelectors": selector}},
        ),
        "OverridePolicyService": (
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
        "MemberClusterService": (
            cluster_pb2.MemberCluster(),
            {"metadata": {"name": "member2"}, "spec": {"syncMode": "Pull"}},
        ),
    }
    valid = {
        f"/archipel.v1alpha1.{service}/Apply": json_format.ParseDict(body, message)
        for service, (message, body) in bases.items()
    }
    deployment: dict[str, Any] = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "web", "namespace": "default", "labels": {"app": "web"}},
        "spec": {"replicas": 3, "template": {"spec": {"containers": [{"name": "c"}]}}},
    }
    template = work_pb2.ResourceTemplate()
    template.manifest.update(deployment)
    valid["/archipel.v1alpha1.ResourceTemplateService/Apply"] = template
    return valid


VALID = _valid_bases()


@st.composite
def perturbed(draw: st.DrawFn) -> tuple[str, bytes]:
    """A valid object with random fields merged over it: most get past validation."""
    method = draw(st.sampled_from(sorted(VALID)))
    message = type(VALID[method])()
    message.CopyFrom(VALID[method])
    message.MergeFrom(draw(messages(message.DESCRIPTOR, depth=2)))
    return method, message.SerializeToString()


@st.composite
def mangled(draw: st.DrawFn) -> tuple[str, bytes]:
    method, data = draw(requests())
    how = draw(st.sampled_from(["random", "truncate", "flip", "splice"]))
    if how == "random" or not data:
        return method, draw(st.binary(max_size=64))
    position = draw(st.integers(0, len(data) - 1))
    if how == "truncate":
        return method, data[:position]
    if how == "flip":
        return method, data[:position] + bytes([data[position] ^ 0xFF]) + data[position + 1 :]
    return method, data[:position] + draw(st.binary(min_size=1, max_size=8)) + data[position:]


@pytest.fixture(scope="module")
def plane(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Plane]:
    yield from start_plane(tmp_path_factory.mktemp("api-fuzz"))


def _check(plane: Plane, method: str, data: bytes) -> None:
    answer = plane.api.unary(method, data, timeout=30)
    event(f"{method.rpartition('/')[2]}: {answer.code.name}")
    assert answer.code not in BAD_CODES, (method, data, answer)


def test_random_messages_get_meaningful_codes(plane: Plane) -> None:
    @SETTINGS
    @given(requests())
    def run(request: tuple[str, bytes]) -> None:
        _check(plane, *request)

    run()
    assert plane.process.serving()


def test_perturbed_valid_objects_get_meaningful_codes(plane: Plane) -> None:
    @SETTINGS
    @given(perturbed())
    def run(request: tuple[str, bytes]) -> None:
        _check(plane, *request)

    run()
    assert plane.process.serving()


def test_random_and_mangled_bytes_get_meaningful_codes(plane: Plane) -> None:
    @SETTINGS
    @given(mangled())
    def run(request: tuple[str, bytes]) -> None:
        _check(plane, *request)

    run()
    assert plane.process.serving()
    assert "Traceback" not in plane.process.process.log_tail(2000)
