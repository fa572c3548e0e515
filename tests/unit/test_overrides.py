"""Overriders, their order, and errors that name the policy and the overrider."""

from __future__ import annotations

from typing import Any

import pytest
import yaml
from google.protobuf import json_format

from archipel.core import overrides, validation
from archipel.core.errors import Invalid
from archipel.core.scheduling import ClusterInfo
from archipel.v1alpha1 import override_pb2

EU = ClusterInfo("eu-1", {"env": "prod"}, region="eu")
US = ClusterInfo("us-1", {"env": "dev"}, region="us")


def deployment() -> dict[str, Any]:
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "web", "namespace": "shop", "labels": {"app": "web"}},
        "spec": {
            "replicas": 3,
            "template": {
                "spec": {
                    "containers": [
                        {"name": "web", "image": "docker.io/library/nginx:1.27", "args": ["--a"]},
                        {"name": "side", "image": "busybox"},
                    ]
                }
            },
        },
    }


def policy(spec: dict[str, Any], *, name: str = "p", cluster: bool = False) -> Any:
    kind = override_pb2.ClusterOverridePolicy if cluster else override_pb2.OverridePolicy
    metadata = {"name": name} if cluster else {"name": name, "namespace": "shop"}
    return json_format.ParseDict({"metadata": metadata, "spec": spec}, kind())


@pytest.mark.parametrize(
    ("image", "parts"),
    [
        ("nginx", ("", "nginx", "", "")),
        ("nginx:1.27", ("", "nginx", "1.27", "")),
        ("docker.io/library/nginx:1.27", ("docker.io", "library/nginx", "1.27", "")),
        ("localhost:5000/app@sha256:abc", ("localhost:5000", "app", "", "sha256:abc")),
        ("team/app:v1", ("", "team/app", "v1", "")),
    ],
)
def test_image_references(image: str, parts: tuple[str, str, str, str]) -> None:
    assert overrides.split_image(image) == parts
    assert overrides.join_image(*parts) == image


def test_image_overrider_by_region() -> None:
    rule = {
        "resourceSelectors": [{"apiVersion": "apps/v1", "kind": "Deployment"}],
        "overrideRules": [
            {
                "targetCluster": {
                    "fieldSelector": {
                        "matchExpressions": [{"key": "region", "operator": "In", "values": ["eu"]}]
                    }
                },
                "overriders": {
                    "imageOverrider": [
                        {"component": "Registry", "operator": "replace", "value": "eu.registry.io"}
                    ]
                },
            }
        ],
    }
    eu, applied = overrides.apply(deployment(), [policy(rule)], EU)
    assert [c["image"] for c in eu["spec"]["template"]["spec"]["containers"]] == [
        "eu.registry.io/library/nginx:1.27",
        "eu.registry.io/busybox",
    ]
    assert applied == ["OverridePolicy shop/p"]
    us, applied = overrides.apply(deployment(), [policy(rule)], US)
    assert us == deployment() and applied == []


def test_every_overrider_in_karmada_order() -> None:
    spec = {
        "overrideRules": [
            {
                "overriders": {
                    "plaintext": [{"path": "/spec/replicas", "operator": "replace", "value": 1}],
                    "imageOverrider": [
                        {
                            "predicate": {"path": "/spec/template/spec/containers/0/image"},
                            "component": "Tag",
                            "operator": "replace",
                            "value": "1.28",
                        }
                    ],
                    "argsOverrider": [
                        {"containerName": "web", "operator": "add", "value": ["--b"]}
                    ],
                    "commandOverrider": [
                        {"containerName": "side", "operator": "add", "value": ["sh"]}
                    ],
                    "labelsOverrider": [{"operator": "add", "value": {"region": "eu"}}],
                    "annotationsOverrider": [{"operator": "add", "value": {"owner": "team"}}],
                }
            }
        ]
    }
    result, _ = overrides.apply(deployment(), [policy(spec)], EU)
    containers = result["spec"]["template"]["spec"]["containers"]
    assert result["spec"]["replicas"] == 1
    assert containers[0]["image"] == "docker.io/library/nginx:1.28"
    assert containers[0]["args"] == ["--a", "--b"]
    assert containers[1]["command"] == ["sh"]
    assert result["metadata"]["labels"] == {"app": "web", "region": "eu"}
    assert result["metadata"]["annotations"] == {"owner": "team"}


def test_field_overrider_patches_embedded_yaml() -> None:
    config_map = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "c", "namespace": "shop"},
        "data": {"app.yaml": "db:\n  host: local\n  port: 5432\n"},
    }
    spec = {
        "overrideRules": [
            {
                "overriders": {
                    "fieldOverrider": [
                        {
                            "fieldPath": "/data/app.yaml",
                            "yaml": [
                                {"subPath": "/db/host", "operator": "replace", "value": "eu.db"}
                            ],
                        }
                    ]
                }
            }
        ]
    }
    result, _ = overrides.apply(config_map, [policy(spec)], EU)
    assert yaml.safe_load(result["data"]["app.yaml"]) == {"db": {"host": "eu.db", "port": 5432}}


def test_order_cluster_first_then_least_specific_first() -> None:
    def replicas(value: int) -> dict[str, Any]:
        return {
            "overrideRules": [
                {
                    "overriders": {
                        "plaintext": [
                            {"path": "/spec/replicas", "operator": "replace", "value": value}
                        ]
                    }
                }
            ]
        }

    by_name = policy(
        {
            **replicas(5),
            "resourceSelectors": [{"apiVersion": "apps/v1", "kind": "Deployment", "name": "web"}],
        },
        name="a-by-name",
    )
    by_kind = policy(
        {**replicas(4), "resourceSelectors": [{"apiVersion": "apps/v1", "kind": "Deployment"}]},
        name="z-by-kind",
    )
    everything = policy(replicas(3), name="m-all")
    cluster_wide = policy(replicas(9), name="c", cluster=True)
    ordered = overrides.ordered(deployment(), [by_name, by_kind, everything], [cluster_wide])
    assert [p.metadata.name for p in ordered] == ["c", "m-all", "z-by-kind", "a-by-name"]
    result, _ = overrides.apply(deployment(), ordered, EU)
    assert result["spec"]["replicas"] == 5  # the most specific policy has the last word


def test_a_bad_override_names_the_policy_and_the_overrider() -> None:
    spec = {
        "overrideRules": [
            {
                "overriders": {
                    "plaintext": [{"path": "/spec/nope/deeper", "operator": "replace", "value": 1}]
                }
            }
        ]
    }
    with pytest.raises(
        overrides.OverrideError,
        match=r"OverridePolicy shop/p: spec.overrideRules\[0\].overriders.plaintext\[0\]",
    ):
        overrides.apply(deployment(), [policy(spec)], EU)


@pytest.mark.parametrize(
    ("spec", "field"),
    [
        (
            {
                "overrideRules": [
                    {"overriders": {"plaintext": [{"path": "spec", "operator": "add", "value": 1}]}}
                ]
            },
            "spec.overrideRules[0].overriders.plaintext[0].path",
        ),
        (
            {
                "overrideRules": [
                    {"overriders": {"plaintext": [{"path": "/spec", "operator": "merge"}]}}
                ]
            },
            "spec.overrideRules[0].overriders.plaintext[0].operator",
        ),
        (
            {
                "overrideRules": [
                    {"overriders": {"imageOverrider": [{"component": "Host", "operator": "add"}]}}
                ]
            },
            "spec.overrideRules[0].overriders.imageOverrider[0].component",
        ),
        (
            {"overrideRules": [{"overriders": {"argsOverrider": [{"operator": "add"}]}}]},
            "spec.overrideRules[0].overriders.argsOverrider[0].containerName",
        ),
        (
            {"overrideRules": [{"targetCluster": {"clusterNames": ["Bad_Name"]}}]},
            "spec.overrideRules[0].targetCluster.clusterNames[0]",
        ),
    ],
)
def test_bad_override_policies_are_refused(spec: dict[str, Any], field: str) -> None:
    with pytest.raises(Invalid) as error:
        validation.check_override_spec(policy(spec).spec, policy_namespace="shop")
    assert error.value.field == field
