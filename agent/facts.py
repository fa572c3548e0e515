"""Cluster facts for heartbeats: version, API resources, nodes and capacity.

These feed the MemberCluster's status (and later, capacity-aware scheduling).
Discovery is costly, so API resources are fetched only when they may have changed,
and sent only when they did: at the first heartbeat of a stream, at the next two
after the member's CRDs or APIServices changed (:mod:`agent.apiwatch`) or the agent
applied a CRD, and every tenth heartbeat whatever happened (see
:data:`FALLBACK_BEATS`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import threading
from collections.abc import Iterable
from fractions import Fraction
from typing import Any

import kubernetes

from agent.kube import Kube, describe
from archipel import quantity
from archipel.v1alpha1 import agent_pb2, cluster_pb2

SUMMARIZED = ("cpu", "memory", "pods")
# Discovery runs at least every this many heartbeats, watch or no watch: an aggregated
# API server may start or stop serving a resource without its APIService changing (so
# no watch event says so), and a watch the agent's RBAC does not allow sees nothing.
FALLBACK_BEATS = 10


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


@dataclasses.dataclass(frozen=True)
class Ticket:
    """One heartbeat's part in the schedule: whether it discovers, and what it saw."""

    due: bool
    stream: int
    changes: int


class DiscoverySchedule:
    """Which heartbeats run discovery, and which send its result.

    Discovery is due at a stream's first heartbeat, at the next one after a change is
    marked (:meth:`changed`) and at the one after that, and whenever
    :data:`FALLBACK_BEATS` heartbeats passed without one. A heartbeat whose discovery
    failed leaves it due. A result is sent only when it differs from the last one sent
    in this stream.

    The event loop marks changes while an executor thread collects a heartbeat, so the
    state is under a lock (never held while talking to the member).
    """

    def __init__(self, fallback_beats: int = FALLBACK_BEATS) -> None:
        self.fallback_beats = fallback_beats
        self._lock = threading.Lock()
        # Bumped by reset(): a heartbeat that began in an earlier stream leaves the
        # state alone, or the new stream might never be sent the API resources.
        self._stream = 0
        # Heartbeats since the last discovery; None: none yet in this stream.
        self._beats: int | None = None
        # Changes marked so far, and how many of them the last discovery began after.
        self._changes = 0
        self._discovered_changes = 0
        # The last discovery was a change's: run one more at the next heartbeat.
        self._confirm = False
        self._digest = b""

    def changed(self) -> None:
        with self._lock:
            self._changes += 1

    def reset(self) -> None:
        with self._lock:
            self._stream += 1
            self._beats = None
            self._digest = b""

    def start(self) -> Ticket:
        """A heartbeat begins: whether it is to discover."""
        with self._lock:
            due = (
                self._beats is None
                or self._beats >= self.fallback_beats
                or self._changes != self._discovered_changes
                or self._confirm
            )
            return Ticket(due=due, stream=self._stream, changes=self._changes)

    def finish(self, ticket: Ticket, digest: bytes | None) -> bool:
        """The heartbeat's facts are collected, with the digest of its discovery's
        result if it ran (None if not): whether to send that result."""
        with self._lock:
            if ticket.stream != self._stream:
                return False
            send = False
            if digest is not None:
                # A discovery a change asked for runs once more at the next beat: the
                # member's discovery follows its CRDs a moment after the watch event
                # does, and this one may have read it in between.
                self._confirm = ticket.changes != self._discovered_changes
                self._discovered_changes = ticket.changes
                self._beats = 0
                send = digest != self._digest
                self._digest = digest
            if self._beats is not None:
                self._beats += 1
            return send


class Facts:
    def __init__(self, kube: Kube) -> None:
        self.kube = kube
        self.schedule = DiscoverySchedule()
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
        nodes = core.list_node().items
        pods = core.list_pod_for_all_namespaces(
            field_selector="status.phase!=Succeeded,status.phase!=Failed"
        ).items
        node_summary, resource_summary = summarize(nodes, pods)
        heartbeat.node_summary.CopyFrom(node_summary)
        heartbeat.resource_summary.CopyFrom(resource_summary)
        # Discovery last: once its digest is kept, nothing may fail before the
        # heartbeat carrying it is sent, or the control plane would never hear of it.
        ticket = self.schedule.start()
        enablements: list[cluster_pb2.APIEnablement] = []
        digest = None
        if ticket.due:
            enablements = self._discover()  # if it fails, it is still due at the next beat
            digest = hashlib.sha256(
                b"".join(e.SerializeToString(deterministic=True) for e in enablements)
            ).digest()
        if self.schedule.finish(ticket, digest):
            heartbeat.api_enablements.extend(enablements)
            heartbeat.api_enablements_changed = True
        return heartbeat

    def rediscover(self) -> None:
        """The member's APIs changed, or may have (a CRD or APIService event, or the
        agent applied a CRD): discover at the next heartbeat, and once more after."""
        self.schedule.changed()

    def reset(self) -> None:
        """A new stream: the control plane needs the API resources again."""
        self.schedule.reset()

    async def collect(self) -> agent_pb2.Heartbeat:
        return await self.kube.call(self._collect)
