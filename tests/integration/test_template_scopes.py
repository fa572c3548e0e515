"""Template kinds' scope on a real control plane (real etcd): ``GetScope`` answers it,
Apply holds templates to it, and a CRD template that would contradict the templates of
its kind already stored is refused, on apply and on delete."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import grpc
import pytest

from archipel import structs
from archipel.client import Client, ClientError
from archipel.fleet.controlplane import ControlPlaneProcess
from archipel.v1alpha1 import work_pb2

pytestmark = pytest.mark.servers

GROUP = "scopes.example.com"
CR_API_VERSION = f"{GROUP}/v1"


def crd(scope: str) -> dict[str, Any]:
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"gadgets.{GROUP}"},
        "spec": {
            "group": GROUP,
            "names": {"kind": "Gadget", "plural": "gadgets", "singular": "gadget"},
            "scope": scope,
            "versions": [
                {
                    "name": "v1",
                    "served": True,
                    "storage": True,
                    "schema": {"openAPIV3Schema": {"type": "object"}},
                }
            ],
        },
    }


def gadget(name: str, namespace: str = "") -> dict[str, Any]:
    metadata: dict[str, Any] = {"name": name}
    if namespace:
        metadata["namespace"] = namespace
    return {"apiVersion": CR_API_VERSION, "kind": "Gadget", "metadata": metadata}


@pytest.fixture
def client(plane: ControlPlaneProcess) -> Iterator[Client]:
    opened = plane.client()
    yield opened
    opened.close()


def apply(client: Client, manifest: dict[str, Any]) -> dict[str, Any]:
    template = work_pb2.ResourceTemplate(manifest=structs.to_struct(manifest))
    return structs.from_struct(client.apply_template(template).manifest)


def scope_of(client: Client, api_version: str, kind: str) -> tuple[str, bool, str]:
    client.forget_scopes()  # each answer from the server, not the client's cache
    scope = client.template_scope(api_version, kind)
    return scope.group, scope.namespaced, scope.defined_by


@pytest.mark.parametrize(
    ("api_version", "kind", "namespaced"),
    [
        ("scheduling.k8s.io/v1", "PriorityClass", False),
        ("storage.k8s.io/v1", "StorageClass", False),
        ("rbac.authorization.k8s.io/v1", "ClusterRoleBinding", False),
        ("apiextensions.k8s.io/v1", "CustomResourceDefinition", False),
        ("apps/v1", "Deployment", True),
        (CR_API_VERSION, "Gadget", True),
    ],
)
def test_get_scope_answers_the_built_in_rule(
    client: Client, api_version: str, kind: str, namespaced: bool
) -> None:
    group = api_version.rpartition("/")[0]
    assert scope_of(client, api_version, kind) == (group, namespaced, "")


@pytest.mark.parametrize(
    ("api_version", "kind", "field"),
    [("", "Gadget", "apiVersion"), (CR_API_VERSION, "", "kind"), ("a/b/c", "Gadget", "apiVersion")],
)
def test_get_scope_names_a_bad_argument(
    client: Client, api_version: str, kind: str, field: str
) -> None:
    with pytest.raises(ClientError) as refused:
        client.template_scope(api_version, kind)
    assert refused.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert f": {field}: " in str(refused.value)


def test_a_cluster_scoped_crd_makes_its_custom_resources_cluster_scoped(client: Client) -> None:
    apply(client, crd("Cluster"))
    # The CRD's apply answers once its scope holds: the very next apply is held to it.
    applied = apply(client, gadget("one"))
    assert "namespace" not in applied["metadata"]
    found = client.get_template(CR_API_VERSION, "Gadget", "one", "")
    assert structs.from_struct(found.manifest)["metadata"]["name"] == "one"
    assert scope_of(client, CR_API_VERSION, "Gadget") == (GROUP, False, f"gadgets.{GROUP}")
    with pytest.raises(ClientError) as refused:
        apply(client, gadget("two", "team"))
    assert refused.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert "metadata.namespace: must be empty: Gadget is cluster-scoped" in str(refused.value)
    # Another group's Gadget is another kind.
    other = {**gadget("three"), "apiVersion": "other.example.com/v1"}
    assert apply(client, other)["metadata"]["namespace"] == "default"


def test_a_custom_resource_applied_before_its_crd_is_namespaced_and_blocks_the_crd(
    client: Client,
) -> None:
    early = apply(client, gadget("early"))
    assert early["metadata"]["namespace"] == "default"
    with pytest.raises(ClientError) as refused:
        apply(client, crd("Cluster"))
    assert refused.value.code == grpc.StatusCode.FAILED_PRECONDITION
    assert "default/early" in str(refused.value)
    assert scope_of(client, CR_API_VERSION, "Gadget") == (GROUP, True, "")
    # A Namespaced CRD agrees with what is stored.
    apply(client, crd("Namespaced"))
    assert scope_of(client, CR_API_VERSION, "Gadget") == (GROUP, True, f"gadgets.{GROUP}")
    # Switching it to Cluster would strand the template in default: refused as well.
    with pytest.raises(ClientError) as switched:
        apply(client, crd("Cluster"))
    assert switched.value.code == grpc.StatusCode.FAILED_PRECONDITION
    client.delete_template(CR_API_VERSION, "Gadget", "early", "default")
    apply(client, crd("Cluster"))
    assert scope_of(client, CR_API_VERSION, "Gadget") == (GROUP, False, f"gadgets.{GROUP}")


def test_a_cluster_scoped_crd_is_not_deleted_from_under_its_custom_resources(
    client: Client,
) -> None:
    apply(client, crd("Cluster"))
    apply(client, gadget("kept"))
    with pytest.raises(ClientError) as refused:
        client.delete_template("apiextensions.k8s.io/v1", "CustomResourceDefinition", crd_name())
    assert refused.value.code == grpc.StatusCode.FAILED_PRECONDITION
    assert "kept" in str(refused.value)
    assert client.delete_template(CR_API_VERSION, "Gadget", "kept")
    assert client.delete_template("apiextensions.k8s.io/v1", "CustomResourceDefinition", crd_name())
    # Its scope goes with it, by the time the delete answers.
    assert scope_of(client, CR_API_VERSION, "Gadget") == (GROUP, True, "")


def crd_name() -> str:
    return f"gadgets.{GROUP}"
