"""A `full`-profile member runs workloads on kwok's fake nodes."""

from __future__ import annotations

import uuid

import pytest
from kubernetes import client, watch

from archipel.fleet.members import Fleet

pytestmark = pytest.mark.members(count=1, profile="full")


def test_deployment_becomes_ready_on_fake_nodes(members: Fleet) -> None:
    member = next(iter(members))
    api_client = member.api_client()
    core = client.CoreV1Api(api_client)
    apps = client.AppsV1Api(api_client)
    namespace = f"apps-{uuid.uuid4().hex[:8]}"
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=namespace)))
    labels = {"app": "web"}
    apps.create_namespaced_deployment(
        namespace,
        client.V1Deployment(
            metadata=client.V1ObjectMeta(name="web"),
            spec=client.V1DeploymentSpec(
                replicas=3,
                selector=client.V1LabelSelector(match_labels=labels),
                template=client.V1PodTemplateSpec(
                    metadata=client.V1ObjectMeta(labels=labels),
                    spec=client.V1PodSpec(
                        containers=[client.V1Container(name="web", image="nginx:1.27")]
                    ),
                ),
            ),
        ),
    )
    ready = 0
    stream = watch.Watch()
    for event in stream.stream(
        apps.list_namespaced_deployment,
        namespace,
        field_selector="metadata.name=web",
        timeout_seconds=90,
    ):
        ready = event["object"].status.ready_replicas or 0
        if ready == 3:
            stream.stop()
    assert ready == 3

    pods = core.list_namespaced_pod(namespace, label_selector="app=web").items
    assert len(pods) == 3
    assert all(pod.status.phase == "Running" for pod in pods)
    node_names = {node.metadata.name for node in core.list_node().items}
    assert {pod.spec.node_name for pod in pods} <= node_names


def test_fake_nodes_carry_topology_and_capacity(members: Fleet) -> None:
    member = next(iter(members))
    nodes = client.CoreV1Api(member.api_client()).list_node().items
    assert len(nodes) == member.spec.nodes.count
    for node in nodes:
        assert node.metadata.labels["topology.kubernetes.io/region"] == member.spec.region
        assert node.metadata.labels["topology.kubernetes.io/zone"] == member.spec.zone
        assert node.status.allocatable["cpu"] == member.spec.nodes.cpu
        assert node.status.allocatable["memory"] == member.spec.nodes.memory
        assert node.status.allocatable["pods"] == str(member.spec.nodes.pods)
