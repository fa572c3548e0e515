"""Bad input is refused with an error that names the field."""

from __future__ import annotations

from typing import Any

import pytest
from google.protobuf import json_format

from archipel.v1alpha1 import cluster_pb2, policy_pb2
from controlplane import validation
from controlplane.errors import Invalid


def policy(
    spec: dict[str, Any], *, name: str = "p", namespace: str = "default"
) -> policy_pb2.PropagationPolicy:
    return json_format.ParseDict(
        {"metadata": {"name": name, "namespace": namespace}, "spec": spec},
        policy_pb2.PropagationPolicy(),
    )


SELECTOR = [{"apiVersion": "apps/v1", "kind": "Deployment"}]


@pytest.mark.parametrize(
    ("spec", "field"),
    [
        ({}, "spec.resourceSelectors"),
        ({"resourceSelectors": [{"kind": "Deployment"}]}, "spec.resourceSelectors[0].apiVersion"),
        ({"resourceSelectors": [{"apiVersion": "v1"}]}, "spec.resourceSelectors[0].kind"),
        (
            {
                "resourceSelectors": [
                    {"apiVersion": "v1", "kind": "ConfigMap", "namespace": "other"}
                ]
            },
            "spec.resourceSelectors[0].namespace",
        ),
        (
            {
                "resourceSelectors": [
                    {
                        "apiVersion": "v1",
                        "kind": "ConfigMap",
                        "labelSelector": {"matchExpressions": [{"key": "a", "operator": "Near"}]},
                    }
                ]
            },
            "spec.resourceSelectors[0].labelSelector.matchExpressions[0].operator",
        ),
        (
            {
                "resourceSelectors": SELECTOR,
                "placement": {"clusterAffinity": {"clusterNames": ["Bad_Name"]}},
            },
            "spec.placement.clusterAffinity.clusterNames[0]",
        ),
        (
            {
                "resourceSelectors": SELECTOR,
                "placement": {"replicaScheduling": {"replicaSchedulingType": "Tripled"}},
            },
            "spec.placement.replicaScheduling.replicaSchedulingType",
        ),
        (
            {
                "resourceSelectors": SELECTOR,
                "placement": {
                    "clusterAffinity": {"clusterNames": ["a"]},
                    "clusterAffinities": [{"affinityName": "x"}],
                },
            },
            "spec.placement.clusterAffinities",
        ),
        (
            {
                "resourceSelectors": SELECTOR,
                "placement": {"spreadConstraints": [{"spreadByField": "planet"}]},
            },
            "spec.placement.spreadConstraints[0].spreadByField",
        ),
        (
            {
                "resourceSelectors": SELECTOR,
                "placement": {"clusterTolerations": [{"key": "k", "effect": "Evict"}]},
            },
            "spec.placement.clusterTolerations[0].effect",
        ),
        ({"resourceSelectors": SELECTOR, "preemption": "Sometimes"}, "spec.preemption"),
        ({"resourceSelectors": SELECTOR, "conflictResolution": "Merge"}, "spec.conflictResolution"),
        (
            {
                "resourceSelectors": SELECTOR,
                "placement": {
                    "replicaScheduling": {
                        "weightPreference": {
                            "staticWeightList": [
                                {"targetCluster": {"clusterNames": ["a"]}, "weight": 0}
                            ]
                        }
                    }
                },
            },
            "spec.placement.replicaScheduling.weightPreference.staticWeightList[0].weight",
        ),
    ],
)
def test_bad_policy_spec(spec: dict[str, Any], field: str) -> None:
    bad = policy(spec)
    with pytest.raises(Invalid) as error:
        validation.check_propagation_spec(bad.spec, policy_namespace="default")
    assert error.value.field == field
    assert str(error.value).startswith(f"{field}: ")


@pytest.mark.parametrize(
    ("name", "namespace", "field"),
    [
        ("", "default", "metadata.name"),
        ("Upper", "default", "metadata.name"),
        ("ok", "", "metadata.namespace"),
        ("ok", "Bad_NS", "metadata.namespace"),
    ],
)
def test_bad_metadata(name: str, namespace: str, field: str) -> None:
    with pytest.raises(Invalid) as error:
        validation.check_metadata(
            policy({}, name=name, namespace=namespace).metadata, namespaced=True
        )
    assert error.value.field == field


def test_cluster_scoped_kind_refuses_a_namespace() -> None:
    cluster = cluster_pb2.MemberCluster()
    cluster.metadata.name = "member1"
    cluster.metadata.namespace = "default"
    with pytest.raises(Invalid) as error:
        validation.check_member_cluster(cluster)
    assert error.value.field == "metadata.namespace"


@pytest.mark.parametrize(
    ("manifest", "field"),
    [
        ([], "manifest"),
        ({"kind": "ConfigMap", "metadata": {"name": "a"}}, "apiVersion"),
        ({"apiVersion": "v1", "metadata": {"name": "a"}}, "kind"),
        ({"apiVersion": "v1", "kind": "ConfigMap"}, "metadata"),
        ({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {}}, "metadata.name"),
        ({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "a b"}}, "metadata.name"),
        (
            {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "a", "namespace": "b"}},
            "metadata.namespace",
        ),
        (
            {
                "apiVersion": "v1",
                "kind": "ConfigMap",
                "metadata": {"name": "a", "labels": {"k": 1}},
            },
            "metadata.labels",
        ),
    ],
)
def test_bad_templates(manifest: Any, field: str) -> None:
    with pytest.raises(Invalid) as error:
        validation.check_template(manifest)
    assert error.value.field == field


def test_template_namespace_defaults_like_kubectl() -> None:
    manifest = validation.check_template(
        {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "a"}}
    )
    assert manifest["metadata"]["namespace"] == "default"
    cluster_role = validation.check_template(
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRole",
            "metadata": {"name": "system:x"},
        }
    )
    assert "namespace" not in cluster_role["metadata"]
