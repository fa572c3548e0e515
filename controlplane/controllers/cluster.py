"""The cluster controller: member cluster lifecycle.

Key: a MemberCluster key.

* Registration: ``Join`` creates the MemberCluster and its credential (only a hash of
  the token is stored).
* Heartbeats: agents report cluster facts on their stream; the newest heartbeat is
  kept in memory and turned into status and the ``Ready`` condition. A cluster whose
  agent is silent for the grace period becomes ``Ready=Unknown``, as Karmada's
  cluster-monitor-grace-period does; a cluster whose API server does not answer its
  agent becomes ``Ready=False``.
* Taints follow readiness, NoSchedule only, as Karmada: not-ready and unreachable.
* Deletion removes the cluster's works (the member is going away, so nobody is left
  to clean up) and its credential, then the finalizer.
"""

from __future__ import annotations

import dataclasses
import hashlib
import secrets
import time

from google.protobuf import timestamp_pb2

from archipel.core import kinds, scheduling
from archipel.core.conditions import find, set_condition
from archipel.core.errors import AlreadyExists, NotFound, Unauthenticated
from archipel.v1alpha1 import agent_pb2, cluster_pb2, meta_pb2
from controlplane.context import FINALIZER, WORK_FINALIZER, Context
from controlplane.plan import Plan
from controlplane.predicates import is_deleting

NAME = "cluster-controller"
CREDENTIALS = "credentials/_/"
# Write lastHeartbeatTime at most this often when nothing else changed.
_HEARTBEAT_WRITE_INTERVAL = 30.0


@dataclasses.dataclass
class Liveness:
    heartbeat: agent_pb2.Heartbeat | None = None
    received_at: float = 0.0  # monotonic
    connected: bool = False
    agent_version: str = ""


def hash_secret(secret: str) -> bytes:
    return hashlib.sha256(secret.encode()).hexdigest().encode()


class ClusterController:
    def __init__(self, context: Context) -> None:
        self.context = context
        self.controller = context.controller(NAME, self.reconcile)
        self.liveness: dict[str, Liveness] = {}
        self.started = time.monotonic()
        context.clusters.add_handler(lambda key, old, new: self.controller.enqueue(key))

    # -- registration and credentials ------------------------------------------------

    async def join(
        self, cluster: cluster_pb2.MemberCluster, *, rotate: bool
    ) -> tuple[cluster_pb2.MemberCluster, str]:
        store = self.context.store
        name = cluster.metadata.name
        key = kinds.MEMBER_CLUSTER.key("", name)
        existing = await store.get(kinds.MEMBER_CLUSTER, key)
        if existing is not None and not rotate:
            raise AlreadyExists(
                f"MemberCluster {name} already exists; pass rotate to issue a new credential"
            )
        if existing is None:
            cluster.metadata.finalizers.append(FINALIZER)
            existing = await store.create(kinds.MEMBER_CLUSTER, cluster)
        secret = secrets.token_urlsafe(32)
        credential_key = CREDENTIALS + name
        current = await store.etcd.get(credential_key)
        revision = await store.put_raw(
            credential_key,
            hash_secret(secret),
            expect_mod_revision=current.mod_revision if current else 0,
        )
        if revision is None:
            raise AlreadyExists(f"MemberCluster {name}: a credential was issued concurrently")
        return existing, f"{name}.{secret}"

    async def authenticate(self, token: str) -> str:
        """The cluster a token belongs to; raises :class:`Unauthenticated`."""
        name, _, secret = token.partition(".")
        if not name or not secret:
            raise Unauthenticated("malformed cluster token")
        stored = await self.context.store.etcd.get(CREDENTIALS + name)
        if stored is None or not secrets.compare_digest(stored.value, hash_secret(secret)):
            raise Unauthenticated("invalid cluster token")
        return name

    def require_registered(self, name: str) -> None:
        cluster = self.context.clusters.get(kinds.MEMBER_CLUSTER.key("", name))
        if cluster is None or is_deleting(cluster):
            raise NotFound(f"MemberCluster {name} is not registered")

    # -- liveness --------------------------------------------------------------------

    def connected(self, name: str, agent_version: str) -> None:
        live = self.liveness.setdefault(name, Liveness())
        live.connected = True
        live.agent_version = agent_version
        self.controller.enqueue(kinds.MEMBER_CLUSTER.key("", name))

    def disconnected(self, name: str) -> None:
        live = self.liveness.get(name)
        if live is not None:
            live.connected = False
        self.controller.enqueue(kinds.MEMBER_CLUSTER.key("", name))

    def heartbeat(self, name: str, heartbeat: agent_pb2.Heartbeat) -> None:
        live = self.liveness.setdefault(name, Liveness())
        previous = live.heartbeat
        if previous is not None and not heartbeat.api_enablements_changed:
            heartbeat.api_enablements.extend(previous.api_enablements)
        live.heartbeat = heartbeat
        live.received_at = time.monotonic()
        self.controller.enqueue(kinds.MEMBER_CLUSTER.key("", name))

    # -- reconcile -------------------------------------------------------------------

    async def _remove(self, cluster: cluster_pb2.MemberCluster) -> None:
        store = self.context.store
        name = cluster.metadata.name
        for work in self.context.works.by_index("cluster", name):
            released = kinds.PROPAGATION_WORK.copy(work)
            if WORK_FINALIZER in released.metadata.finalizers:
                # Nobody is left to clean up the member: let the work go at once.
                released.metadata.finalizers.remove(WORK_FINALIZER)
                released = await store.update(kinds.PROPAGATION_WORK, released, current=work)
            if not is_deleting(released):
                await store.delete(kinds.PROPAGATION_WORK, kinds.PROPAGATION_WORK.key_of(released))
        await store.delete_raw(CREDENTIALS + name)
        self.liveness.pop(name, None)
        await store.remove_finalizer(
            kinds.MEMBER_CLUSTER, kinds.MEMBER_CLUSTER.copy(cluster), FINALIZER
        )

    async def reconcile(self, key: str) -> Plan | None:
        cluster = self.context.clusters.get(key)
        if cluster is None:
            return None
        if is_deleting(cluster):
            await self._remove(cluster)
            return None
        settings = self.context.settings
        name = cluster.metadata.name
        live = self.liveness.get(name, Liveness())
        updated = kinds.MEMBER_CLUSTER.copy(cluster)
        if FINALIZER not in updated.metadata.finalizers:
            updated.metadata.finalizers.append(FINALIZER)
        status = updated.status
        now = time.monotonic()
        heartbeat = live.heartbeat
        age = now - live.received_at if heartbeat is not None else now - self.started
        if heartbeat is not None and age <= settings.cluster_grace_period:
            status.kubernetes_version = heartbeat.kubernetes_version
            del status.api_enablements[:]
            status.api_enablements.extend(heartbeat.api_enablements)
            status.node_summary.CopyFrom(heartbeat.node_summary)
            status.resource_summary.CopyFrom(heartbeat.resource_summary)
            if heartbeat.cluster_id:
                updated.spec.id = heartbeat.cluster_id
            if heartbeat.api_server_ready:
                ready = ("True", "ClusterReady", "cluster is healthy and ready to accept workloads")
            else:
                ready = (
                    "False",
                    "ClusterNotReachable",
                    heartbeat.message or "API server not ready",
                )
        elif (
            heartbeat is None
            and age <= settings.cluster_grace_period
            and find(status.conditions, "Ready")
        ):
            # Just restarted: keep what was known until agents have had time to report.
            ready = None
        else:
            ready = ("Unknown", "ClusterStatusUnknown", "the cluster agent stopped posting status")
            if heartbeat is None and not find(status.conditions, "Ready"):
                ready = (
                    "Unknown",
                    "ClusterStatusUnknown",
                    "waiting for the cluster agent to connect",
                )
        if ready is not None:
            set_condition(status.conditions, "Ready", *ready)
        status.agent.connected = live.connected
        status.agent.version = live.agent_version
        if heartbeat is not None:
            stamp = timestamp_pb2.Timestamp()
            stamp.FromSeconds(int(time.time() - age))
            previous = cluster.status.agent.last_heartbeat_time.seconds
            if (
                stamp.seconds - previous >= _HEARTBEAT_WRITE_INTERVAL
                or updated.status != cluster.status
            ):
                status.agent.last_heartbeat_time.CopyFrom(stamp)
            else:
                status.agent.last_heartbeat_time.CopyFrom(cluster.status.agent.last_heartbeat_time)
        self._set_taints(updated)
        if updated != cluster:
            await self.context.store.update(kinds.MEMBER_CLUSTER, updated, current=cluster)
        # Level-triggered liveness: look again when the grace period could run out.
        return Plan(requeue_after=max(1.0, settings.cluster_grace_period / 4))

    @staticmethod
    def _set_taints(cluster: cluster_pb2.MemberCluster) -> None:
        condition = find(cluster.status.conditions, "Ready")
        status = condition.status if condition is not None else "Unknown"
        wanted = {"False": scheduling.NOT_READY_TAINT, "Unknown": scheduling.UNREACHABLE_TAINT}.get(
            status
        )
        automatic = (scheduling.NOT_READY_TAINT, scheduling.UNREACHABLE_TAINT)
        kept = [
            meta_pb2.Taint.FromString(t.SerializeToString())
            for t in cluster.spec.taints
            if t.key not in automatic or t.key == wanted
        ]
        if wanted is not None and not any(t.key == wanted for t in kept):
            taint = meta_pb2.Taint(key=wanted, effect="NoSchedule")
            taint.time_added.FromSeconds(int(time.time()))
            kept.append(taint)
        if [t.key for t in kept] != [t.key for t in cluster.spec.taints]:
            del cluster.spec.taints[:]
            cluster.spec.taints.extend(kept)
