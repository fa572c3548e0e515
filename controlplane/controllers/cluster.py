"""The cluster controller: member cluster lifecycle.

Key: a MemberCluster key.

* Registration: ``Join`` creates the MemberCluster and its credential (only a hash of
  the token is stored). ``join`` and ``authenticate`` answer API calls and write or
  read etcd directly; everything else is a reconcile.
* Heartbeats: agents report cluster facts on their stream; the newest heartbeat is
  kept in memory (:class:`Liveness`) and turned into status and the ``Ready``
  condition. A cluster whose agent is silent for the grace period becomes
  ``Ready=Unknown``, as Karmada's cluster-monitor-grace-period does; a cluster whose
  API server does not answer its agent becomes ``Ready=False``.
* Taints follow readiness, NoSchedule only, as Karmada: not-ready and unreachable.
* Deletion removes the cluster's works (the member is going away, so nobody is left
  to clean up) and its credential, then the finalizer.

A reconcile gathers an :class:`Observed` (the cached cluster and its works, a copy of
its liveness record, both clocks, and for a deleting cluster its credential's
revision) and :func:`plan` decides from it alone, without I/O or clocks: one update of
the cluster, or the whole removal as one transaction. Silence changes nothing in etcd,
so the plan asks to be looked at again within the grace period (``requeue_after``).
"""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import secrets
import time

from google.protobuf import timestamp_pb2

from archipel.core import kinds, names
from archipel.core.conditions import find, set_condition
from archipel.core.errors import AlreadyExists, NotFound, Unauthenticated
from archipel.v1alpha1 import agent_pb2, cluster_pb2, meta_pb2, work_pb2
from archipel.version import VERSION
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

    async def reconcile(self, key: str) -> Plan | None:
        cluster = self.context.clusters.get(key)
        if cluster is None:
            return None
        name = cluster.metadata.name
        credential_revision = 0
        if is_deleting(cluster):
            # Not an API object, so no cache holds it: read where it is now, and the
            # purge holds only if nobody issued a new one since.
            credential = await self.context.store.etcd.get(CREDENTIALS + name)
            credential_revision = credential.mod_revision if credential is not None else 0
        live = self.liveness.get(name)
        return plan(
            Observed(
                cluster=cluster,
                works=tuple(self.context.works.by_index("cluster", name)),
                live=dataclasses.replace(live) if live is not None else Liveness(),
                now_monotonic=time.monotonic(),
                now_wall=time.time(),
                started=self.started,
                grace_period=self.context.settings.cluster_grace_period,
                credential_revision=credential_revision,
                liveness=self.liveness,
            )
        )


@dataclasses.dataclass(frozen=True)
class Observed:
    """What one pass over a member cluster decides from."""

    cluster: cluster_pb2.MemberCluster
    works: tuple[work_pb2.PropagationWork, ...]
    """The works bound for the cluster (the works cache's ``cluster`` index)."""
    live: Liveness
    """A copy of the cluster's liveness record (empty: its agent never connected)."""
    now_monotonic: float
    """``time.monotonic()``: heartbeat ages are measured on this clock."""
    now_wall: float
    """``time.time()``: what timestamps written now say (heartbeats, taints, conditions)."""
    started: float
    """When this process started (monotonic): agents get a grace period to reconnect."""
    grace_period: float
    """A cluster silent this long becomes Ready=Unknown."""
    credential_revision: int = 0
    """For a deleting cluster, the mod_revision of its credential (0: none stored)."""
    liveness: dict[str, Liveness] = dataclasses.field(default_factory=dict)
    """The controller's liveness records, for the plan's bookkeeping only (a removed
    cluster's record is dropped once it is gone); the plan reads ``live``."""
    control_plane_version: str = VERSION


def version_skew(control_plane: str, agent: str) -> str:
    """Why an agent's version is too far from the control plane's, or "".

    As Kubernetes allows its kubelets: the agent may be up to one minor version older
    than the control plane, never newer, and never of another major version. A version
    that cannot be read is not judged.
    """
    ours, theirs = _major_minor(control_plane), _major_minor(agent)
    if ours is None or theirs is None:
        return ""
    if theirs[0] != ours[0] or theirs[1] > ours[1] or ours[1] - theirs[1] > 1:
        return (
            f"agent {agent} and control plane {control_plane} are too far apart: the agent "
            "may be at most one minor version older than the control plane, never newer"
        )
    return ""


def _major_minor(version: str) -> tuple[int, int] | None:
    parts = version.lstrip("v").split(".")
    try:
        return int(parts[0]), int(parts[1])
    except (IndexError, ValueError):
        return None


def plan(observed: Observed) -> Plan:
    """The cluster's status, taints and finalizer as its liveness says, or its removal."""
    if is_deleting(observed.cluster):
        return removal(observed)
    cluster = observed.cluster
    live = observed.live
    updated = kinds.MEMBER_CLUSTER.copy(cluster)
    if FINALIZER not in updated.metadata.finalizers:
        updated.metadata.finalizers.append(FINALIZER)
    status = updated.status
    heartbeat = live.heartbeat
    now = observed.now_monotonic
    age = now - live.received_at if heartbeat is not None else now - observed.started
    if heartbeat is not None and age <= observed.grace_period:
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
            ready = ("False", "ClusterNotReachable", heartbeat.message or "API server not ready")
    elif heartbeat is None and age <= observed.grace_period and find(status.conditions, "Ready"):
        # Just restarted: keep what was known until agents have had time to report.
        ready = None
    elif heartbeat is None and not status.agent.HasField("last_heartbeat_time"):
        # No heartbeat was ever recorded (not only since this process started): say
        # so, rather than that the agent stopped, and say it the same way every pass.
        ready = ("Unknown", "ClusterStatusUnknown", "waiting for the cluster agent to connect")
    else:
        ready = ("Unknown", "ClusterStatusUnknown", "the cluster agent stopped posting status")
    if ready is not None:
        set_condition(
            status.conditions,
            "Ready",
            *ready,
            now=datetime.datetime.fromtimestamp(observed.now_wall, datetime.UTC),
        )
    status.agent.connected = live.connected
    status.agent.version = live.agent_version
    skew = version_skew(observed.control_plane_version, live.agent_version)
    if live.agent_version:
        set_condition(
            status.conditions,
            "AgentVersionCompatible",
            "False" if skew else "True",
            "VersionSkew" if skew else "Compatible",
            skew or f"agent {live.agent_version}, control plane {observed.control_plane_version}",
            now=datetime.datetime.fromtimestamp(observed.now_wall, datetime.UTC),
        )
    if heartbeat is not None:
        stamp = timestamp_pb2.Timestamp()
        stamp.FromSeconds(int(observed.now_wall - age))
        previous = cluster.status.agent.last_heartbeat_time.seconds
        # Every heartbeat would otherwise be a write: the time alone is refreshed only
        # every so often, and with any other change of status.
        if (
            stamp.seconds - previous >= _HEARTBEAT_WRITE_INTERVAL
            or updated.status != cluster.status
        ):
            status.agent.last_heartbeat_time.CopyFrom(stamp)
    _set_taints(updated, now_wall=observed.now_wall)
    # Level-triggered liveness: look again when the grace period could run out, even
    # if nothing changes (silence is what makes a cluster Unknown).
    result = Plan(requeue_after=max(1.0, observed.grace_period / 4))
    if updated != cluster:
        result.update(kinds.MEMBER_CLUSTER, updated, current=cluster)
    return result


def removal(observed: Observed) -> Plan:
    """A deleting cluster's removal, as one transaction.

    The member is going away, so no agent is left to clean up after its works: each
    lets go of the agent's finalizer and is deleted. The credential goes with them, and
    then the cluster's own finalizer, so the cluster is never gone while anything of it
    remains (a plan too large for one transaction is split in this order).
    """
    cluster = observed.cluster
    name = cluster.metadata.name
    result = Plan()
    for work in observed.works:
        holds = WORK_FINALIZER in work.metadata.finalizers
        if is_deleting(work) and not holds:
            continue  # already going, and not waiting for anyone here
        released = kinds.PROPAGATION_WORK.copy(work)
        if holds:
            released.metadata.finalizers.remove(WORK_FINALIZER)
        result.delete(kinds.PROPAGATION_WORK, work, marked=released)
    if observed.credential_revision:
        result.purge(CREDENTIALS + name, observed.credential_revision)
    if FINALIZER in cluster.metadata.finalizers:
        released_cluster = kinds.MEMBER_CLUSTER.copy(cluster)
        released_cluster.metadata.finalizers.remove(FINALIZER)
        result.update(kinds.MEMBER_CLUSTER, released_cluster, current=cluster)
    liveness = observed.liveness

    def forget() -> None:
        # Only once the cluster is gone: a plan that lost a race keeps the record.
        liveness.pop(name, None)

    result.committed.append(forget)
    return result


def _set_taints(cluster: cluster_pb2.MemberCluster, *, now_wall: float) -> None:
    """Taints follow the Ready condition, as Karmada's: NoSchedule not-ready (False) or
    unreachable (Unknown), none when Ready; taints of anyone else's are kept."""
    condition = find(cluster.status.conditions, "Ready")
    status = condition.status if condition is not None else "Unknown"
    wanted = {"False": names.NOT_READY_TAINT, "Unknown": names.UNREACHABLE_TAINT}.get(status)
    automatic = (names.NOT_READY_TAINT, names.UNREACHABLE_TAINT)
    kept = [
        meta_pb2.Taint.FromString(t.SerializeToString())
        for t in cluster.spec.taints
        if t.key not in automatic or t.key == wanted
    ]
    if wanted is not None and not any(t.key == wanted for t in kept):
        taint = meta_pb2.Taint(key=wanted, effect="NoSchedule")
        taint.time_added.FromSeconds(int(now_wall))
        kept.append(taint)
    if [t.key for t in kept] != [t.key for t in cluster.spec.taints]:
        del cluster.spec.taints[:]
        cluster.spec.taints.extend(kept)
