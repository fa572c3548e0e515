"""``archipel promote`` end to end: a workload made directly in member3 is brought under
Archipel without a restart, and is really managed afterwards."""

from __future__ import annotations

import json
from typing import Any

import pytest
from kubernetes import client as k8s

from archipel.client import ClientError, api_kind_by_name, message_to_document
from tests.e2e.conftest import Pipeline, wait_for

pytestmark = pytest.mark.members(count=3, profile="full", isolated=True)
MEMBER = "member3"
MANAGED = "archipel.io/managed"


def _kubeconfig(pipeline: Pipeline) -> str:
    return str(pipeline.fleet[MEMBER].kubeconfig)


def _promote(pipeline: Pipeline, target: str, *args: str) -> Any:
    return pipeline.cli("promote", target, *args, "--cluster-kubeconfig", _kubeconfig(pipeline))


def _create_namespace(pipeline: Pipeline, namespace: str) -> None:
    pipeline.core(MEMBER).create_namespace(
        k8s.V1Namespace(metadata=k8s.V1ObjectMeta(name=namespace))
    )


def _create_deployment(pipeline: Pipeline, namespace: str, name: str = "web") -> None:
    labels = {"app": name}
    pipeline.apps(MEMBER).create_namespaced_deployment(
        namespace,
        k8s.V1Deployment(
            metadata=k8s.V1ObjectMeta(name=name, labels=labels),
            spec=k8s.V1DeploymentSpec(
                replicas=2,
                selector=k8s.V1LabelSelector(match_labels=labels),
                template=k8s.V1PodTemplateSpec(
                    metadata=k8s.V1ObjectMeta(labels=labels),
                    spec=k8s.V1PodSpec(containers=[k8s.V1Container(name=name, image="nginx:1.27")]),
                ),
            ),
        ),
    )


def _running_pods(pipeline: Pipeline, namespace: str) -> dict[str, str] | None:
    """uid -> name of the two Running pods on kwok's nodes, once there are exactly two."""
    core = pipeline.core(MEMBER)
    nodes = {node.metadata.name for node in core.list_node().items}
    pods = core.list_namespaced_pod(namespace, label_selector="app=web").items
    if len(pods) != 2 or not all(
        p.status.phase == "Running"
        and p.spec.node_name in nodes
        and not p.metadata.deletion_timestamp
        for p in pods
    ):
        return None
    return {str(p.metadata.uid): str(p.metadata.name) for p in pods}


def _replica_sets(pipeline: Pipeline, namespace: str) -> set[str]:
    listed = pipeline.apps(MEMBER).list_namespaced_replica_set(namespace, label_selector="app=web")
    return {str(rs.metadata.name) for rs in listed.items}


def _observed(pipeline: Pipeline, namespace: str) -> Any:
    """The Deployment once its controller has seen its latest generation."""
    found = pipeline.deployment(MEMBER, namespace, "web")
    if found is None or found.status.observed_generation != found.metadata.generation:
        return None
    return found


def _binding(pipeline: Pipeline, namespace: str, name: str) -> dict[str, Any] | None:
    api = pipeline.client()
    try:
        kind = api_kind_by_name("binding")
        assert kind is not None
        found = api.get_object(kind, name, namespace)
        return message_to_document(found)
    except ClientError:
        return None
    finally:
        api.close()


def _fully_applied(pipeline: Pipeline, namespace: str, name: str) -> bool:
    binding = _binding(pipeline, namespace, name)
    if binding is None:
        return False
    conditions = binding.get("status", {}).get("conditions", [])
    return any(c["type"] == "FullyApplied" and c["status"] == "True" for c in conditions)


def _one_line_error(result: Any, *needles: str) -> None:
    assert result.returncode == 1, (result.stdout, result.stderr)
    message = result.stderr.strip()
    assert message.startswith("error: ") and "\n" not in message, message
    for needle in needles:
        assert needle in message, message


def test_promoting_a_deployment_keeps_its_pods(pipeline: Pipeline, namespace: str) -> None:
    _create_namespace(pipeline, namespace)
    _create_deployment(pipeline, namespace)
    pods = wait_for("two Running pods", lambda: _running_pods(pipeline, namespace), timeout=90)
    before = pipeline.deployment(MEMBER, namespace, "web")
    assert before is not None
    generation: int = before.metadata.generation or 0
    replica_sets = _replica_sets(pipeline, namespace)
    assert len(replica_sets) == 1

    dry = _promote(pipeline, "deploy/web", "-n", namespace, "--cluster", MEMBER, "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert "kind: Deployment" in dry.stdout and "kind: PropagationPolicy" in dry.stdout
    assert "resourceVersion" not in dry.stdout and "status:" not in dry.stdout
    assert pipeline.cli("get", "deployment", "web", "-n", namespace).returncode == 1

    promoted = _promote(pipeline, "deployment/web", "-n", namespace, "--cluster", MEMBER)
    assert promoted.returncode == 0, promoted.stderr
    assert promoted.stdout.splitlines() == [
        "deployment/web created",
        "propagationpolicy/web-deployment-promoted created",
    ]
    wait_for(
        "the binding FullyApplied",
        lambda: _fully_applied(pipeline, namespace, "web-deployment"),
        timeout=90,
    )
    # The agent's annotation bumps the Deployment's generation once (the API server does
    # so for any annotation change, as it copies them onto ReplicaSets); the pod template
    # is untouched, so the controller must settle on the same ReplicaSet.
    after = wait_for(
        "the Deployment controller to observe it",
        lambda: _observed(pipeline, namespace),
        timeout=90,
    )
    assert after.metadata.labels.get(MANAGED) == "true"
    assert after.metadata.uid == before.metadata.uid
    assert after.metadata.generation in (generation, generation + 1)
    assert after.spec.template == before.spec.template
    # Nothing rolled: the same ReplicaSet and the very same pods.
    assert _replica_sets(pipeline, namespace) == replica_sets
    assert _running_pods(pipeline, namespace) == pods

    template = pipeline.cli("get", "deployment", "web", "-n", namespace, "-o", "json")
    assert template.returncode == 0, template.stderr
    document = json.loads(template.stdout)
    assert document["spec"]["replicas"] == 2
    policy = pipeline.cli("get", "pp", "web-deployment-promoted", "-n", namespace, "-o", "json")
    assert json.loads(policy.stdout)["spec"]["conflictResolution"] == "Overwrite"

    # Promoting again is refused: the template is already there.
    again = _promote(pipeline, "deployment/web", "-n", namespace, "--cluster", MEMBER)
    _one_line_error(again, "already a resource template")

    # It is really managed now: a change to the template reaches member3.
    document["spec"]["template"]["spec"]["containers"][0]["image"] = "nginx:1.28"
    applied = pipeline.cli("apply", "-f", "-", stdin=json.dumps(document))
    assert applied.returncode == 0, applied.stderr

    def image() -> str:
        current = pipeline.deployment(MEMBER, namespace, "web")
        return str(current.spec.template.spec.containers[0].image) if current else ""

    wait_for("the new image in member3", lambda: image() == "nginx:1.28", timeout=90)


def test_promoting_a_service_keeps_its_cluster_ip(pipeline: Pipeline, namespace: str) -> None:
    _create_namespace(pipeline, namespace)
    created = pipeline.core(MEMBER).create_namespaced_service(
        namespace,
        k8s.V1Service(
            metadata=k8s.V1ObjectMeta(name="web"),
            spec=k8s.V1ServiceSpec(
                selector={"app": "web"},
                ports=[k8s.V1ServicePort(port=80, target_port=8080)],
            ),
        ),
    )
    cluster_ip = created.spec.cluster_ip
    assert cluster_ip
    promoted = _promote(pipeline, "svc/web", "-n", namespace, "--cluster", MEMBER)
    assert promoted.returncode == 0, promoted.stderr
    assert promoted.stdout.splitlines()[0] == "service/web created"

    def managed() -> Any:
        found = pipeline.core(MEMBER).read_namespaced_service("web", namespace)
        return found if (found.metadata.labels or {}).get(MANAGED) == "true" else None

    service = wait_for("the Service taken over", managed, timeout=90)
    wait_for(
        "the binding FullyApplied",
        lambda: _fully_applied(pipeline, namespace, "web-service"),
        timeout=90,
    )
    assert service.metadata.uid == created.metadata.uid
    assert service.spec.cluster_ip == cluster_ip
    current = pipeline.core(MEMBER).read_namespaced_service("web", namespace)
    assert current.spec.cluster_ip == cluster_ip
    template = json.loads(pipeline.cli("get", "svc", "web", "-n", namespace, "-o", "json").stdout)
    assert "clusterIP" not in template["spec"]


def test_promote_refuses_with_one_line(pipeline: Pipeline, namespace: str) -> None:
    _create_namespace(pipeline, namespace)
    pipeline.core(MEMBER).create_namespaced_config_map(
        namespace, k8s.V1ConfigMap(metadata=k8s.V1ObjectMeta(name="settings"), data={"a": "1"})
    )
    unknown = _promote(pipeline, "cm/settings", "-n", namespace, "--cluster", "member9")
    _one_line_error(unknown, "member9", "not a registered member cluster")
    missing = _promote(pipeline, "deployment/nothing", "-n", namespace, "--cluster", MEMBER)
    _one_line_error(missing, "Deployment", "nothing", "not found in member member3")
    system = _promote(pipeline, "cm/kube-root-ca.crt", "-n", "kube-system", "--cluster", MEMBER)
    _one_line_error(system, "kube-system is a system namespace")

    first = _promote(pipeline, "ConfigMap/settings", "-n", namespace, "--cluster", MEMBER)
    assert first.returncode == 0, first.stderr
    second = _promote(pipeline, "configmap/settings", "-n", namespace, "--cluster", MEMBER)
    _one_line_error(second, "ConfigMap", "settings", "already a resource template")
    wait_for(
        "the ConfigMap taken over",
        lambda: _fully_applied(pipeline, namespace, "settings-configmap"),
        timeout=90,
    )
    found = pipeline.core(MEMBER).read_namespaced_config_map("settings", namespace)
    assert found.metadata.labels.get(MANAGED) == "true"
    assert found.data == {"a": "1"}
