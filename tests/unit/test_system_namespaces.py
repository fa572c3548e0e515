"""System namespaces are never propagated, whatever the policy (as Karmada skips kube-*)."""

from __future__ import annotations

from typing import Any

import pytest

from archipel.core import matching
from archipel.v1alpha1 import policy_pb2

SYSTEM = ("kube-system", "kube-public", "kube-node-lease", "archipel-system", "archipel-es-m1")


def configmap(namespace: str, name: str = "settings") -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": name, "namespace": namespace},
    }


def namespace_object(name: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}}


def cpp(kind: str = "ConfigMap", name: str = "") -> policy_pb2.ClusterPropagationPolicy:
    policy = policy_pb2.ClusterPropagationPolicy()
    policy.metadata.name = "everything"
    policy.spec.resource_selectors.add(api_version="v1", kind=kind, name=name)
    return policy


def pp(namespace: str) -> policy_pb2.PropagationPolicy:
    policy = policy_pb2.PropagationPolicy()
    policy.metadata.name = "local"
    policy.metadata.namespace = namespace
    policy.spec.resource_selectors.add(api_version="v1", kind="ConfigMap", name="settings")
    return policy


@pytest.mark.parametrize("namespace", SYSTEM)
def test_templates_in_system_namespaces_match_no_policy(namespace: str) -> None:
    template = configmap(namespace)
    assert matching.is_system(template)
    # Neither a ClusterPropagationPolicy for every ConfigMap, nor one naming the object,
    # nor a PropagationPolicy in that very namespace.
    assert matching.choose(template, [pp(namespace)], [cpp(), cpp(name="settings")]) is None
    assert matching.candidates(template, [pp(namespace)], [cpp()]) == []


@pytest.mark.parametrize("name", SYSTEM)
def test_system_namespace_objects_match_no_policy(name: str) -> None:
    template = namespace_object(name)
    assert matching.is_system(template)
    assert matching.choose(template, [], [cpp("Namespace"), cpp("Namespace", name)]) is None


@pytest.mark.parametrize("namespace", ["default", "shop", "kubernetes", "archipel", "my-kube-"])
def test_other_namespaces_are_propagated(namespace: str) -> None:
    template = configmap(namespace)
    assert not matching.is_system(template)
    chosen = matching.choose(template, [], [cpp()])
    assert chosen is not None and chosen.policy.metadata.name == "everything"
    assert not matching.is_system(namespace_object(namespace))
    assert matching.choose(namespace_object(namespace), [], [cpp("Namespace")]) is not None


def test_cluster_scoped_templates_are_not_system() -> None:
    role: dict[str, Any] = {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "ClusterRole",
        "metadata": {"name": "kube-reader"},
    }
    assert not matching.is_system(role)
