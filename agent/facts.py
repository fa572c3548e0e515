"""Cluster facts for heartbeats: version, API resources, nodes and capacity.

These feed the MemberCluster's status (and later, capacity-aware scheduling).
Discovery is costly, so API resources are fetched every tenth heartbeat and sent
only when they changed.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from fractions import Fraction
from typing import Any

import kubernetes

from agent.kube import Kube, describe
from archipel import quantity
from archipel.v1alpha1 import agent_pb2, cluster_pb2

SUMMARIZED = ("cpu", "memory", "pods")


def _name(obj: Any) -> str:
    metadata = getattr(obj, "metadata", None)
    return str(getattr(metadata, "name", None) or "?")


def summarize(
    nodes: Iterable[Any], pods: Iterable[Any]
) -> tuple[cluster_pb2.NodeSummary, cluster_pb2.ResourceSummary]:
    """Nodes (total, ready) and resources (allocatable, allocated) for a heartbeat.

    ``nodes`` and ``pods`` are the kubernetes client's V1Node and V1Pod objects (pods
    already limited to those not finished). Quantities are summed exactly and written
    in canonical form (:func:`archipel.quantity.canonical`), which the control plane
    reads back with :func:`archipel.quantity.parse`.
    """
    node_summary = cluster_pb2.NodeSummary()
    allocatable: dict[str, Fraction] = {}
    for node in nodes:
        node_summary.total_num += 1
        if node.status is None:
            continue
        conditions = node.status.conditions or []
        if any(c.type == "Ready" and c.status == "True" for c in conditions):
            node_summary.ready_num += 1
        for resource, amount in (node.status.allocatable or {}).items():
            if resource in SUMMARIZED:
                allocatable[resource] = allocatable.get(resource, Fraction(0)) + quantity.parse(
                    amount, field=f"node {_name(node)}: allocatable[{resource}]"
                )
    allocated: dict[str, Fraction] = {"pods": Fraction(0)}
    for pod in pods:
        if pod.spec is None or not pod.spec.node_name:
            continue
        allocated["pods"] += 1
        for container in pod.spec.containers:
            requests = (container.resources.requests or {}) if container.resources else {}
            for resource in ("cpu", "memory"):
                if resource in requests:
                    allocated[resource] = allocated.get(resource, Fraction(0)) + quantity.parse(
                        requests[resource], field=f"pod {_name(pod)}: requests[{resource}]"
                    )
    resource_summary = cluster_pb2.ResourceSummary()
    for resource, value in allocatable.items():
        resource_summary.allocatable[resource] = quantity.canonical(value)
    for resource, value in allocated.items():
        resource_summary.allocated[resource] = quantity.canonical(value)
    return node_summary, resource_summary


class Facts:
    def __init__(self, kube: Kube) -> None:
        self.kube = kube
        self._enablements: list[cluster_pb2.APIEnablement] = []
        self._enablements_digest = b""
        self._beats = 0
        self._version = ""
        self._cluster_id = ""

    def _raw(self, path: str) -> Any:
        return self.kube.raw_get(path)

    def _ready(self) -> tuple[bool, str]:
        try:
            self.kube.raw_get("/readyz", timeout=3)
        except Exception as error:
            return False, f"API server not ready: {describe(error)}"
        return True, ""

    def _discover(self) -> list[cluster_pb2.APIEnablement]:
        versions = ["v1"] + [
            gv["groupVersion"]
            for group in self._raw("/apis").get("groups", [])
            for gv in group.get("versions", [])
        ]
        enablements = []
        for group_version in versions:
            path = "/api/v1" if group_version == "v1" else f"/apis/{group_version}"
            resources = self._raw(path).get("resources", [])
            enablement = cluster_pb2.APIEnablement(group_version=group_version)
            for resource in resources:
                if "/" not in resource["name"]:
                    enablement.resources.add(name=resource["name"], kind=resource["kind"])
            enablements.append(enablement)
        return enablements

    def _collect(self) -> agent_pb2.Heartbeat:
        heartbeat = agent_pb2.Heartbeat()
        ready, message = self._ready()
        heartbeat.api_server_ready = ready
        heartbeat.message = message
        if not ready:
            return heartbeat
        core = kubernetes.client.CoreV1Api(self.kube.api_client)
        if not self._version:
            self._version = (
                kubernetes.client.VersionApi(self.kube.api_client).get_code().git_version
            )
            namespace = core.read_namespace("kube-system")
            self._cluster_id = (namespace.metadata.uid if namespace.metadata else None) or ""
        heartbeat.kubernetes_version = self._version
        heartbeat.cluster_id = self._cluster_id
        if self._beats % 10 == 0:
            enablements = self._discover()
            digest = hashlib.sha256(
                b"".join(e.SerializeToString(deterministic=True) for e in enablements)
            ).digest()
            if digest != self._enablements_digest:
                self._enablements = enablements
                self._enablements_digest = digest
                heartbeat.api_enablements.extend(enablements)
                heartbeat.api_enablements_changed = True
        self._beats += 1
        nodes = core.list_node().items
        pods = core.list_pod_for_all_namespaces(
            field_selector="status.phase!=Succeeded,status.phase!=Failed"
        ).items
        node_summary, resource_summary = summarize(nodes, pods)
        heartbeat.node_summary.CopyFrom(node_summary)
        heartbeat.resource_summary.CopyFrom(resource_summary)
        return heartbeat

    def rediscover(self) -> None:
        """Read API resources again at the next heartbeat (a CRD was just applied)."""
        self._beats = 0

    def reset(self) -> None:
        """A new stream: the control plane needs the API resources again."""
        self._enablements_digest = b""
        self._beats = 0

    async def collect(self) -> agent_pb2.Heartbeat:
        return await self.kube.call(self._collect)
