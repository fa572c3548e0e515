"""dependentOverrides, end to end on real members: a policy takes effect only once the
overrides it names exist (Karmada's detector), and says what it waits for."""

from __future__ import annotations

import functools
import json
from typing import Any

import pytest
from kubernetes.client.exceptions import ApiException

from tests.e2e.conftest import (
    Pipeline,
    configmap,
    deployment,
    override_policy,
    policy,
    wait_for,
)

pytestmark = pytest.mark.members(count=2, profile="api")
MEMBERS = ("member1", "member2")
TIMEOUT = 90.0
ADD_LABEL = {"labelsOverrider": [{"operator": "add", "value": {"overridden": "yes"}}]}


def controlplane_log(pipeline: Pipeline) -> str:
    return (pipeline.directory / "controlplane.log").read_text(errors="replace")


def described(pipeline: Pipeline, *args: str) -> str:
    found = pipeline.cli("describe", *args)
    assert found.returncode == 0, found.stderr
    return found.stdout


def bound(pipeline: Pipeline, api_version: str, kind: str, namespace: str, name: str) -> Any:
    api = pipeline.client()
    try:
        return api.binding_of(api_version, kind, namespace, name)
    finally:
        api.close()


def labels_on(pipeline: Pipeline, member: str, namespace: str) -> dict[str, str] | None:
    found = pipeline.deployment(member, namespace, "web")
    return None if found is None else dict(found.metadata.labels or {})


def overridden(pipeline: Pipeline, member: str, namespace: str) -> bool:
    return (labels_on(pipeline, member, namespace) or {}).get("overridden") == "yes"


def member_configmap(pipeline: Pipeline, member: str, namespace: str, name: str) -> Any:
    try:
        return pipeline.core(member).read_namespaced_config_map(name, namespace)
    except ApiException as error:
        if error.status == 404:
            return None
        raise


def binding_condition(pipeline: Pipeline, namespace: str, type_: str) -> dict[str, Any]:
    got = pipeline.cli("get", "pb", "web-deployment", "-n", namespace, "-o", "json")
    if got.returncode != 0:
        return {}
    conditions = json.loads(got.stdout).get("status", {}).get("conditions", [])
    return next((c for c in conditions if c["type"] == type_), {})


def test_policy_waits_for_its_override_then_propagates_with_it(
    pipeline: Pipeline, namespace: str
) -> None:
    propagate = policy(namespace, cluster_names=list(MEMBERS))
    propagate["spec"]["dependentOverrides"] = ["web-label"]
    pipeline.apply(deployment(namespace), propagate)

    # The controller decided to wait, and says so: in its log and in `describe`.
    waiting = f"waiting for OverridePolicy {namespace}/web-label"
    wait_for(
        "the policy controller to wait for the override",
        lambda: f"Deployment {namespace}/web: {waiting}" in controlplane_log(pipeline),
        timeout=TIMEOUT,
    )
    text = described(pipeline, "deployment", "web", "-n", namespace)
    assert f"not propagated ({waiting} (PropagationPolicy {namespace}/web" in text, text
    # So nothing was bound, and nothing reached the members.
    assert bound(pipeline, "apps/v1", "Deployment", namespace, "web") is None
    for member in MEMBERS:
        assert labels_on(pipeline, member, namespace) is None

    # The override appears: the policy takes effect at once, with the override applied.
    label = override_policy("web-label", [{"overriders": ADD_LABEL}], namespace=namespace)
    pipeline.apply(label)
    for member in MEMBERS:
        wait_for(
            f"web on {member} with the override",
            functools.partial(overridden, pipeline, member, namespace),
            timeout=TIMEOUT,
        )

    # Deleting the override later removes nothing, but (as in Karmada) holds the
    # policy's next change until it is back; the binding says why.
    deleted = pipeline.cli("delete", "overridepolicy", "web-label", "-n", namespace)
    assert deleted.returncode == 0, deleted.stderr
    only_member1 = policy(namespace, cluster_names=["member1"])
    only_member1["spec"]["dependentOverrides"] = ["web-label"]
    pipeline.apply(only_member1)
    condition = wait_for(
        "DependentOverridesReady=False on the binding",
        lambda: (
            found
            if (found := binding_condition(pipeline, namespace, "DependentOverridesReady")).get(
                "status"
            )
            == "False"
            else None
        ),
        timeout=TIMEOUT,
    )
    assert waiting in condition["message"], condition
    text = described(pipeline, "deployment", "web", "-n", namespace)
    assert f"DependentOverridesReady: False ({waiting}" in text, text
    assert labels_on(pipeline, "member2", namespace) is not None

    pipeline.apply(label)
    wait_for(
        "web to leave member2 once the override is back",
        lambda: labels_on(pipeline, "member2", namespace) is None,
        timeout=TIMEOUT,
    )
    assert binding_condition(pipeline, namespace, "DependentOverridesReady")["status"] == "True"
    wait_for(
        "the override on member1 again",
        functools.partial(overridden, pipeline, "member1", namespace),
        timeout=TIMEOUT,
    )


def test_cluster_policy_waits_for_a_cluster_override(pipeline: Pipeline, namespace: str) -> None:
    # A ClusterPropagationPolicy's names are ClusterOverridePolicies (Karmada's rule):
    # an OverridePolicy of the same name does not count.
    name = f"settings-{namespace}"
    selector = {"apiVersion": "v1", "kind": "ConfigMap", "namespace": namespace, "name": "settings"}
    cluster_policy = {
        "apiVersion": "policy.karmada.io/v1alpha1",
        "kind": "ClusterPropagationPolicy",
        "metadata": {"name": name},
        "spec": {
            "resourceSelectors": [selector],
            "placement": {"clusterAffinity": {"clusterNames": ["member1"]}},
            "dependentOverrides": [name],
        },
    }
    rules = [
        {"overriders": {"plaintext": [{"path": "/data/site", "operator": "add", "value": "x"}]}}
    ]
    namespaced = override_policy(name, rules, namespace=namespace, selectors=[selector])
    pipeline.apply(configmap(namespace, "settings", {"a": "1"}), namespaced, cluster_policy)
    try:
        waiting = f"waiting for ClusterOverridePolicy {name} (ClusterPropagationPolicy {name}"
        wait_for(
            "the policy controller to wait for the cluster override",
            lambda: f"ConfigMap {namespace}/settings: {waiting}" in controlplane_log(pipeline),
            timeout=TIMEOUT,
        )
        assert bound(pipeline, "v1", "ConfigMap", namespace, "settings") is None
        text = described(pipeline, "configmap", "settings", "-n", namespace)
        assert waiting in text, text
        assert member_configmap(pipeline, "member1", namespace, "settings") is None

        cluster_rules = [
            {"overriders": {"plaintext": [{"path": "/data/b", "operator": "add", "value": "2"}]}}
        ]
        pipeline.apply(override_policy(name, cluster_rules, selectors=[selector]))

        def landed() -> dict[str, str] | None:
            found = member_configmap(pipeline, "member1", namespace, "settings")
            return None if found is None else dict(found.data or {})

        wait_for(
            "settings on member1 with both overrides",
            lambda: landed() == {"a": "1", "b": "2", "site": "x"},
            timeout=TIMEOUT,
        )
    finally:
        for kind in ("clusterpropagationpolicy", "clusteroverridepolicy"):
            pipeline.cli("delete", kind, name)
