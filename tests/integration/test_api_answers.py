"""The API answers hostile or unusual requests with the right code and a short message.

Against a real control plane on a real etcd, over raw gRPC: undecodable requests,
oversized objects, bad continue tokens and resourceVersions, huge echoed values,
pages bounded by bytes, and works of cluster-scoped templates read by name.
"""

from __future__ import annotations

import asyncio
import base64
import time
from collections.abc import Iterator
from typing import Any

import etcd3aio
import grpc
import pytest
from google.protobuf import json_format

from archipel import limits, structs
from archipel.v1alpha1 import cluster_pb2, policy_pb2, service_pb2, work_pb2
from tests.integration.rawgrpc import Answer, Plane, start_plane

pytestmark = pytest.mark.servers

API = "/archipel.v1alpha1."
TEMPLATES = f"{API}ResourceTemplateService/"
CLUSTERS = f"{API}MemberClusterService/"
INVALID = grpc.StatusCode.INVALID_ARGUMENT


@pytest.fixture(scope="module")
def plane(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Plane]:
    yield from start_plane(tmp_path_factory.mktemp("api-answers"))


def template(manifest: dict[str, Any]) -> bytes:
    return work_pb2.ResourceTemplate(manifest=structs.to_struct(manifest)).SerializeToString()


def config_map(name: str, data: dict[str, str], namespace: str = "answers") -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": name, "namespace": namespace},
        "data": data,
    }


def apply(plane: Plane, manifest: dict[str, Any]) -> Answer:
    return plane.api.unary(f"{TEMPLATES}Apply", template(manifest))


def assert_invalid(answer: Answer, *fields: str) -> None:
    assert answer.code == INVALID, answer
    assert len(answer.details.encode()) <= limits.MAX_STATUS_MESSAGE_BYTES
    for field in fields:
        assert field in answer.details, answer.details


def compact(plane: Plane) -> int:
    """Compact etcd's whole history; returns the revision compacted to."""

    async def run() -> int:
        client = etcd3aio.Etcd3Client([plane.etcd.endpoint.removeprefix("http://")])
        await client.connect()
        try:
            assert client.kv is not None
            # A write makes sure the compacted revision is past everything listed so far.
            put = await client.kv.put(b"/compaction-marker", b"x")
            revision: int = put.header.revision
            await client.kv.compact(revision, physical=True)
            return revision
        finally:
            await client.close()

    return asyncio.run(run())


# -- requests that are not valid protobuf ---------------------------------------------------


def test_undecodable_bytes_are_invalid_argument(plane: Plane) -> None:
    for method in (f"{TEMPLATES}Apply", f"{CLUSTERS}Apply", f"{CLUSTERS}Get", f"{TEMPLATES}List"):
        for garbage in (b"\xff\xff\xff\xff", b"\x0a\x05ab", b"\x0f", b"\x00"):
            assert_invalid(plane.api.unary(method, garbage), "cannot decode")


def test_invalid_utf8_is_invalid_argument_naming_the_field(plane: Plane) -> None:
    raw = template(config_map("utf8", {"KEYX": "v"})).replace(b"KEYX", b"\xff\xfe\xfd\xfc")
    assert_invalid(plane.api.unary(f"{TEMPLATES}Apply", raw), "manifest", "cannot decode")

    cluster = cluster_pb2.MemberCluster()
    cluster.metadata.name = "NAMEX"
    raw = cluster.SerializeToString().replace(b"NAMEX", b"\xc3\x28abc")
    assert_invalid(plane.api.unary(f"{CLUSTERS}Apply", raw), "metadata.name")

    raw = (
        service_pb2.GetRequest(name="NAMEX")
        .SerializeToString()
        .replace(b"NAMEX", b"\xed\xa0\x80ab")
    )
    assert_invalid(plane.api.unary(f"{CLUSTERS}Get", raw), "name")


# -- sizes and depth --------------------------------------------------------------------------


@pytest.mark.parametrize("mebibytes", [1.5, 2, 3.5])
def test_oversized_templates_are_invalid_argument(plane: Plane, mebibytes: float) -> None:
    answer = apply(plane, config_map("big", {"blob": "x" * int(mebibytes * 1024 * 1024)}))
    assert_invalid(answer, "manifest", "bytes")


def test_requests_over_the_receive_limit_are_refused_by_grpc(plane: Plane) -> None:
    # Past MAX_RECEIVE_BYTES gRPC refuses the message from its length prefix, before
    # buffering it: a run of such requests costs the control plane no memory.
    answer = apply(plane, config_map("big", {"blob": "x" * (10 * 1024 * 1024)}))
    assert answer.code == grpc.StatusCode.RESOURCE_EXHAUSTED, answer


def test_oversized_policy_is_invalid_argument(plane: Plane) -> None:
    policy = policy_pb2.PropagationPolicy()
    policy.metadata.name = "big"
    policy.metadata.namespace = "answers"
    selector = policy.spec.resource_selectors.add(api_version="v1", kind="ConfigMap")
    selector.name = "x" * (3 * 1024 * 1024)
    answer = plane.api.unary(f"{API}PropagationPolicyService/Apply", policy.SerializeToString())
    assert_invalid(answer, "bytes")


def test_too_deep_template_is_invalid_argument(plane: Plane) -> None:
    nested: Any = "leaf"
    for _ in range(limits.MAX_MANIFEST_DEPTH):
        nested = {"a": nested}
    answer = apply(plane, {**config_map("deep", {}), "spec": nested})
    assert_invalid(answer, "manifest", "nested")


def test_a_huge_echoed_value_arrives_as_a_short_invalid_argument(plane: Plane) -> None:
    manifest = config_map("echo", {})
    manifest["metadata"]["labels"] = {"app": "v" * 100_000}
    assert_invalid(apply(plane, manifest), "metadata.labels")

    manifest = config_map("echo", {})
    manifest["kind"] = "K" * 100_000
    assert_invalid(apply(plane, manifest), "kind")

    answer = plane.api.unary(
        f"{CLUSTERS}List",
        service_pb2.ListRequest(label_selector="a" * 100_000 + "=b").SerializeToString(),
    )
    assert_invalid(answer, "labelSelector")


def test_bad_input_that_kube_apiserver_refuses(plane: Plane) -> None:
    deployment: dict[str, Any] = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "web", "namespace": "answers"},
        "spec": {"replicas": -1},
    }
    assert_invalid(apply(plane, deployment), "spec.replicas")
    assert_invalid(apply(plane, {**deployment, "apiVersion": "a/b/c/v1"}), "apiVersion")
    assert_invalid(apply(plane, {**deployment, "kind": "De/ploy"}), "kind")
    upper = {**deployment, "metadata": {"name": "Web", "namespace": "answers"}}
    assert_invalid(apply(plane, upper), "metadata.name")
    answer = plane.api.unary(
        f"{CLUSTERS}List", service_pb2.ListRequest(label_selector="a//b=c").SerializeToString()
    )
    assert_invalid(answer, "labelSelector")


# -- continue tokens and resourceVersions ---------------------------------------------------


def token(text: str) -> str:
    return base64.urlsafe_b64encode(text.encode()).decode()


def list_templates(plane: Plane, **fields: Any) -> tuple[Answer, service_pb2.ResourceTemplateList]:
    continue_token = fields.pop("continue_token", "")
    request = service_pb2.TemplateListRequest(**fields)
    setattr(request, "continue", continue_token)
    answer = plane.api.unary(f"{TEMPLATES}List", request.SerializeToString())
    return answer, service_pb2.ResourceTemplateList.FromString(answer.body)


@pytest.mark.parametrize(
    "bad",
    [
        "!!!not base64!!!",
        "ÿ",
        token("no colon here"),
        token("abc:templates/"),
        token("-5:templates/"),
        token("0:templates/"),
        token("99999999999999999999:templates/"),
        token("7:memberclusters/_/a"),
        token("999999999:templates/core/ConfigMap/answers/a"),
    ],
)
def test_bad_continue_tokens_are_invalid_argument(plane: Plane, bad: str) -> None:
    answer, _ = list_templates(plane, limit=1, continue_token=bad)
    assert_invalid(answer, "continue")


def test_an_expired_continue_token_is_out_of_range(plane: Plane) -> None:
    for index in range(3):
        assert (
            apply(plane, config_map(f"page-{index}", {"i": str(index)})).code == grpc.StatusCode.OK
        )
    answer, page = list_templates(plane, limit=1)
    assert answer.code == grpc.StatusCode.OK
    next_token = getattr(page, "continue")
    assert next_token
    compact(plane)
    answer, _ = list_templates(plane, limit=1, continue_token=next_token)
    assert answer.code == grpc.StatusCode.OUT_OF_RANGE, answer
    assert "continue" in answer.details and "list again" in answer.details


def test_watch_from_a_negative_resource_version_is_invalid_argument(plane: Plane) -> None:
    for version in ("-1", "1.5", "abc", "99999999999999999999"):
        request = service_pb2.WatchRequest(resource_version=version).SerializeToString()
        answer = plane.api.stream(f"{CLUSTERS}Watch", request)
        assert_invalid(answer, "resourceVersion")


def test_watch_from_a_compacted_resource_version_is_out_of_range(plane: Plane) -> None:
    assert apply(plane, config_map("before-compaction", {})).code == grpc.StatusCode.OK
    compact(plane)
    request = service_pb2.TemplateWatchRequest(resource_version="1").SerializeToString()
    answer = plane.api.stream(f"{TEMPLATES}Watch", request)
    assert answer.code == grpc.StatusCode.OUT_OF_RANGE, answer
    assert "resourceVersion" in answer.details and "list again" in answer.details


# -- pages by bytes -----------------------------------------------------------------------------


def test_lists_are_paged_by_bytes(plane: Plane) -> None:
    blob = "y" * (300 * 1024)
    for index in range(30):
        manifest = config_map(f"heavy-{index:02d}", {"blob": blob}, namespace="heavy")
        assert apply(plane, manifest).code == grpc.StatusCode.OK
    names: list[str] = []
    pages = 0
    next_token = ""
    while True:
        answer, page = list_templates(
            plane, api_version="v1", kind="ConfigMap", continue_token=next_token
        )
        assert answer.code == grpc.StatusCode.OK, answer
        pages += 1
        assert len(answer.body) <= limits.MAX_LIST_PAGE_BYTES + 400 * 1024
        for item in page.items:
            metadata = structs.from_struct(item.manifest)["metadata"]
            if metadata["namespace"] == "heavy":
                names.append(metadata["name"])
        next_token = getattr(page, "continue")
        if not next_token:
            break
    assert pages >= 3
    assert names == [f"heavy-{index:02d}" for index in range(30)]


# -- works of cluster-scoped templates ------------------------------------------------------


def test_the_work_of_a_cluster_scoped_template_can_be_read_by_name(plane: Plane) -> None:
    joined = plane.api.unary(
        f"{API}ClusterAdminService/Join",
        service_pb2.JoinRequest(name="member1").SerializeToString(),
    )
    assert joined.code == grpc.StatusCode.OK, joined
    namespace = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "answers-ns"}}
    assert apply(plane, namespace).code == grpc.StatusCode.OK
    # The member has no agent: tolerate its taints so the template is scheduled anyway.
    policy = json_format.ParseDict(
        {
            "metadata": {"name": "answers-ns"},
            "spec": {
                "resourceSelectors": [
                    {"apiVersion": "v1", "kind": "Namespace", "name": "answers-ns"}
                ],
                "placement": {
                    "clusterAffinity": {"clusterNames": ["member1"]},
                    "clusterTolerations": [{"operator": "Exists"}],
                },
            },
        },
        policy_pb2.ClusterPropagationPolicy(),
    )
    answer = plane.api.unary(
        f"{API}ClusterPropagationPolicyService/Apply", policy.SerializeToString()
    )
    assert answer.code == grpc.StatusCode.OK, answer
    works = f"{API}PropagationWorkService/"
    listing = service_pb2.ListRequest(namespace="archipel-es-member1").SerializeToString()
    name = ""
    deadline = time.monotonic() + 30
    while not name:
        assert time.monotonic() < deadline, "no work was created for the Namespace"
        answer = plane.api.unary(f"{works}List", listing)
        assert answer.code == grpc.StatusCode.OK, answer
        found = service_pb2.PropagationWorkList.FromString(answer.body)
        name = next((w.metadata.name for w in found.items if "answers-ns" in w.metadata.name), "")
        time.sleep(0.2)
    assert name.startswith("_.")
    request = service_pb2.GetRequest(namespace="archipel-es-member1", name=name)
    answer = plane.api.unary(f"{works}Get", request.SerializeToString())
    assert answer.code == grpc.StatusCode.OK, answer
    assert work_pb2.PropagationWork.FromString(answer.body).metadata.name == name


def test_the_server_stays_healthy(plane: Plane) -> None:
    assert plane.process.serving()
