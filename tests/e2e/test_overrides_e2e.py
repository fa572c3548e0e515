"""Overrides, system namespaces and cluster removal, end to end on three real members."""

from __future__ import annotations

import json
from typing import Any

import pytest
import yaml
from kubernetes.client.exceptions import ApiException

from tests.e2e.conftest import (
    TIERS,
    Pipeline,
    configmap,
    deployment,
    drift_and_wait_for_restore,
    override_policy,
    policy,
    wait_for,
    works_of,
)

pytestmark = pytest.mark.members(count=3, profile="full", isolated=True)
MEMBERS = ("member1", "member2", "member3")
# Two cores shared with other test runs: be patient.
TIMEOUT = 90.0
APPLIED_OVERRIDES = "policy.karmada.io/applied-overrides"
APPLIED_CLUSTER_OVERRIDES = "policy.karmada.io/applied-cluster-overrides"


def metadata_of(pipeline: Pipeline, member: str, namespace: str, name: str = "web") -> Any:
    found = pipeline.deployment(member, namespace, name)
    return found.metadata if found is not None else None


def member_configmap(pipeline: Pipeline, member: str, namespace: str, name: str) -> Any:
    try:
        return pipeline.core(member).read_namespaced_config_map(name, namespace)
    except ApiException as error:
        if error.status == 404:
            return None
        raise


def template(pipeline: Pipeline, kind: str, namespace: str, name: str) -> dict[str, Any]:
    api_version = {"Deployment": "apps/v1", "ConfigMap": "v1"}[kind]
    return pipeline.template(api_version, kind, namespace, name)


def binding(pipeline: Pipeline, namespace: str, name: str) -> dict[str, Any]:
    got = pipeline.cli("get", "pb", name, "-n", namespace, "-o", "json")
    return json.loads(got.stdout) if got.returncode == 0 else {}


def overrides_section(pipeline: Pipeline, namespace: str) -> dict[str, str]:
    """The Overrides section of ``archipel describe deployment web``, by cluster."""
    described = pipeline.cli("describe", "deployment", "web", "-n", namespace)
    assert described.returncode == 0, described.stderr
    lines = described.stdout.splitlines()
    assert "Overrides:" in lines, described.stdout
    section: dict[str, str] = {}
    for line in lines[lines.index("Overrides:") + 1 :]:
        if not line.startswith("  "):
            break
        cluster, _, applied = line.strip().partition(": ")
        section[cluster] = applied
    return section


def delete(pipeline: Pipeline, *args: str) -> None:
    deleted = pipeline.cli("delete", *args)
    assert deleted.returncode == 0, deleted.stderr


# -- a. labels and annotations per cluster -------------------------------------------------


def test_labels_and_annotations_overriders_per_cluster(pipeline: Pipeline, namespace: str) -> None:
    web = deployment(namespace)
    web["metadata"]["labels"].update({"tier": "frontend", "legacy": "yes"})
    web["metadata"]["annotations"] = {"owner": "platform", "drop-me": "x"}
    per_cluster = override_policy(
        "metadata",
        [
            {
                "targetCluster": {"clusterNames": ["member1"]},
                "overriders": {
                    "labelsOverrider": [
                        {"operator": "add", "value": {"site": "one"}},
                        {"operator": "replace", "value": {"tier": "edge", "absent": "x"}},
                        {"operator": "remove", "value": {"legacy": ""}},
                    ],
                    "annotationsOverrider": [
                        {"operator": "add", "value": {"note": "member1"}},
                        {"operator": "replace", "value": {"owner": "team-1"}},
                        {"operator": "remove", "value": {"drop-me": ""}},
                    ],
                },
            },
            {
                "targetCluster": {"clusterNames": ["member2"]},
                "overriders": {
                    "labelsOverrider": [{"operator": "add", "value": {"site": "two"}}],
                    "annotationsOverrider": [{"operator": "replace", "value": {"owner": "team-2"}}],
                },
            },
        ],
        namespace=namespace,
        selectors=[{"apiVersion": "apps/v1", "kind": "Deployment", "name": "web"}],
    )
    pipeline.apply(web, policy(namespace, cluster_names=list(MEMBERS)), per_cluster)

    def seen() -> dict[str, tuple[dict[str, str], dict[str, str]]] | None:
        found = {}
        for member in MEMBERS:
            metadata = metadata_of(pipeline, member, namespace)
            if metadata is None:
                return None
            label_keys = ("app", "tier", "legacy", "site", "absent")
            labels = {k: v for k, v in (metadata.labels or {}).items() if k in label_keys}
            annotation_keys = ("owner", "drop-me", "note")
            annotations = {
                k: v for k, v in (metadata.annotations or {}).items() if k in annotation_keys
            }
            found[member] = (labels, annotations)
        return found

    expected = {
        "member1": (
            {"app": "web", "tier": "edge", "site": "one"},
            {"owner": "team-1", "note": "member1"},
        ),
        "member2": (
            {"app": "web", "tier": "frontend", "legacy": "yes", "site": "two"},
            {"owner": "team-2", "drop-me": "x"},
        ),
        "member3": (
            {"app": "web", "tier": "frontend", "legacy": "yes"},
            {"owner": "platform", "drop-me": "x"},
        ),
    }
    wait_for("labels and annotations per cluster", lambda: seen() == expected, timeout=TIMEOUT)


# -- b. fieldOverrider on YAML and JSON embedded in a ConfigMap -----------------------------

SETTINGS_YAML = "database:\n  host: db.local\n  port: 5432\nfeatures:\n- search\n"
SETTINGS_JSON = '{"log": {"level": "info"}, "replicas": 1}'


def test_field_overrider_edits_embedded_yaml_and_json_for_one_cluster(
    pipeline: Pipeline, namespace: str
) -> None:
    settings = configmap(
        namespace, "settings", {"app.yaml": SETTINGS_YAML, "app.json": SETTINGS_JSON}
    )
    propagate = policy(
        namespace,
        "settings",
        cluster_names=["member1", "member2"],
        kind="ConfigMap",
        api_version="v1",
    )
    fields = override_policy(
        "embedded",
        [
            {
                "targetCluster": {"clusterNames": ["member2"]},
                "overriders": {
                    "fieldOverrider": [
                        {
                            "fieldPath": "/data/app.yaml",
                            "yaml": [
                                {
                                    "subPath": "/database/host",
                                    "operator": "replace",
                                    "value": "db.member2",
                                },
                                {"subPath": "/features/-", "operator": "add", "value": "audit"},
                            ],
                        },
                        {
                            "fieldPath": "/data/app.json",
                            "json": [
                                {"subPath": "/log/level", "operator": "replace", "value": "debug"},
                                {"subPath": "/replicas", "operator": "remove"},
                                {"subPath": "/region", "operator": "add", "value": "b"},
                            ],
                        },
                    ]
                },
            }
        ],
        namespace=namespace,
        selectors=[{"apiVersion": "v1", "kind": "ConfigMap", "name": "settings"}],
    )
    pipeline.apply(settings, propagate, fields)

    def data(member: str) -> dict[str, str] | None:
        found = member_configmap(pipeline, member, namespace, "settings")
        return dict(found.data or {}) if found is not None else None

    member2 = wait_for(
        "member2's overridden ConfigMap",
        lambda: (d := data("member2")) and "db.member2" in d.get("app.yaml", "") and d,
        timeout=TIMEOUT,
    )
    assert yaml.safe_load(member2["app.yaml"]) == {
        "database": {"host": "db.member2", "port": 5432},
        "features": ["search", "audit"],
    }
    assert json.loads(member2["app.json"]) == {"log": {"level": "debug"}, "region": "b"}
    # member1 gets the template's text, byte for byte.
    member1 = wait_for("member1's ConfigMap", lambda: data("member1"), timeout=TIMEOUT)
    assert member1 == {"app.yaml": SETTINGS_YAML, "app.json": SETTINGS_JSON}
    assert member_configmap(pipeline, "member3", namespace, "settings") is None


# -- c. order and precedence of several matching policies -----------------------------------


def _sets(winner: str, replicas: int, **extra: str) -> list[dict[str, Any]]:
    """One rule for every cluster: label winner=..., replicas, and any other labels."""
    return [
        {
            "overriders": {
                "labelsOverrider": [{"operator": "add", "value": {"winner": winner, **extra}}],
                "plaintext": [{"path": "/spec/replicas", "operator": "replace", "value": replicas}],
            }
        }
    ]


def test_most_specific_namespaced_override_has_the_last_word(
    pipeline: Pipeline, namespace: str
) -> None:
    by_kind = {"apiVersion": "apps/v1", "kind": "Deployment"}
    cluster_wide = f"{namespace}-zz-cluster"  # sorts last by name, yet applies first
    policies = [
        override_policy(
            cluster_wide,
            _sets("cluster", 5, **{"cluster-only": "yes"}),
            selectors=[{**by_kind, "namespace": namespace}],
        ),
        # Match-all, named to sort last: specificity, not the name, puts it first.
        override_policy("z-match-all", _sets("match-all", 4), namespace=namespace),
        # Two of the same specificity (kind): ties go by name, c-kind last.
        override_policy(
            "b-kind", _sets("b-kind", 3, tie="b"), namespace=namespace, selectors=[by_kind]
        ),
        override_policy(
            "c-kind", _sets("c-kind", 3, tie="c"), namespace=namespace, selectors=[by_kind]
        ),
        # By name: the most specific, named to sort first, applies last.
        override_policy(
            "a-by-name",
            _sets("by-name", 2),
            namespace=namespace,
            selectors=[{**by_kind, "name": "web"}],
        ),
    ]
    try:
        pipeline.apply(
            deployment(namespace),
            policy(namespace, cluster_names=["member1", "member2"]),
            *policies,
        )

        def outcome(member: str) -> tuple[int, dict[str, str]] | None:
            found = pipeline.deployment(member, namespace, "web")
            if found is None:
                return None
            labels = found.metadata.labels or {}
            keys = ("winner", "tie", "cluster-only")
            return int(found.spec.replicas or 0), {k: v for k, v in labels.items() if k in keys}

        expected = (2, {"winner": "by-name", "tie": "c", "cluster-only": "yes"})
        for member in ("member1", "member2"):
            wait_for(
                f"the by-name override to win in {member}",
                lambda m=member: outcome(m) == expected,  # type: ignore[misc]
                timeout=TIMEOUT,
            )
        # Each work records the policies in the order they applied.
        works = works_of(pipeline, namespace, "web-deployment")
        for member in ("member1", "member2"):
            annotations = works[member]["metadata"]["annotations"]
            assert json.loads(annotations[APPLIED_CLUSTER_OVERRIDES]) == [
                {"policyName": cluster_wide}
            ]
            assert [p["policyName"] for p in json.loads(annotations[APPLIED_OVERRIDES])] == [
                "z-match-all",
                "b-kind",
                "c-kind",
                "a-by-name",
            ]
    finally:
        delete(pipeline, "clusteroverridepolicy", cluster_wide)


# -- d. describe shows the overrides per cluster --------------------------------------------


def test_describe_shows_which_overrides_applied_to_each_cluster(
    pipeline: Pipeline, namespace: str
) -> None:
    base = f"{namespace}-base"
    cluster_wide = override_policy(
        base,
        [
            {
                "targetCluster": {"clusterNames": ["member1", "member2"]},
                "overriders": {"labelsOverrider": [{"operator": "add", "value": {"base": "yes"}}]},
            }
        ],
        selectors=[{"apiVersion": "apps/v1", "kind": "Deployment", "namespace": namespace}],
    )
    member1_only = override_policy(
        "member1-only",
        [
            {
                "targetCluster": {"clusterNames": ["member1"]},
                "overriders": {
                    "annotationsOverrider": [{"operator": "add", "value": {"only": "member1"}}]
                },
            }
        ],
        namespace=namespace,
    )
    try:
        pipeline.apply(
            deployment(namespace),
            policy(namespace, cluster_names=list(MEMBERS)),
            cluster_wide,
            member1_only,
        )

        def marks(member: str) -> tuple[str, str] | None:
            metadata = metadata_of(pipeline, member, namespace)
            if metadata is None:
                return None
            return (metadata.labels or {}).get("base", ""), (metadata.annotations or {}).get(
                "only", ""
            )

        wait_for(
            "the overrides in the members",
            lambda: [marks(m) for m in MEMBERS] == [("yes", "member1"), ("yes", ""), ("", "")],
            timeout=TIMEOUT,
        )
        assert overrides_section(pipeline, namespace) == {
            "member1": f"ClusterOverridePolicy {base}, OverridePolicy {namespace}/member1-only",
            "member2": f"ClusterOverridePolicy {base}",
            "member3": "none",
        }
        # Changing the overrides changes what describe says, and the members.
        delete(pipeline, "overridepolicy", "member1-only", "-n", namespace)
        wait_for(
            "describe to drop the deleted policy",
            lambda: (
                overrides_section(pipeline, namespace)["member1"] == f"ClusterOverridePolicy {base}"
            ),
            timeout=TIMEOUT,
        )
        wait_for(
            "the annotation to leave member1",
            lambda: marks("member1") == ("yes", ""),
            timeout=TIMEOUT,
        )
        works = works_of(pipeline, namespace, "web-deployment")
        assert APPLIED_OVERRIDES not in works["member1"]["metadata"].get("annotations", {})
        assert "policy.karmada.io" not in json.dumps(works["member3"]["metadata"])
    finally:
        delete(pipeline, "clusteroverridepolicy", base)
    wait_for(
        "no overrides left",
        lambda: set(overrides_section(pipeline, namespace).values()) == {"none"},
        timeout=TIMEOUT,
    )


# -- e. system namespaces are never propagated ----------------------------------------------


def test_render_shows_what_a_cluster_gets_from_the_server(
    pipeline: Pipeline, namespace: str
) -> None:
    image_for_member1 = override_policy(
        "registry",
        [
            {
                "targetCluster": {"clusterNames": ["member1"]},
                "overriders": {
                    "imageOverrider": [
                        {"component": "Registry", "operator": "replace", "value": "eu.io"}
                    ]
                },
            }
        ],
        namespace=namespace,
    )
    divided = policy(namespace, cluster_names=["member1", "member2"])
    divided["spec"]["placement"]["replicaScheduling"] = {
        "replicaSchedulingType": "Divided",
        "replicaDivisionPreference": "Weighted",
    }
    pipeline.apply(deployment(namespace, replicas=4), divided, image_for_member1)
    wait_for("the works", lambda: len(works_of(pipeline, namespace, "web-deployment")) == 2)

    def rendered(cluster: str) -> dict[str, Any]:
        got = pipeline.cli("render", "deployment/web", "-n", namespace, "--cluster", cluster)
        assert got.returncode == 0, got.stderr
        document: dict[str, Any] = yaml.safe_load(got.stdout)
        return document

    # What the work holds: the cluster's share of replicas, with its overrides.
    member1 = rendered("member1")
    assert member1["spec"]["template"]["spec"]["containers"][0]["image"] == "eu.io/nginx:1.27"
    assert member1["spec"]["replicas"] == 2
    assert "status" not in member1
    # No work there: what the template and the overrides would give it.
    got = pipeline.cli("render", "deployment/web", "-n", namespace, "--cluster", "member3")
    assert got.returncode == 0, got.stderr
    assert "member3 holds no work" in got.stderr
    assert yaml.safe_load(got.stdout)["spec"]["template"]["spec"]["containers"][0]["image"] == (
        "nginx:1.27"
    )
    missing = pipeline.cli("render", "deployment/nothing", "-n", namespace, "--cluster", "member3")
    assert missing.returncode == 1 and "NOT_FOUND" in missing.stderr
    assert len(missing.stderr.strip().splitlines()) == 1


def test_cluster_policy_for_every_configmap_skips_kube_system(
    pipeline: Pipeline, namespace: str
) -> None:
    name = f"probe-{namespace}"
    everything = {
        "apiVersion": "policy.karmada.io/v1alpha1",
        "kind": "ClusterPropagationPolicy",
        "metadata": {"name": f"all-configmaps-{namespace}"},
        "spec": {
            "resourceSelectors": [{"apiVersion": "v1", "kind": "ConfigMap"}],
            "placement": {"clusterAffinity": {"clusterNames": ["member1"]}},
        },
    }
    try:
        pipeline.apply(
            everything,
            configmap("kube-system", name, {"from": "kube-system"}),
            configmap(namespace, name, {"from": "a normal namespace"}),
        )
        wait_for(
            "the ordinary ConfigMap in member1",
            lambda: member_configmap(pipeline, "member1", namespace, name),
            timeout=TIMEOUT,
        )
        # Barrier: a later ConfigMap, same policy, goes the way a wrong binding would, behind it.
        sentinel = f"{name}-sentinel"
        pipeline.apply(configmap(namespace, sentinel, {"from": "the sentinel"}))
        wait_for(
            "the sentinel ConfigMap in member1",
            lambda: member_configmap(pipeline, "member1", namespace, sentinel),
            timeout=TIMEOUT,
        )
        assert member_configmap(pipeline, "member1", "kube-system", name) is None
        assert binding(pipeline, "kube-system", f"{name}-configmap") == {}
        described = pipeline.cli("describe", "configmap", name, "-n", "kube-system")
        assert described.returncode == 0, described.stderr
        assert "not propagated" in described.stdout
    finally:
        delete(pipeline, "clusterpropagationpolicy", everything["metadata"]["name"])
        delete(pipeline, "configmap", name, "-n", "kube-system")


# -- f. removing a member cluster while its agent is connected ------------------------------


def test_removing_a_connected_cluster_leaves_its_objects_unmanaged(
    pipeline: Pipeline, namespace: str
) -> None:
    """See docs/semantics.md: the objects stay, nothing manages them, status forgets them.

    This test removes member3 from the control plane, so it runs last in the module.
    """
    pipeline.apply(deployment(namespace), policy(namespace, cluster_names=["member2", "member3"]))
    wait_for(
        "both replicas ready",
        lambda: (
            template(pipeline, "Deployment", namespace, "web")
            .get("status", {})
            .get("readyReplicas")
            == 2
        ),
        timeout=TIMEOUT,
    )
    before = pipeline.deployment("member3", namespace, "web")
    assert before is not None
    assert pipeline.cluster("member3")["status"]["agent"].get("connected")

    delete(pipeline, "membercluster", "member3")
    wait_for(
        "member3 to be gone",
        lambda: pipeline.cli("get", "membercluster", "member3").returncode == 1,
        timeout=TIMEOUT,
    )
    wait_for(
        "member3's work to go",
        lambda: "member3" not in works_of(pipeline, namespace, "web-deployment"),
        timeout=TIMEOUT,
    )
    # Status forgets member3 (Karmada #768 was stale status after unjoin).
    wait_for(
        "the binding's status without member3",
        lambda: (
            [
                s["clusterName"]
                for s in binding(pipeline, namespace, "web-deployment")
                .get("status", {})
                .get("aggregatedStatus", [])
            ]
            == ["member2"]
        ),
        timeout=TIMEOUT,
    )
    wait_for(
        "the template's status to count member2 only",
        lambda: (
            (s := template(pipeline, "Deployment", namespace, "web").get("status", {})).get(
                "replicas"
            )
            == 1
            and s.get("readyReplicas") == 1
        ),
        timeout=TIMEOUT,
    )
    # The object stays in member3, untouched...
    # Barrier: the cut-off agent still restores drift, queued behind any delete of this work.
    drift_and_wait_for_restore(pipeline, "member3", namespace, timeout=TIMEOUT)
    after = pipeline.deployment("member3", namespace, "web")
    assert after is not None, "removing a cluster must not delete its objects"
    assert after.metadata.uid == before.metadata.uid
    # ...and unmanaged: a template change reaches member2 but not member3.
    pipeline.apply(deployment(namespace, image="nginx:1.28"))
    wait_for(
        "the new image in member2",
        lambda: (
            (d := pipeline.deployment("member2", namespace, "web"))
            and d.spec.template.spec.containers[0].image == "nginx:1.28"
        ),
        timeout=TIMEOUT,
    )
    # Barrier: the restore applies the last work member3's agent got: 1.28, had it got it.
    drift_and_wait_for_restore(pipeline, "member3", namespace, timeout=TIMEOUT)
    kept = pipeline.deployment("member3", namespace, "web")
    assert kept is not None
    assert kept.spec.template.spec.containers[0].image == "nginx:1.27"
    described = pipeline.cli("describe", "deployment", "web", "-n", namespace)
    assert "member3" not in described.stdout

    # To take the cluster back without disturbing what runs there, stop its agent and
    # clear its ledger before joining again: the agent then holds nothing, so nothing is
    # deleted, and the new work is applied over the object Archipel made.
    pipeline.agents["member3"].stop()
    pipeline.core("member3").delete_collection_namespaced_config_map(
        "archipel-system", label_selector="archipel.io/ledger=true"
    )
    pipeline.plane.join(pipeline.fleet["member3"], labels={"tier": TIERS["member3"]})
    pipeline.start_agent(pipeline.fleet["member3"])
    wait_for("member3 Ready again", lambda: pipeline.ready("member3") == "True", timeout=TIMEOUT)
    adopted = wait_for(
        "member3 to be managed again",
        lambda: (
            (d := pipeline.deployment("member3", namespace, "web"))
            and d.spec.template.spec.containers[0].image == "nginx:1.28"
            and d
        ),
        timeout=TIMEOUT,
    )
    assert adopted.metadata.uid == before.metadata.uid
