"""Bad input is refused with an error that names the field."""

from __future__ import annotations

import json
import math
from typing import Any

import pytest
from google.protobuf import json_format, struct_pb2

from archipel import limits
from archipel.core import selectors, validation
from archipel.core.errors import Invalid
from archipel.v1alpha1 import apps_pb2, cluster_pb2, override_pb2, policy_pb2, service_pb2
from controlplane import api


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
        (
            {
                "apiVersion": "scheduling.k8s.io/v1",
                "kind": "PriorityClass",
                "metadata": {"name": "high"},
            },
            "value",
        ),
        (
            {
                "apiVersion": "scheduling.k8s.io/v1",
                "kind": "PriorityClass",
                "metadata": {"name": "high"},
                "value": "1000",
            },
            "value",
        ),
        (
            {
                "apiVersion": "scheduling.k8s.io/v1",
                "kind": "PriorityClass",
                "metadata": {"name": "high"},
                "value": 2**40,
            },
            "value",
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


# -- what kube-apiserver would refuse, and Archipel's own bounds ------------------------


def deployment(**spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "web", "namespace": "default"},
        "spec": spec,
    }


def job(**spec: Any) -> dict[str, Any]:
    return {**deployment(**spec), "apiVersion": "batch/v1", "kind": "Job"}


@pytest.mark.parametrize(
    ("manifest", "field"),
    [
        (deployment(replicas=-1), "spec.replicas"),
        (deployment(replicas=math.nan), "spec.replicas"),
        (deployment(replicas=math.inf), "spec.replicas"),
        (deployment(replicas=-math.inf), "spec.replicas"),
        (deployment(replicas="3"), "spec.replicas"),
        (deployment(replicas=1.5), "spec.replicas"),
        (deployment(replicas=True), "spec.replicas"),
        (deployment(replicas=limits.MAX_REPLICAS + 1), "spec.replicas"),
        (deployment(replicas=[3]), "spec.replicas"),
        (job(parallelism=-2), "spec.parallelism"),
        (job(parallelism="many"), "spec.parallelism"),
        (job(completions=math.nan), "spec.completions"),
        (job(completions=2**40), "spec.completions"),
        ({**deployment(), "spec": "three"}, "spec"),
    ],
)
def test_bad_replica_counts(manifest: dict[str, Any], field: str) -> None:
    with pytest.raises(Invalid) as error:
        validation.check_template(manifest)
    assert error.value.field == field


@pytest.mark.parametrize(
    "manifest",
    [
        deployment(replicas=0),
        deployment(replicas=limits.MAX_REPLICAS),
        deployment(replicas=None),
        deployment(),
        job(parallelism=3, completions=10),
        # Kinds Archipel does not interpret keep whatever their schema allows.
        {**deployment(replicas="many"), "apiVersion": "example.com/v1", "kind": "Widget"},
    ],
)
def test_good_replica_counts(manifest: dict[str, Any]) -> None:
    validation.check_template(manifest)


@pytest.mark.parametrize(
    "kind",
    ["De/ploy", "Deploy\x00ment", "1Deployment", "Deploy-ment", "Deploy ment", "K" * 64, "", 7],
)
def test_bad_kinds(kind: Any) -> None:
    with pytest.raises(Invalid) as error:
        validation.check_template({**deployment(), "kind": kind})
    assert error.value.field == "kind"


@pytest.mark.parametrize(
    "api_version",
    [
        "a/b/c/v1",
        "/v1",
        "apps/",
        "Apps/v1",
        "apps/V1",
        "apps/v1 ",
        "apps\x00/v1",
        "-apps/v1",
        "a" * 254 + "/v1",
        "apps/" + "v" * 64,
        "",
        None,
    ],
)
def test_bad_api_versions(api_version: Any) -> None:
    with pytest.raises(Invalid) as error:
        validation.check_template({**deployment(), "apiVersion": api_version})
    assert error.value.field == "apiVersion"


@pytest.mark.parametrize("api_version", ["v1", "apps/v1", "example.com/v1beta1", "a.b-c.io/v2"])
def test_good_api_versions(api_version: str) -> None:
    validation.check_template({**deployment(), "apiVersion": api_version, "kind": "Thing"})


RBAC = "rbac.authorization.k8s.io/v1"


@pytest.mark.parametrize(
    ("api_version", "kind", "name", "good"),
    [
        ("v1", "ConfigMap", "web", True),
        ("v1", "ConfigMap", "web.example-1", True),
        ("v1", "ConfigMap", "Web", False),
        ("v1", "ConfigMap", "web_1", False),
        ("v1", "ConfigMap", "-web", False),
        ("v1", "ConfigMap", "web:1", False),
        ("v1", "ConfigMap", "a" * 253, True),
        ("v1", "ConfigMap", "a" * 254, False),
        ("v1", "Namespace", "team-a", True),
        ("v1", "Namespace", "team.a", False),
        ("v1", "Service", "web", True),
        ("v1", "Service", "1web", False),
        (RBAC, "ClusterRole", "system:controller:web", True),
        (RBAC, "ClusterRoleBinding", "System:Admin", True),
        (RBAC, "Role", "a:b@c", True),
        (RBAC, "RoleBinding", "a/b", False),
        (RBAC, "ClusterRole", "..", False),
        (RBAC, "ClusterRole", "a%2f", False),
        (RBAC, "ClusterRole", "a\x00b", False),
        # The RBAC exception belongs to the RBAC group, not to any kind of that name.
        ("example.com/v1", "ClusterRole", "system:x", False),
    ],
)
def test_template_names(api_version: str, kind: str, name: str, good: bool) -> None:
    manifest = {"apiVersion": api_version, "kind": kind, "metadata": {"name": name}}
    if good:
        validation.check_template(manifest)
        return
    with pytest.raises(Invalid) as error:
        validation.check_template(manifest)
    assert error.value.field == "metadata.name"


@pytest.mark.parametrize(
    "key",
    [
        "a//b",
        "/a",
        "a/",
        "Example.com/a",
        "example.com/a/b",
        "x" * 64,
        "example.com/" + "x" * 64,
        "a" * 254 + "/x",
        "-a",
        "a-",
        "a b",
        "a\x00",
        "",
    ],
)
def test_bad_label_keys(key: str) -> None:
    with pytest.raises(Invalid):
        selectors.check_qualified_name(key, "metadata.labels")
    with pytest.raises(Invalid) as error:
        validation.check_template({**deployment(), "metadata": {"name": "a", "labels": {key: "v"}}})
    assert error.value.field == "metadata.labels"
    with pytest.raises(Invalid):
        validation.check_template(
            {**deployment(), "metadata": {"name": "a", "annotations": {key: "v"}}}
        )


@pytest.mark.parametrize(
    "key", ["app", "a_b.c-D", "example.com/app", "x" * 63, "k8s.io/" + "x" * 63]
)
def test_good_label_keys(key: str) -> None:
    selectors.check_qualified_name(key, "metadata.labels")


@pytest.mark.parametrize("value", ["x" * 64, "-a", "a-", "a b", "a/b", "a\x00", "é"])
def test_bad_label_values(value: str) -> None:
    with pytest.raises(Invalid):
        selectors.check_label_value(value, "metadata.labels")
    with pytest.raises(Invalid) as error:
        validation.check_template(
            {**deployment(), "metadata": {"name": "a", "labels": {"app": value}}}
        )
    assert error.value.field.startswith("metadata.labels")


@pytest.mark.parametrize("value", ["", "a", "x" * 63, "1.2_3-A"])
def test_good_label_values(value: str) -> None:
    selectors.check_label_value(value, "metadata.labels")


@pytest.mark.parametrize(
    "text",
    ["a//b=c", "a/=c", "/a=c", "a=b/c", "a=" + "x" * 64, "x" * 64 + "=b", "a in (b/c)", "!a//b"],
)
def test_bad_selectors(text: str) -> None:
    with pytest.raises(Invalid) as error:
        selectors.parse(text, field="labelSelector")
    assert error.value.field == "labelSelector"


def test_metadata_of_protobuf_kinds_follows_the_same_rules() -> None:
    bad = policy({}, name="p")
    bad.metadata.labels["a//b"] = "c"
    with pytest.raises(Invalid) as error:
        validation.check_metadata(bad.metadata, namespaced=True)
    assert error.value.field == "metadata.labels"
    bad = policy({}, name="p")
    bad.metadata.annotations["note"] = "x" * limits.MAX_ANNOTATIONS_BYTES
    with pytest.raises(Invalid) as error:
        validation.check_metadata(bad.metadata, namespaced=True)
    assert error.value.field == "metadata.annotations"


def test_annotations_are_bounded_in_total() -> None:
    half = "x" * (limits.MAX_ANNOTATIONS_BYTES // 2)
    fits = {**deployment(), "metadata": {"name": "a", "annotations": {"a": half}}}
    validation.check_template(fits)
    over = {"a": half, "b": half}
    with pytest.raises(Invalid) as error:
        validation.check_template({**deployment(), "metadata": {"name": "a", "annotations": over}})
    assert error.value.field == "metadata.annotations"


def nested(levels: int) -> Any:
    """A value ``levels`` deep, counted as limits.depth counts."""
    value: Any = "leaf"
    for _ in range(levels - 1):
        value = {"a": value}
    return value


def test_template_depth_is_bounded() -> None:
    # The manifest itself is a level: its spec may be one less than the limit deep.
    validation.check_template({**deployment(), "spec": nested(limits.MAX_MANIFEST_DEPTH - 1)})
    with pytest.raises(Invalid) as error:
        validation.check_template({**deployment(), "spec": nested(limits.MAX_MANIFEST_DEPTH)})
    assert error.value.field == "manifest"
    assert "nested" in str(error.value)
    with pytest.raises(Invalid):
        validation.check_template({**deployment(), "spec": [nested(10_000)]})


def test_template_size_is_bounded() -> None:
    manifest = deployment()
    overhead = len(json.dumps(manifest, separators=(",", ":"))) + len(',"data":""')
    manifest["data"] = "x" * (limits.MAX_OBJECT_BYTES - overhead)
    validation.check_template(manifest)
    manifest["data"] += "x"
    with pytest.raises(Invalid) as error:
        validation.check_template(manifest)
    assert error.value.field == "manifest"
    assert str(limits.MAX_OBJECT_BYTES) in str(error.value)


def test_non_finite_numbers_anywhere_in_a_template_are_refused() -> None:
    with pytest.raises(Invalid) as error:
        validation.check_template({**deployment(), "spec": {"template": {"x": [1, math.nan]}}})
    assert error.value.field == "spec.template.x[1]"


def override(value: struct_pb2.Value) -> override_pb2.OverridePolicy:
    policy = override_pb2.OverridePolicy()
    policy.metadata.name = "o"
    policy.metadata.namespace = "default"
    rule = policy.spec.override_rules.add()
    rule.overriders.plaintext.add(path="/spec/x", operator="replace").value.CopyFrom(value)
    return policy


def test_json_values_inside_policies_are_bounded() -> None:
    struct = struct_pb2.Struct()
    struct.update({"v": nested(limits.MAX_MANIFEST_DEPTH + 1)})
    with pytest.raises(Invalid) as error:
        validation.check_message(override(struct.fields["v"]), "OverridePolicy")
    assert error.value.field == "spec.overrideRules[0].overriders.plaintext[0].value"
    struct.update({"v": nested(limits.MAX_MANIFEST_DEPTH)})
    validation.check_message(override(struct.fields["v"]), "OverridePolicy")
    with pytest.raises(Invalid) as error:
        validation.check_message(override(struct_pb2.Value(number_value=math.nan)), "x")
    assert error.value.field == "spec.overrideRules[0].overriders.plaintext[0].value"


def test_protobuf_objects_are_bounded_in_size() -> None:
    big = policy({"resourceSelectors": SELECTOR})
    big.spec.resource_selectors[0].name = "x" * limits.MAX_OBJECT_BYTES
    with pytest.raises(Invalid) as error:
        validation.check_message(big, "PropagationPolicy")
    assert "bytes" in str(error.value)


@pytest.mark.parametrize(
    ("name", "good"),
    [
        ("_.web-namespace", True),
        ("_.system:admin-clusterrole", True),
        ("default.web-deployment", True),
        ("default.web-deployment.apps", True),
        ("_.", False),
        ("web", False),
        ("Bad.web", False),
        ("_.a/b", False),
        ("", False),
    ],
)
def test_work_names(name: str, good: bool) -> None:
    if good:
        validation.check_work_name(name)
    else:
        with pytest.raises(Invalid):
            validation.check_work_name(name)


# -- echoed values stay short ----------------------------------------------------------

HUGE = "v" * 100_000


@pytest.mark.parametrize(
    "check",
    [
        lambda: validation.check_template({**deployment(), "kind": HUGE}),
        lambda: validation.check_template({**deployment(), "apiVersion": HUGE}),
        lambda: validation.check_template({**deployment(), "metadata": {"name": HUGE}}),
        lambda: validation.check_template(
            {**deployment(), "metadata": {"name": "a", "labels": {"a": HUGE}}}
        ),
        lambda: validation.check_template(
            {**deployment(), "metadata": {"name": "a", "labels": {HUGE: "a"}}}
        ),
        lambda: validation.check_template(deployment(replicas=HUGE)),
        lambda: validation.check_dns_label(HUGE, "namespace"),
        lambda: validation.check_choice(HUGE, ("a",), "spec.preemption"),
        lambda: selectors.parse(HUGE + "=a"),
        lambda: selectors.parse("a in (" + HUGE + ")"),
    ],
)
def test_echoed_values_are_truncated(check: Any) -> None:
    with pytest.raises(Invalid) as error:
        check()
    assert len(str(error.value)) < 3 * limits.MAX_ECHO_CHARS + 300


def test_status_messages_are_cut_to_what_grpc_carries() -> None:
    for text in ("x" * 100_000, "é" * 100_000, "😀" * 50_000):
        cut = api.status_message(text)
        assert len(cut.encode()) <= limits.MAX_STATUS_MESSAGE_BYTES
        assert "cut from" in cut
    assert api.status_message("short") == "short"


def test_undecodable_requests_are_invalid_naming_the_field() -> None:
    raw = service_pb2.GetRequest(name="NAMEX").SerializeToString().replace(b"NAMEX", b"\xff\xfe")
    with pytest.raises(Invalid) as error:
        api.decode_request(service_pb2.GetRequest, raw)
    assert error.value.field == "name"
    cluster = cluster_pb2.MemberCluster()
    cluster.metadata.labels["KEYX"] = "v"
    raw = cluster.SerializeToString().replace(b"KEYX", b"\xc3\x28ab")
    with pytest.raises(Invalid) as error:
        api.decode_request(cluster_pb2.MemberCluster, raw)
    assert error.value.field == "metadata.labels.key"
    with pytest.raises(Invalid) as error:
        api.decode_request(service_pb2.GetRequest, b"\x0a\x05ab")
    assert error.value.field == "namespace"
    with pytest.raises(Invalid) as error:
        api.decode_request(service_pb2.GetRequest, b"\xff\xff\xff")
    assert error.value.code.name == "INVALID_ARGUMENT"


def rebalancer(spec: dict[str, Any], *, name: str = "demo", namespace: str = "") -> Any:
    document = {"metadata": {"name": name, "namespace": namespace}, "spec": spec}
    return json_format.ParseDict(document, apps_pb2.WorkloadRebalancer())


WEB = {"apiVersion": "apps/v1", "kind": "Deployment", "namespace": "shop", "name": "web"}


@pytest.mark.parametrize(
    ("spec", "field"),
    [
        ({}, "spec.workloads"),
        ({"workloads": [{**WEB, "apiVersion": ""}]}, "spec.workloads[0].apiVersion"),
        ({"workloads": [WEB, {**WEB, "apiVersion": "Apps/v1"}]}, "spec.workloads[1].apiVersion"),
        ({"workloads": [{**WEB, "kind": ""}]}, "spec.workloads[0].kind"),
        ({"workloads": [{**WEB, "kind": "dep-loy"}]}, "spec.workloads[0].kind"),
        ({"workloads": [WEB, WEB, {**WEB, "name": ""}]}, "spec.workloads[2].name"),
        ({"workloads": [{**WEB, "name": "a/b"}]}, "spec.workloads[0].name"),
        ({"workloads": [{**WEB, "namespace": "Shop"}]}, "spec.workloads[0].namespace"),
        ({"workloads": [WEB], "ttlSecondsAfterFinished": -1}, "spec.ttlSecondsAfterFinished"),
    ],
)
def test_bad_workload_rebalancers(spec: dict[str, Any], field: str) -> None:
    with pytest.raises(Invalid) as error:
        api._VALIDATORS["WorkloadRebalancer"](rebalancer(spec))
    assert error.value.field == field
    assert str(error.value).startswith(f"{field}: ")


@pytest.mark.parametrize(
    ("name", "namespace", "field"),
    [
        ("", "", "metadata.name"),
        ("Demo", "", "metadata.name"),
        ("demo", "shop", "metadata.namespace"),
    ],
)
def test_workload_rebalancer_metadata(name: str, namespace: str, field: str) -> None:
    with pytest.raises(Invalid) as error:
        validation.check_workload_rebalancer(
            rebalancer({"workloads": [WEB]}, name=name, namespace=namespace)
        )
    assert error.value.field == field


@pytest.mark.parametrize(
    "spec",
    [
        {"workloads": [WEB]},
        # A cluster-scoped workload has no namespace; RBAC names are path segments.
        {"workloads": [{"apiVersion": "v1", "kind": "Namespace", "name": "shop"}]},
        {
            "workloads": [
                {
                    "apiVersion": "rbac.authorization.k8s.io/v1",
                    "kind": "ClusterRole",
                    "name": "system:controller:web",
                }
            ],
            "ttlSecondsAfterFinished": 0,
        },
    ],
)
def test_good_workload_rebalancers(spec: dict[str, Any]) -> None:
    validation.check_workload_rebalancer(rebalancer(spec))


def taint_policy(spec: dict[str, Any], *, name: str = "detect", namespace: str = "") -> Any:
    document = {"metadata": {"name": name, "namespace": namespace}, "spec": spec}
    return json_format.ParseDict(document, policy_pb2.ClusterTaintPolicy())


NOT_READY_CONDITION = {"conditionType": "Ready", "operator": "NotIn", "statusValues": ["True"]}
TAINT = {"key": "not-ready", "effect": "NoSchedule"}
GOOD_TAINT_POLICY = {"addOnConditions": [NOT_READY_CONDITION], "taints": [TAINT]}


@pytest.mark.parametrize(
    ("spec", "field"),
    [
        ({"taints": [TAINT]}, "spec.addOnConditions"),
        ({"addOnConditions": [NOT_READY_CONDITION]}, "spec.taints"),
        ({**GOOD_TAINT_POLICY, "taints": [{"effect": "NoSchedule"}]}, "spec.taints[0].key"),
        ({**GOOD_TAINT_POLICY, "taints": [{"key": "k"}]}, "spec.taints[0].effect"),
        (
            {**GOOD_TAINT_POLICY, "taints": [TAINT, {"key": "k", "effect": "PreferNoSchedule"}]},
            "spec.taints[1].effect",
        ),
        (
            {"addOnConditions": [{**NOT_READY_CONDITION, "operator": "Exists"}], "taints": [TAINT]},
            "spec.addOnConditions[0].operator",
        ),
        (
            {
                "addOnConditions": [NOT_READY_CONDITION],
                "removeOnConditions": [
                    NOT_READY_CONDITION,
                    {**NOT_READY_CONDITION, "operator": ""},
                ],
                "taints": [TAINT],
            },
            "spec.removeOnConditions[1].operator",
        ),
        (
            {
                "removeOnConditions": [{**NOT_READY_CONDITION, "statusValues": []}],
                "taints": [TAINT],
            },
            "spec.removeOnConditions[0].statusValues",
        ),
        (
            {"addOnConditions": [{**NOT_READY_CONDITION, "conditionType": ""}], "taints": [TAINT]},
            "spec.addOnConditions[0].conditionType",
        ),
        (
            {**GOOD_TAINT_POLICY, "targetClusters": {"clusterNames": ["Member1"]}},
            "spec.targetClusters.clusterNames[0]",
        ),
        (
            {
                **GOOD_TAINT_POLICY,
                "targetClusters": {
                    "fieldSelector": {"matchExpressions": [{"key": "color", "operator": "In"}]}
                },
            },
            "spec.targetClusters.fieldSelector.matchExpressions[0].key",
        ),
    ],
)
def test_bad_cluster_taint_policies(spec: dict[str, Any], field: str) -> None:
    with pytest.raises(Invalid) as error:
        api._VALIDATORS["ClusterTaintPolicy"](taint_policy(spec))
    assert error.value.field == field
    assert error.value.code.name == "INVALID_ARGUMENT"
    assert str(error.value).startswith(f"{field}: ")


def test_good_cluster_taint_policies() -> None:
    validation.check_cluster_taint_policy(taint_policy(GOOD_TAINT_POLICY))
    validation.check_cluster_taint_policy(
        taint_policy(
            {
                "targetClusters": {"labelSelector": {"matchLabels": {"env": "prod"}}},
                "removeOnConditions": [{**NOT_READY_CONDITION, "operator": "In"}],
                "taints": [{"key": "k", "value": "v", "effect": "NoExecute"}],
            }
        )
    )


def test_cluster_taint_policies_are_cluster_scoped() -> None:
    with pytest.raises(Invalid) as error:
        validation.check_cluster_taint_policy(taint_policy(GOOD_TAINT_POLICY, namespace="shop"))
    assert error.value.field == "metadata.namespace"
