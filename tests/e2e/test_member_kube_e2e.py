"""The agent's member client against a real kube-apiserver: deleting an object only
when it is the work's own (the write-ahead ledger's pending objects, agent/works.py)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from kubernetes import client as k8s

from agent.kube import Kube
from archipel.core.names import WORK_ANNOTATION
from archipel.fleet.members import Fleet

pytestmark = pytest.mark.members(count=1, profile="api")
NAMESPACE = "delete-owned"


@pytest.fixture
def kube(members: Fleet) -> Iterator[Kube]:
    member = next(iter(members.members.values()))
    kube = Kube(member.api_client())
    kube.ensure_namespace(NAMESPACE)
    try:
        yield kube
    finally:
        kube.close()


def _config_map(kube: Kube, name: str, annotations: dict[str, str]) -> None:
    kube.apply(
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": name, "namespace": NAMESPACE, "annotations": annotations},
            "data": {"k": "v"},
        }
    )


def test_only_an_object_carrying_the_works_annotation_is_deleted(kube: Kube) -> None:
    _config_map(kube, "ours", {WORK_ANNOTATION: "w1"})
    _config_map(kube, "theirs", {})
    assert not kube.delete_owned(
        "v1", "ConfigMap", NAMESPACE, "ours", annotation=WORK_ANNOTATION, value="w2"
    )
    assert not kube.delete_owned(
        "v1", "ConfigMap", NAMESPACE, "theirs", annotation=WORK_ANNOTATION, value="w1"
    )
    assert kube.delete_owned(
        "v1", "ConfigMap", NAMESPACE, "ours", annotation=WORK_ANNOTATION, value="w1"
    )
    core = k8s.CoreV1Api(kube.api_client)
    left = {item.metadata.name for item in core.list_namespaced_config_map(NAMESPACE).items}
    assert "ours" not in left and "theirs" in left


def test_an_object_that_is_gone_or_not_served_is_not_deleted(kube: Kube) -> None:
    assert not kube.delete_owned(
        "v1", "ConfigMap", NAMESPACE, "never-made", annotation=WORK_ANNOTATION, value="w1"
    )
    assert not kube.delete_owned(
        "example.com/v1", "Gadget", NAMESPACE, "g", annotation=WORK_ANNOTATION, value="w1"
    )
