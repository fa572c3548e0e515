"""Cluster facts for heartbeats: version, API resources, nodes and capacity.

These feed the MemberCluster's status (and later, capacity-aware scheduling).
Discovery is costly, so API resources are fetched every tenth heartbeat and sent
only when they changed.
"""

from __future__ import annotations

import hashlib
from decimal import Decimal
from typing import Any

import kubernetes
from kubernetes.utils.quantity import parse_quantity as _parse_quantity

from agent.kube import Kube, describe
from archipel.v1alpha1 import agent_pb2, cluster_pb2


def parse_quantity(quantity: str) -> Decimal:
    parsed: Decimal = _parse_quantity(quantity)  # type: ignore[no-untyped-call]
    return parsed


def _format(resource: str, value: Decimal) -> str:
    if resource == "cpu":
        return f"{int(value * 1000)}m"
    return str(int(value))


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
        allocatable: dict[str, Decimal] = {}
        ready_nodes = 0
        for node in nodes:
            if node.status is None:
                continue
            conditions = node.status.conditions or []
            if any(c.type == "Ready" and c.status == "True" for c in conditions):
                ready_nodes += 1
            for resource, quantity in (node.status.allocatable or {}).items():
                if resource in ("cpu", "memory", "pods"):
                    allocatable[resource] = allocatable.get(resource, Decimal(0)) + parse_quantity(
                        quantity
                    )
        heartbeat.node_summary.total_num = len(nodes)
        heartbeat.node_summary.ready_num = ready_nodes
        allocated: dict[str, Decimal] = {"pods": Decimal(0)}
        pods = core.list_pod_for_all_namespaces(
            field_selector="status.phase!=Succeeded,status.phase!=Failed"
        ).items
        for pod in pods:
            if pod.spec is None or not pod.spec.node_name:
                continue
            allocated["pods"] += 1
            for container in pod.spec.containers:
                requests = (container.resources.requests or {}) if container.resources else {}
                for resource in ("cpu", "memory"):
                    if resource in requests:
                        allocated[resource] = allocated.get(resource, Decimal(0)) + parse_quantity(
                            requests[resource]
                        )
        summary = heartbeat.resource_summary
        for resource, value in allocatable.items():
            summary.allocatable[resource] = _format(resource, value)
        for resource, value in allocated.items():
            summary.allocated[resource] = _format(resource, value)
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
