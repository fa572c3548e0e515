"""The resource interpreter: built-in kinds, customizations and the registry, as tables."""

from __future__ import annotations

from typing import Any

import pytest
from google.protobuf import json_format

from archipel import interpreter
from archipel.interpreter import Dependency, MemberStatus
from archipel.v1alpha1 import interpreter_pb2

REGISTRY = interpreter.Registry()


def obj(api_version: str, kind: str, *, generation: int = 1, **fields: Any) -> dict[str, Any]:
    return {
        "apiVersion": api_version,
        "kind": kind,
        "metadata": {"name": "x", "namespace": "ns", "generation": generation},
        **fields,
    }


# -- health --------------------------------------------------------------------------

HEALTH_CASES = [
    # Deployment: caught up, updated and available.
    (
        obj(
            "apps/v1",
            "Deployment",
            generation=2,
            spec={"replicas": 3},
            status={"observedGeneration": 2, "updatedReplicas": 3, "availableReplicas": 3},
        ),
        "Healthy",
    ),
    (
        obj(
            "apps/v1",
            "Deployment",
            generation=2,
            spec={"replicas": 3},
            status={"observedGeneration": 1, "updatedReplicas": 3, "availableReplicas": 3},
        ),
        "Unhealthy",
    ),
    (
        obj(
            "apps/v1",
            "Deployment",
            spec={"replicas": 3},
            status={"observedGeneration": 1, "updatedReplicas": 3, "availableReplicas": 1},
        ),
        "Unhealthy",
    ),
    (
        obj(
            "apps/v1",
            "StatefulSet",
            spec={"replicas": 2},
            status={"observedGeneration": 1, "updatedReplicas": 2, "readyReplicas": 2},
        ),
        "Healthy",
    ),
    (
        obj(
            "apps/v1",
            "StatefulSet",
            spec={"replicas": 2},
            status={"observedGeneration": 1, "updatedReplicas": 2, "readyReplicas": 1},
        ),
        "Unhealthy",
    ),
    (
        obj(
            "apps/v1",
            "ReplicaSet",
            spec={"replicas": 2},
            status={"observedGeneration": 1, "readyReplicas": 2},
        ),
        "Healthy",
    ),
    (
        obj(
            "apps/v1",
            "DaemonSet",
            status={
                "observedGeneration": 1,
                "desiredNumberScheduled": 2,
                "updatedNumberScheduled": 2,
                "numberAvailable": 2,
            },
        ),
        "Healthy",
    ),
    (
        obj(
            "apps/v1",
            "DaemonSet",
            status={
                "observedGeneration": 1,
                "desiredNumberScheduled": 2,
                "updatedNumberScheduled": 1,
                "numberAvailable": 2,
            },
        ),
        "Unhealthy",
    ),
    (obj("batch/v1", "Job", status={"active": 1}), "Healthy"),
    (
        obj("batch/v1", "Job", status={"conditions": [{"type": "Failed", "status": "True"}]}),
        "Unhealthy",
    ),
    (obj("batch/v1", "CronJob", status={}), "Healthy"),
    (obj("v1", "Pod", status={"phase": "Running"}), "Healthy"),
    (obj("v1", "Pod", status={"phase": "Pending"}), "Unhealthy"),
    (obj("v1", "Service", spec={"type": "ClusterIP"}, status={}), "Healthy"),
    (obj("v1", "Service", spec={"type": "LoadBalancer"}, status={}), "Unhealthy"),
    (
        obj(
            "v1",
            "Service",
            spec={"type": "LoadBalancer"},
            status={"loadBalancer": {"ingress": [{"ip": "10.0.0.1"}]}},
        ),
        "Healthy",
    ),
    (obj("networking.k8s.io/v1", "Ingress", status={"loadBalancer": {}}), "Unhealthy"),
    (
        obj(
            "networking.k8s.io/v1",
            "Ingress",
            status={"loadBalancer": {"ingress": [{"hostname": "a"}]}},
        ),
        "Healthy",
    ),
    (obj("v1", "PersistentVolumeClaim", status={"phase": "Bound"}), "Healthy"),
    (obj("v1", "PersistentVolumeClaim", status={"phase": "Pending"}), "Unhealthy"),
    (
        obj("policy/v1", "PodDisruptionBudget", status={"currentHealthy": 2, "desiredHealthy": 2}),
        "Healthy",
    ),
    (
        obj("policy/v1", "PodDisruptionBudget", status={"currentHealthy": 1, "desiredHealthy": 2}),
        "Unhealthy",
    ),
    (obj("policy/v1", "PodDisruptionBudget", status={}), "Unknown"),
    (obj("autoscaling/v2", "HorizontalPodAutoscaler", status={"currentReplicas": 1}), "Healthy"),
    # Nobody describes it: healthy, as in Karmada.
    (obj("example.io/v1", "Widget", status={"phase": "Broken"}), "Healthy"),
]


@pytest.mark.parametrize(("manifest", "health"), HEALTH_CASES)
def test_health_by_kind(manifest: dict[str, Any], health: str) -> None:
    assert REGISTRY.of(manifest).health(manifest) == health


# -- replicas ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("manifest", "replicas", "revised_field"),
    [
        (obj("apps/v1", "Deployment", spec={"replicas": 6}), 6, ("spec", "replicas")),
        (obj("apps/v1", "StatefulSet", spec={}), 1, ("spec", "replicas")),
        (obj("apps/v1", "ReplicaSet", spec={"replicas": 0}), 0, ("spec", "replicas")),
        (obj("batch/v1", "Job", spec={"parallelism": 4}), 4, ("spec", "parallelism")),
        (obj("v1", "Pod", spec={}), 1, None),
        (obj("apps/v1", "DaemonSet", spec={}), None, None),
        (obj("v1", "ConfigMap", data={}), None, None),
    ],
)
def test_replicas_and_revision(
    manifest: dict[str, Any], replicas: int | None, revised_field: tuple[str, str] | None
) -> None:
    kind = REGISTRY.of(manifest)
    assert kind.replicas(manifest) == replicas
    revised = kind.revise_replicas(manifest, 2)
    if revised_field is not None:
        assert revised[revised_field[0]][revised_field[1]] == 2
        assert manifest != revised  # the template itself is left alone
    else:
        assert revised == manifest


# -- reflection and aggregation --------------------------------------------------------


def test_workload_status_is_reflected_with_its_generation() -> None:
    deployment = obj(
        "apps/v1",
        "Deployment",
        generation=3,
        status={"replicas": 2, "readyReplicas": 1, "conditions": [{"type": "Available"}]},
    )
    assert REGISTRY.of(deployment).reflect_status(deployment) == {
        "replicas": 2,
        "readyReplicas": 1,
        "generation": 3,
    }


@pytest.mark.parametrize(
    ("api_version", "kind", "statuses", "generation", "aggregated"),
    [
        (
            "apps/v1",
            "Deployment",
            [
                {
                    "replicas": 2,
                    "readyReplicas": 2,
                    "availableReplicas": 2,
                    "updatedReplicas": 2,
                    "observedGeneration": 4,
                    "generation": 4,
                },
                {
                    "replicas": 3,
                    "readyReplicas": 1,
                    "availableReplicas": 1,
                    "updatedReplicas": 3,
                    "observedGeneration": 7,
                    "generation": 7,
                },
            ],
            2,
            {
                "replicas": 5,
                "readyReplicas": 3,
                "availableReplicas": 3,
                "updatedReplicas": 5,
                "observedGeneration": 2,
            },
        ),
        # A member behind its generation: no observedGeneration on the template.
        (
            "apps/v1",
            "StatefulSet",
            [
                {"replicas": 1, "readyReplicas": 1, "observedGeneration": 1, "generation": 2},
                {"replicas": 1, "readyReplicas": 1, "observedGeneration": 2, "generation": 2},
            ],
            5,
            {"replicas": 2, "readyReplicas": 2},
        ),
        (
            "apps/v1",
            "DaemonSet",
            [
                {"desiredNumberScheduled": 2, "numberReady": 2, "observedGeneration": 1},
                {"desiredNumberScheduled": 3, "numberReady": 1, "observedGeneration": 1},
            ],
            1,
            {"desiredNumberScheduled": 5, "numberReady": 3},
        ),
        (
            "batch/v1",
            "Job",
            [
                {
                    "succeeded": 2,
                    "startTime": "2026-01-01T00:00:05Z",
                    "completionTime": "2026-01-01T00:01:00Z",
                    "conditions": [{"type": "Complete", "status": "True"}],
                },
                {
                    "succeeded": 1,
                    "startTime": "2026-01-01T00:00:01Z",
                    "completionTime": "2026-01-01T00:02:00Z",
                    "conditions": [{"type": "Complete", "status": "True"}],
                },
            ],
            1,
            {
                "succeeded": 3,
                "startTime": "2026-01-01T00:00:01Z",
                "completionTime": "2026-01-01T00:02:00Z",
                "conditions": [
                    {
                        "type": "Complete",
                        "status": "True",
                        "reason": "Completed",
                        "message": "Job completed in every cluster",
                    }
                ],
            },
        ),
        (
            "batch/v1",
            "Job",
            [{"active": 1}, {"failed": 1, "conditions": [{"type": "Failed", "status": "True"}]}],
            1,
            {
                "active": 1,
                "failed": 1,
                "conditions": [
                    {
                        "type": "Failed",
                        "status": "True",
                        "reason": "JobFailed",
                        "message": "Job failed in: m2",
                    }
                ],
            },
        ),
        (
            "v1",
            "Service",
            [
                {"loadBalancer": {"ingress": [{"ip": "10.0.0.1"}]}},
                {"loadBalancer": {"ingress": [{"ip": "10.0.0.2"}]}},
            ],
            1,
            {"loadBalancer": {"ingress": [{"ip": "10.0.0.1"}, {"ip": "10.0.0.2"}]}},
        ),
        ("v1", "Pod", [{"phase": "Running"}, {"phase": "Pending"}], 1, {"phase": "Pending"}),
        ("v1", "Pod", [{"phase": "Succeeded"}, {"phase": "Succeeded"}], 1, {"phase": "Succeeded"}),
        (
            "v1",
            "PersistentVolumeClaim",
            [{"phase": "Bound"}, {"phase": "Bound"}],
            1,
            {"phase": "Bound"},
        ),
        (
            "policy/v1",
            "PodDisruptionBudget",
            [
                {"currentHealthy": 1, "desiredHealthy": 1},
                {"currentHealthy": 2, "desiredHealthy": 1},
            ],
            1,
            {"currentHealthy": 3, "desiredHealthy": 2, "disruptionsAllowed": 0, "expectedPods": 0},
        ),
        (
            "autoscaling/v2",
            "HorizontalPodAutoscaler",
            [{"currentReplicas": 2, "desiredReplicas": 3}, {"currentReplicas": 1}],
            1,
            {"currentReplicas": 3, "desiredReplicas": 3},
        ),
        (
            "batch/v1",
            "CronJob",
            [
                {"lastScheduleTime": "2026-01-01T00:00:00Z"},
                {"lastScheduleTime": "2026-01-02T00:00:00Z", "active": [{"name": "j"}]},
            ],
            1,
            {"active": [{"name": "j"}], "lastScheduleTime": "2026-01-02T00:00:00Z"},
        ),
        # Nobody describes it: one cluster's status is the template's; several are not merged.
        ("example.io/v1", "Widget", [{"phase": "Ready"}], 1, {"phase": "Ready"}),
        ("example.io/v1", "Widget", [{"phase": "Ready"}, {"phase": "Ready"}], 1, None),
    ],
)
def test_status_aggregation_by_kind(
    api_version: str,
    kind: str,
    statuses: list[dict[str, Any]],
    generation: int,
    aggregated: dict[str, Any] | None,
) -> None:
    members = [MemberStatus(f"m{i + 1}", status) for i, status in enumerate(statuses)]
    found = REGISTRY.get(api_version, kind).aggregate_status(members, generation)
    assert found == aggregated


# -- retention -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("desired", "observed", "retained"),
    [
        # A member-side autoscaler owns the replicas: the member's count stays.
        (
            obj(
                "apps/v1",
                "Deployment",
                spec={"replicas": 2},
                metadata={"name": "x", "labels": {"archipel.io/retain-replicas": "true"}},
            ),
            {"spec": {"replicas": 7}},
            {"replicas": 7},
        ),
        (
            obj(
                "apps/v1",
                "Deployment",
                spec={"replicas": 2},
                metadata={
                    "name": "x",
                    "annotations": {"resourcetemplate.karmada.io/retain-replicas": "true"},
                },
            ),
            {"spec": {"replicas": 7}},
            {"replicas": 7},
        ),
        (
            obj("apps/v1", "Deployment", spec={"replicas": 2}),
            {"spec": {"replicas": 7}},
            {"replicas": 2},
        ),
        # Each member allocates its own cluster IP.
        (
            obj("v1", "Service", spec={"clusterIP": "10.0.0.9", "ports": [{"port": 80}]}),
            {"spec": {"clusterIP": "10.96.0.5", "clusterIPs": ["10.96.0.5"], "ports": []}},
            {"clusterIP": "10.96.0.5", "clusterIPs": ["10.96.0.5"], "ports": [{"port": 80}]},
        ),
        # Nothing in the member yet: the template as it is.
        (obj("v1", "Service", spec={"ports": [{"port": 80}]}), None, {"ports": [{"port": 80}]}),
        (
            obj("v1", "PersistentVolumeClaim", spec={}),
            {"spec": {"volumeName": "pv-1"}},
            {"volumeName": "pv-1"},
        ),
    ],
)
def test_retention(
    desired: dict[str, Any], observed: dict[str, Any] | None, retained: dict[str, Any]
) -> None:
    kind = REGISTRY.of(desired)
    assert kind.retain(desired, observed)["spec"] == retained


# -- dependencies --------------------------------------------------------------------


def test_pod_template_dependencies() -> None:
    pod_spec = {
        "serviceAccountName": "runner",
        "imagePullSecrets": [{"name": "pull"}],
        "volumes": [
            {"name": "a", "configMap": {"name": "cm-volume"}},
            {"name": "b", "secret": {"secretName": "secret-volume"}},
            {"name": "c", "persistentVolumeClaim": {"claimName": "data"}},
            {"name": "d", "projected": {"sources": [{"configMap": {"name": "cm-projected"}}]}},
        ],
        "initContainers": [{"name": "i", "envFrom": [{"secretRef": {"name": "secret-env"}}]}],
        "containers": [
            {
                "name": "c",
                "env": [{"name": "E", "valueFrom": {"configMapKeyRef": {"name": "cm-env"}}}],
            }
        ],
    }
    deployment = obj("apps/v1", "Deployment", spec={"template": {"spec": pod_spec}})
    names = {(d.kind, d.name) for d in REGISTRY.of(deployment).dependencies(deployment)}
    assert names == {
        ("ServiceAccount", "runner"),
        ("Secret", "pull"),
        ("ConfigMap", "cm-volume"),
        ("Secret", "secret-volume"),
        ("PersistentVolumeClaim", "data"),
        ("ConfigMap", "cm-projected"),
        ("Secret", "secret-env"),
        ("ConfigMap", "cm-env"),
    }
    assert all(d.namespace == "ns" for d in REGISTRY.of(deployment).dependencies(deployment))
    cronjob = obj(
        "batch/v1",
        "CronJob",
        spec={"jobTemplate": {"spec": {"template": {"spec": {"serviceAccountName": "default"}}}}},
    )
    # Every namespace has its own default account.
    assert REGISTRY.of(cronjob).dependencies(cronjob) == []
    ingress = obj("networking.k8s.io/v1", "Ingress", spec={"tls": [{"secretName": "tls"}]})
    assert REGISTRY.of(ingress).dependencies(ingress) == [Dependency("v1", "Secret", "ns", "tls")]


# -- customizations --------------------------------------------------------------------

WIDGET_CUSTOMIZATION: dict[str, Any] = {
    "apiVersion": "config.karmada.io/v1alpha1",
    "kind": "ResourceInterpreterCustomization",
    "metadata": {"name": "widgets"},
    "spec": {
        "target": {"apiVersion": "example.io/v1", "kind": "Widget"},
        "customizations": {
            "replicaResource": {"replicas": ".spec.size", "podTemplate": ".spec.template"},
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
            "healthInterpretation": {
                "healthyWhen": [
                    {"path": ".status.phase", "operator": "In", "values": ["Ready", "Idle"]},
                    {
                        "path": ".status.ready",
                        "operator": "GreaterThanOrEqual",
                        "valuePath": ".spec.size",
                    },
                ]
            },
            "retention": {"paths": [".spec.endpoint"]},
            "dependencyInterpretation": {
                "dependencies": [
                    {"apiVersion": "v1", "kind": "ConfigMap", "namePath": ".spec.configs[*]"}
                ]
            },
        },
    },
}


def customization(document: dict[str, Any]) -> interpreter_pb2.ResourceInterpreterCustomization:
    return json_format.ParseDict(document, interpreter_pb2.ResourceInterpreterCustomization())


def widget(**fields: Any) -> dict[str, Any]:
    return obj("example.io/v1", "Widget", **fields)


def test_a_customization_describes_every_operation() -> None:
    registry = interpreter.Registry([customization(WIDGET_CUSTOMIZATION)])
    kind = registry.get("example.io/v1", "Widget")
    manifest = widget(
        spec={"size": 3, "configs": ["a", "b"], "template": {"spec": {"containers": []}}},
        status={"ready": 3, "phase": "Ready"},
    )
    assert kind.replicas(manifest) == 3
    assert kind.pod_template(manifest) == {"spec": {"containers": []}}
    assert kind.revise_replicas(manifest, 1)["spec"]["size"] == 1
    assert kind.reflect_status(manifest) == {"readyReplicas": 3, "phase": "Ready"}
    assert kind.health(manifest) == "Healthy"
    assert kind.health(widget(spec={"size": 3}, status={"ready": 2, "phase": "Ready"})) == (
        "Unhealthy"
    )
    assert kind.health(widget(spec={"size": 1}, status={"ready": 1, "phase": "Down"})) == (
        "Unhealthy"
    )
    members = [
        MemberStatus("m1", {"readyReplicas": 2, "phase": "Ready"}),
        MemberStatus("m2", {"readyReplicas": 1, "phase": "Idle"}),
    ]
    assert kind.aggregate_status(members, 1) == {
        "readyReplicas": 3,
        "phase": [{"clusterName": "m1", "value": "Ready"}, {"clusterName": "m2", "value": "Idle"}],
    }
    assert kind.retain(widget(spec={"endpoint": "x"}), {"spec": {"endpoint": "y"}}) == widget(
        spec={"endpoint": "y"}
    )
    assert [d.name for d in kind.dependencies(manifest)] == ["a", "b"]
    # Other kinds are untouched by it.
    assert registry.get("apps/v1", "Deployment") is REGISTRY.get("apps/v1", "Deployment")


def test_a_partial_customization_falls_back_to_the_builtin_interpreter() -> None:
    document = {
        "metadata": {"name": "deployments"},
        "spec": {
            "target": {"apiVersion": "apps/v1", "kind": "Deployment"},
            "customizations": {
                "healthInterpretation": {
                    "healthyWhen": [{"path": ".metadata.labels.ok", "operator": "Exists"}]
                }
            },
        },
    }
    kind = interpreter.Registry([customization(document)]).get("apps/v1", "Deployment")
    deployment = obj("apps/v1", "Deployment", spec={"replicas": 4}, status={})
    assert kind.health(deployment) == "Unhealthy"
    assert kind.replicas(deployment) == 4  # still the built-in


@pytest.mark.parametrize(
    ("change", "field", "message"),
    [
        (
            {"healthInterpretation": {"luaScript": "function InterpretHealth(o) return true end"}},
            "spec.customizations.healthInterpretation.luaScript",
            "Lua scripts are not supported",
        ),
        (
            {"replicaResource": {"replicas": ".spec[size"}},
            "spec.customizations.replicaResource.replicas",
            "invalid JSONPath",
        ),
        (
            {"replicaResource": {"podTemplate": ".spec.template"}},
            "spec.customizations.replicaResource.replicas",
            "is required",
        ),
        (
            {"replicaRevision": {"replicas": ".spec.sizes[0]"}},
            "spec.customizations.replicaRevision.replicas",
            "only field names",
        ),
        (
            {"healthInterpretation": {"healthyWhen": [{"path": ".status.a", "operator": "Near"}]}},
            "spec.customizations.healthInterpretation.healthyWhen[0].operator",
            "must be one of",
        ),
        (
            {"healthInterpretation": {"healthyWhen": [{"path": ".status.a", "operator": "Equal"}]}},
            "spec.customizations.healthInterpretation.healthyWhen[0]",
            "needs values or valuePath",
        ),
        (
            {"statusAggregation": {"fields": [{"name": "a", "operation": "Average"}]}},
            "spec.customizations.statusAggregation.fields[0].operation",
            "must be one of",
        ),
        (
            {"statusReflection": {"fields": [{"path": ".status.a"}]}},
            "spec.customizations.statusReflection.fields[0].name",
            "is required",
        ),
        (
            {"retention": {"paths": [".spec.items[*].ip"]}},
            "spec.customizations.retention.paths[0]",
            "only field names",
        ),
        (
            {"dependencyInterpretation": {"dependencies": [{"namePath": ".spec.x"}]}},
            "spec.customizations.dependencyInterpretation.dependencies[0]",
            "apiVersion and kind are required",
        ),
    ],
)
def test_bad_customizations_name_the_field(
    change: dict[str, Any], field: str, message: str
) -> None:
    document = {
        "metadata": {"name": "bad"},
        "spec": {
            "target": {"apiVersion": "example.io/v1", "kind": "Widget"},
            "customizations": change,
        },
    }
    with pytest.raises(interpreter.CustomizationInvalid) as raised:
        interpreter.compile_customization(customization(document))
    assert raised.value.field == field
    assert message in raised.value.message


def test_target_is_required() -> None:
    with pytest.raises(interpreter.CustomizationInvalid, match=r"spec\.target\.kind"):
        interpreter.compile_customization(
            customization({"spec": {"target": {"apiVersion": "example.io/v1"}}})
        )


def test_run_time_failures_name_the_customization_and_stay_with_their_kind() -> None:
    registry = interpreter.Registry([customization(WIDGET_CUSTOMIZATION)])
    kind = registry.get("example.io/v1", "Widget")
    # ready is text, not a number: the comparison cannot be made.
    broken = widget(spec={"size": 1}, status={"ready": "many", "phase": "Ready"})
    with pytest.raises(interpreter.InterpreterError, match="widgets, healthInterpretation"):
        kind.health(broken)
    with pytest.raises(interpreter.InterpreterError, match="not a replica count"):
        kind.replicas(widget(spec={"size": "three"}))
    with pytest.raises(interpreter.InterpreterError, match="statusAggregation"):
        kind.aggregate_status([MemberStatus("m1", {"readyReplicas": "x"})], 1)
    deployment = obj(
        "apps/v1",
        "Deployment",
        spec={"replicas": 1},
        status={"observedGeneration": 1, "updatedReplicas": 1, "availableReplicas": 1},
    )
    assert registry.of(deployment).health(deployment) == "Healthy"


def test_the_registry_prefers_customizations_and_ignores_invalid_stored_ones() -> None:
    bad = customization(
        {
            "metadata": {"name": "aaa-bad"},
            "spec": {
                "target": {"apiVersion": "example.io/v1", "kind": "Widget"},
                "customizations": {"replicaResource": {"replicas": "[["}},
            },
        }
    )
    registry = interpreter.Registry([bad, customization(WIDGET_CUSTOMIZATION)])
    assert registry.get("example.io/v1", "Widget").replicas(widget(spec={"size": 5})) == 5
    registry.update([])
    assert registry.get("example.io/v1", "Widget").replicas(widget(spec={"size": 5})) is None
