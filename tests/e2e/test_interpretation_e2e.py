"""The resource interpreter end to end: status and health per kind, a custom kind
described by a ResourceInterpreterCustomization, dependencies and retention, on real
members with real agents."""

from __future__ import annotations

import json
from typing import Any

import pytest
from kubernetes import client as k8s
from kubernetes.client.exceptions import ApiException

from tests.e2e.conftest import (
    Pipeline,
    configmap,
    deployment,
    drift_and_wait_for_restore,
    policy,
    wait_for,
    widget_crd,
    works_of,
)

pytestmark = pytest.mark.members(count=3, profile="full", isolated=True)
PAIR = ["member1", "member2"]


def binding(pipeline: Pipeline, namespace: str, name: str) -> dict[str, Any]:
    got = pipeline.cli("get", "pb", name, "-n", namespace, "-o", "json")
    return json.loads(got.stdout) if got.returncode == 0 else {}


def health(pipeline: Pipeline, namespace: str, name: str) -> dict[str, str]:
    items = binding(pipeline, namespace, name).get("status", {}).get("aggregatedStatus", [])
    return {i["clusterName"]: i.get("health", "") for i in items}


def multi_policy(namespace: str, selectors: list[tuple[str, str]], **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "policy.karmada.io/v1alpha1",
        "kind": "PropagationPolicy",
        "metadata": {"name": "apps", "namespace": namespace},
        "spec": {
            "resourceSelectors": [{"apiVersion": a, "kind": k} for a, k in selectors],
            "placement": {"clusterAffinity": {"clusterNames": PAIR}},
            **spec,
        },
    }


def pod_template(name: str, **pod: Any) -> dict[str, Any]:
    return {
        "metadata": {"labels": {"app": name}},
        "spec": {"containers": [{"name": name, "image": "busybox:1.36"}], **pod},
    }


def test_builtin_kinds_report_status_and_health(pipeline: Pipeline, namespace: str) -> None:
    statefulset = {
        "apiVersion": "apps/v1",
        "kind": "StatefulSet",
        "metadata": {"name": "db", "namespace": namespace},
        "spec": {
            "replicas": 2,
            "serviceName": "db",
            "selector": {"matchLabels": {"app": "db"}},
            "template": pod_template("db"),
        },
    }
    daemonset = {
        "apiVersion": "apps/v1",
        "kind": "DaemonSet",
        "metadata": {"name": "agent", "namespace": namespace},
        "spec": {"selector": {"matchLabels": {"app": "agent"}}, "template": pod_template("agent")},
    }
    job = {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": "once", "namespace": namespace},
        "spec": {
            "parallelism": 2,
            "completions": 2,
            "template": pod_template("once", restartPolicy="Never"),
        },
    }
    # The Job alone is divided: each member runs half its pods to completion.
    job_policy = policy(namespace, "job", cluster_names=PAIR, kind="Job", api_version="batch/v1")
    job_policy["spec"]["placement"]["replicaScheduling"] = {
        "replicaSchedulingType": "Divided",
        "replicaDivisionPreference": "Weighted",
    }
    service = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "db", "namespace": namespace},
        "spec": {"selector": {"app": "db"}, "ports": [{"port": 5432}]},
    }
    pipeline.apply(
        statefulset,
        daemonset,
        job,
        job_policy,
        service,
        multi_policy(
            namespace,
            [
                ("apps/v1", "StatefulSet"),
                ("apps/v1", "DaemonSet"),
                ("v1", "Service"),
            ],
            # Each member runs the whole StatefulSet.
            placement={
                "clusterAffinity": {"clusterNames": PAIR},
                "replicaScheduling": {"replicaSchedulingType": "Duplicated"},
            },
        ),
    )
    everywhere_healthy = {"member1": "Healthy", "member2": "Healthy"}
    for name in ("db-statefulset", "agent-daemonset", "once-job", "db-service"):
        wait_for(
            f"{name} Healthy in both members",
            lambda name=name: health(pipeline, namespace, name) == everywhere_healthy,  # type: ignore[misc]
            timeout=120,
        )

    def aggregated(api_version: str, kind: str, name: str) -> dict[str, Any]:
        status: dict[str, Any] = pipeline.template(api_version, kind, namespace, name).get(
            "status", {}
        )
        return status

    wait_for(
        "the StatefulSet's replicas summed",
        lambda: aggregated("apps/v1", "StatefulSet", "db").get("readyReplicas") == 4,
        timeout=90,
    )
    # Each full member has two fake nodes: two daemon pods each.
    wait_for(
        "the DaemonSet's pods summed",
        lambda: aggregated("apps/v1", "DaemonSet", "agent").get("numberReady") == 4,
        timeout=90,
    )
    job_status = wait_for(
        "the Job complete in both members",
        lambda: (lambda s: s if s.get("succeeded") == 2 else None)(
            aggregated("batch/v1", "Job", "once")
        ),
        timeout=120,
    )
    assert [c["type"] for c in job_status["conditions"]] == ["Complete"]
    for member in PAIR:
        member_job = k8s.BatchV1Api(pipeline.fleet[member].api_client()).read_namespaced_job(
            "once", namespace
        )
        assert (member_job.spec.parallelism, member_job.spec.completions) == (1, 1)
    assert "startTime" in job_status and "completionTime" in job_status
    daemonset_status = aggregated("apps/v1", "DaemonSet", "agent")
    assert daemonset_status["desiredNumberScheduled"] == 4
    assert daemonset_status["observedGeneration"] == 1


CRD_GROUP = "interp.example.com"


def widget_customization(health_rule: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": "config.karmada.io/v1alpha1",
        "kind": "ResourceInterpreterCustomization",
        "metadata": {"name": "widgets"},
        "spec": {
            "target": {"apiVersion": f"{CRD_GROUP}/v1", "kind": "Widget"},
            "customizations": {
                "replicaResource": {"replicas": ".spec.size"},
                "replicaRevision": {"replicas": ".spec.size"},
                "statusReflection": {
                    "fields": [
                        {"name": "readyReplicas", "path": ".status.ready"},
                        {"name": "phase", "path": ".status.phase"},
                    ]
                },
                "statusAggregation": {
                    "fields": [
                        {"name": "readyReplicas", "operation": "Sum"},
                        {"name": "phase", "operation": "Collect"},
                    ]
                },
                "healthInterpretation": {"healthyWhen": [health_rule]},
            },
        },
    }


READY_ENOUGH = {
    "path": ".status.ready",
    "operator": "GreaterThanOrEqual",
    "valuePath": ".spec.size",
}


def test_a_custom_kind_is_read_through_its_customization(
    pipeline: Pipeline, namespace: str
) -> None:
    crd_policy = {
        "apiVersion": "policy.karmada.io/v1alpha1",
        "kind": "ClusterPropagationPolicy",
        "metadata": {"name": "widget-crd"},
        "spec": {
            "resourceSelectors": [
                {
                    "apiVersion": "apiextensions.k8s.io/v1",
                    "kind": "CustomResourceDefinition",
                    "name": f"widgets.{CRD_GROUP}",
                }
            ],
            "placement": {"clusterAffinity": {"clusterNames": PAIR}},
        },
    }
    widget = {
        "apiVersion": f"{CRD_GROUP}/v1",
        "kind": "Widget",
        "metadata": {"name": "gizmo", "namespace": namespace},
        "spec": {"size": 4},
    }
    widget_policy = policy(
        namespace, "widget", cluster_names=PAIR, kind="Widget", api_version=f"{CRD_GROUP}/v1"
    )
    widget_policy["spec"]["placement"]["replicaScheduling"] = {
        "replicaSchedulingType": "Divided",
        "replicaDivisionPreference": "Weighted",
        "weightPreference": {
            "staticWeightList": [
                {"targetCluster": {"clusterNames": ["member1"]}, "weight": 1},
                {"targetCluster": {"clusterNames": ["member2"]}, "weight": 1},
            ]
        },
    }
    # A Lua customization, as Karmada users write them, is refused with the field named.
    lua = widget_customization(READY_ENOUGH)
    lua["spec"]["customizations"]["healthInterpretation"] = {"luaScript": "return true"}
    refused = pipeline.cli("apply", "-f", "-", stdin=json.dumps(lua))
    assert refused.returncode == 1
    assert "spec.customizations.healthInterpretation.luaScript" in refused.stderr
    assert "Lua" in refused.stderr

    pipeline.apply(
        widget_customization(READY_ENOUGH),
        widget_crd(CRD_GROUP, status_subresource=True),
        crd_policy,
        widget,
        widget_policy,
    )
    custom = {m: k8s.CustomObjectsApi(pipeline.fleet[m].api_client()) for m in PAIR}

    def sizes() -> dict[str, int]:
        found = {}
        for member, api in custom.items():
            try:
                obj = api.get_namespaced_custom_object(
                    CRD_GROUP, "v1", namespace, "widgets", "gizmo"
                )
            except ApiException:
                continue
            found[member] = int(obj["spec"]["size"])
        return found

    # The customization says where replicas live: each member gets its share.
    wait_for("the Widget divided 2/2", lambda: sizes() == {"member1": 2, "member2": 2}, timeout=90)
    for member, ready, phase in (("member1", 2, "Ready"), ("member2", 1, "Starting")):
        custom[member].patch_namespaced_custom_object_status(
            CRD_GROUP,
            "v1",
            namespace,
            "widgets",
            "gizmo",
            {"status": {"ready": ready, "phase": phase}},
        )
    wait_for(
        "health per member from the customization",
        lambda: (
            health(pipeline, namespace, "gizmo-widget")
            == {"member1": "Healthy", "member2": "Unhealthy"}
        ),
    )
    status = wait_for(
        "the aggregated Widget status",
        lambda: (lambda s: s if s.get("readyReplicas") == 3 else None)(
            pipeline.template(f"{CRD_GROUP}/v1", "Widget", namespace, "gizmo").get("status", {})
        ),
    )
    assert sorted(status["phase"], key=lambda p: p["clusterName"]) == [
        {"clusterName": "member1", "value": "Ready"},
        {"clusterName": "member2", "value": "Starting"},
    ]

    # A customization that fails at run time (phase is text, compared as a number)
    # makes this kind's health Unknown, with the reason; other kinds are untouched.
    pipeline.apply(deployment(namespace), policy(namespace, "web", cluster_names=["member1"]))
    wait_for(
        "the Deployment Healthy",
        lambda: health(pipeline, namespace, "web-deployment") == {"member1": "Healthy"},
        timeout=90,
    )
    pipeline.apply(
        widget_customization({"path": ".status.phase", "operator": "GreaterThan", "values": ["1"]})
    )

    def unknown_with_reason() -> list[dict[str, Any]]:
        items = (
            binding(pipeline, namespace, "gizmo-widget")
            .get("status", {})
            .get("aggregatedStatus", [])
        )
        return [
            i
            for i in items
            if i.get("health") == "Unknown"
            and "ResourceInterpreterCustomization widgets" in i.get("healthMessage", "")
        ]

    broken = wait_for("the Widget's health Unknown with the reason", unknown_with_reason)
    assert "healthInterpretation" in broken[0]["healthMessage"]
    assert health(pipeline, namespace, "web-deployment") == {"member1": "Healthy"}
    # Mended, it reads the Widgets again.
    pipeline.apply(widget_customization(READY_ENOUGH))
    wait_for(
        "health back after the fix",
        lambda: (
            health(pipeline, namespace, "gizmo-widget")
            == {"member1": "Healthy", "member2": "Unhealthy"}
        ),
    )

    # A Widget whose size is not a number: its binding says why, the others go on.
    broken = json.loads(json.dumps(widget))
    broken["metadata"]["name"] = "broken"
    broken["spec"]["size"] = "three"
    pipeline.apply(broken)

    def interpreter_failure() -> str:
        conditions = (
            binding(pipeline, namespace, "broken-widget").get("status", {}).get("conditions", [])
        )
        failed = [c for c in conditions if c["type"] == "Interpreted" and c["status"] == "False"]
        return str(failed[0]["message"]) if failed else ""

    message = wait_for("the Interpreted condition on the broken Widget", interpreter_failure)
    assert "ResourceInterpreterCustomization widgets" in message
    assert "not a replica count" in message
    assert sizes() == {"member1": 2, "member2": 2}


def secret(namespace: str, name: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": name, "namespace": namespace},
        "stringData": {"token": "s3cret"},
    }


def test_dependencies_follow_their_workload(pipeline: Pipeline, namespace: str) -> None:
    web = deployment(namespace)
    pod = web["spec"]["template"]["spec"]
    pod["volumes"] = [{"name": "config", "configMap": {"name": "web-config"}}]
    pod["containers"][0]["envFrom"] = [{"secretRef": {"name": "web-token"}}]
    placed = policy(namespace, cluster_names=["member1"])
    placed["spec"]["propagateDeps"] = True
    # The dependencies match no policy of their own.
    pipeline.apply(
        configmap(namespace, "web-config", {"key": "web-config"}),
        secret(namespace, "web-token"),
        web,
        placed,
    )

    def present(member: str) -> set[str]:
        core = pipeline.core(member)
        found = set()
        for kind, read in (
            ("ConfigMap", core.read_namespaced_config_map),
            ("Secret", core.read_namespaced_secret),
        ):
            for name in ("web-config", "web-token"):
                try:
                    read(name, namespace)
                except ApiException:
                    continue
                found.add(f"{kind}/{name}")
        return found

    both = {"ConfigMap/web-config", "Secret/web-token"}
    wait_for("the dependencies in member1", lambda: present("member1") == both, timeout=90)
    assert present("member2") == set() and present("member3") == set()
    described = pipeline.cli("describe", "configmap", "web-config", "-n", namespace)
    assert described.returncode == 0, described.stderr
    assert f"Required by:  {namespace}/web-deployment (member1)" in described.stdout

    # The workload moves: its dependencies go with it and leave where it was.
    placed["spec"]["placement"]["clusterAffinity"]["clusterNames"] = ["member2"]
    pipeline.apply(placed)
    wait_for(
        "the dependencies moved to member2",
        lambda: present("member2") == both and present("member1") == set(),
        timeout=90,
    )
    # No longer referenced: the Secret is removed, the ConfigMap stays.
    del pod["containers"][0]["envFrom"]
    pipeline.apply(web)
    wait_for(
        "the unused Secret removed",
        lambda: present("member2") == {"ConfigMap/web-config"},
        timeout=90,
    )
    # The workload goes: so does what it needed.
    deleted = pipeline.cli("delete", "deployment", "web", "-n", namespace)
    assert deleted.returncode == 0, deleted.stderr
    wait_for("the ConfigMap removed", lambda: present("member2") == set(), timeout=90)
    assert binding(pipeline, namespace, "web-config-configmap") == {}


def test_member_owned_fields_are_retained(pipeline: Pipeline, namespace: str) -> None:
    web = deployment(namespace, replicas=2)
    web["metadata"]["labels"]["archipel.io/retain-replicas"] = "true"
    service = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "web", "namespace": namespace},
        "spec": {"selector": {"app": "web"}, "ports": [{"port": 80}]},
    }
    pipeline.apply(
        web,
        service,
        multi_policy(namespace, [("apps/v1", "Deployment"), ("v1", "Service")]),
    )
    wait_for("the Deployment in member1", lambda: pipeline.deployment("member1", namespace, "web"))
    wait_for(
        "the Service in member1",
        lambda: _service(pipeline, "member1", namespace) is not None,
    )
    cluster_ip = _service(pipeline, "member1", namespace).spec.cluster_ip
    # A member-side autoscaler scales the Deployment; Archipel must not undo it.
    pipeline.apps("member1").patch_namespaced_deployment_scale(
        "web", namespace, {"spec": {"replicas": 5}}
    )
    # Barrier: a real drift of the same object, same watch and work key, is corrected after it.
    drift_and_wait_for_restore(pipeline, "member1", namespace)
    current = pipeline.deployment("member1", namespace, "web")
    assert current is not None and current.spec.replicas == 5
    # A template change still lands, with the member's replicas and clusterIP kept.
    web["spec"]["template"]["spec"]["containers"][0]["image"] = "nginx:1.28"
    service["metadata"]["labels"] = {"tier": "front"}
    pipeline.apply(web, service)

    def updated() -> bool:
        found = pipeline.deployment("member1", namespace, "web")
        svc = _service(pipeline, "member1", namespace)
        return (
            found is not None
            and found.spec.template.spec.containers[0].image == "nginx:1.28"
            and svc is not None
            and (svc.metadata.labels or {}).get("tier") == "front"
        )

    wait_for("the template change in member1", updated, timeout=90)
    current = pipeline.deployment("member1", namespace, "web")
    assert current is not None and current.spec.replicas == 5
    assert _service(pipeline, "member1", namespace).spec.cluster_ip == cluster_ip
    # member2 has no autoscaler: it keeps the template's count.
    other = pipeline.deployment("member2", namespace, "web")
    assert other is not None and other.spec.replicas == 2


def _service(pipeline: Pipeline, member: str, namespace: str) -> k8s.V1Service | None:
    try:
        return pipeline.core(member).read_namespaced_service("web", namespace)
    except ApiException:
        return None


def applied_generation(
    pipeline: Pipeline, namespace: str, binding_name: str, cluster: str
) -> tuple[int, int, str]:
    """The cluster's work: its generation, and the generation and status of its Applied
    condition (0, 0, "" for what is missing)."""
    work = works_of(pipeline, namespace, binding_name).get(cluster, {})
    applied: dict[str, Any] = next(
        (c for c in work.get("status", {}).get("conditions", []) if c.get("type") == "Applied"),
        {},
    )
    return (
        int(work.get("metadata", {}).get("generation", 0)),
        int(applied.get("observedGeneration", 0)),
        str(applied.get("status", "")),
    )


def test_conflicts_abort_by_default_and_overwrite_adopts(
    pipeline: Pipeline, namespace: str
) -> None:
    core = pipeline.core("member1")
    core.create_namespace(k8s.V1Namespace(metadata=k8s.V1ObjectMeta(name=namespace)))
    core.create_namespaced_config_map(
        namespace,
        k8s.V1ConfigMap(metadata=k8s.V1ObjectMeta(name="settings"), data={"owner": "member"}),
    )
    settings = configmap(namespace, "settings", {"owner": "archipel"})
    placed = policy(
        namespace, "settings", cluster_names=["member1"], kind="ConfigMap", api_version="v1"
    )
    pipeline.apply(settings, placed)

    def conflict() -> str:
        items = (
            binding(pipeline, namespace, "settings-configmap")
            .get("status", {})
            .get("aggregatedStatus", [])
        )
        return next((i.get("appliedMessage", "") for i in items if not i.get("applied")), "")

    message = wait_for("the conflict reported", conflict, timeout=90)
    assert "already exists in the member and is not managed by Archipel" in message
    assert "conflictResolution: Overwrite" in message
    # Barrier: a new generation of the same work is tried after every earlier attempt.
    first = applied_generation(pipeline, namespace, "settings-configmap", "member1")[0]
    assert first > 0
    settings["metadata"]["annotations"] = {"barrier": "1"}
    pipeline.apply(settings)

    def refused_again() -> bool:
        generation, observed, status = applied_generation(
            pipeline, namespace, "settings-configmap", "member1"
        )
        return generation > first and observed == generation and status == "False"

    wait_for("the conflict reported for the next generation", refused_again, timeout=90)
    assert core.read_namespaced_config_map("settings", namespace).data == {"owner": "member"}

    placed["spec"]["conflictResolution"] = "Overwrite"
    pipeline.apply(placed)
    wait_for(
        "the ConfigMap adopted",
        lambda: (
            core.read_namespaced_config_map("settings", namespace).data == {"owner": "archipel"}
        ),
        timeout=90,
    )
    adopted = core.read_namespaced_config_map("settings", namespace)
    assert adopted.metadata.labels["archipel.io/managed"] == "true"


def test_preserve_resources_on_deletion_keeps_member_objects(
    pipeline: Pipeline, namespace: str
) -> None:
    placed = policy(namespace, cluster_names=["member1"])
    placed["spec"]["preserveResourcesOnDeletion"] = True
    pipeline.apply(deployment(namespace), placed)
    created = wait_for(
        "the Deployment in member1", lambda: pipeline.deployment("member1", namespace, "web")
    )
    deleted = pipeline.cli("delete", "deployment", "web", "-n", namespace)
    assert deleted.returncode == 0, deleted.stderr
    wait_for("the binding gone", lambda: binding(pipeline, namespace, "web-deployment") == {})
    # Barrier: the binding left once member1's agent confirmed the delete; a later work lands.
    pipeline.apply(deployment(namespace, "sentinel"))
    wait_for(
        "the sentinel Deployment in member1",
        lambda: pipeline.deployment("member1", namespace, "sentinel"),
        timeout=90,
    )
    kept = pipeline.deployment("member1", namespace, "web")
    assert kept is not None and kept.metadata.uid == created.metadata.uid
