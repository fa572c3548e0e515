"""The cluster controller: member cluster lifecycle, and the cluster side of failover.

Key: a MemberCluster key.

* Registration: ``Join`` creates the MemberCluster and its credential (only a hash of
  the token is stored). ``join`` and ``authenticate`` answer API calls and write or
  read etcd directly; everything else is a reconcile.
* Heartbeats: agents report cluster facts on their stream; the newest heartbeat is
  kept in memory (:class:`Liveness`) and turned into status and the ``Ready``
  condition. A cluster whose agent is silent for the grace period becomes
  ``Ready=Unknown``, as Karmada's cluster-monitor-grace-period does; a cluster whose
  API server does not answer its agent becomes ``Ready=False``.
* Damping, as Karmada's cluster status thresholds: what the agent reports moves Ready
  between True and not True only once it has lasted. True becomes False after the
  agent has reported its API server not ready for ``cluster_failure_threshold`` without
  a break; False or Unknown becomes True after it has reported it ready for
  ``cluster_success_threshold``. A cluster that never had a heartbeat becomes True on
  its first ready one (joining is not delayed), and Unknown becomes False at once (both
  are not True). Since when the report is what it is lives in :class:`Liveness`
  (``steady_since``), never in etcd; a silence longer than the grace period breaks it.
* Taints follow readiness. NoSchedule, as Karmada: not-ready (Ready=False) or
  unreachable (Unknown), none when Ready. And the built-in failover policy: a cluster
  not Ready for ``failover_grace_period`` (measured from the Ready condition's
  lastTransitionTime) while its agent does not report it healthy gets a NoExecute
  taint of the same key, which moves its workloads elsewhere unless a policy tolerates
  it. It goes when Ready is True again (after damping). A cluster that stays unhealthy
  never loses it: moving between False and Unknown, the NoExecute taint changes its key
  with the NoSchedule one but keeps its ``time_added`` (tolerationSeconds count from
  when the cluster started failing, not from when it failed differently), and the
  change is neither halted nor rate limited, as Kubernetes swaps its node taints.
  Taints with other keys, or other effects, are anyone else's and kept as they are.
* ClusterTaintPolicies (Karmada's): each policy whose targetClusters select the
  cluster, oldest first, adds its taints when all its addOnConditions match the
  cluster's conditions (as this pass writes them) and removes them when all its
  removeOnConditions do; a taint is its key and effect, and one already there keeps
  its value and time. Nothing else removes them (not the policy's deletion). The
  built-in rule above is the equivalent of a default policy; ``default_failover_taints``
  off (--no-default-failover-taints) drops its NoExecute half. The taints the built-in
  rule owns are left to it (see :func:`_taints_and_failover`). A NoExecute taint a
  policy adds is an eviction like the built-in one: halted, rate limited, counted with
  reason ``ClusterTaintPolicy``. A policy change looks at every cluster again.
* Eviction safety, as Kubernetes' node lifecycle controller:

  - Halt: while more than ``unhealthy_cluster_threshold`` of the member clusters
    (those not being deleted) are not Ready, no cluster gets a new NoExecute taint;
    ones already there stay, and recovering clusters still lose theirs. So many
    failing at once points at the control plane's own network, and moving every
    workload onto the few left would make things worse. A fleet of one whose cluster
    is down is halted too: there is nowhere to move to. The fleet's counts come from
    the clusters cache; a change in any cluster's readiness looks at every cluster
    again while the fleet is, or was, halted (nothing else depends on the others).
    ``archipel_eviction_halted`` is 1 while halted.
  - Rate limit: at most one cluster gets a new NoExecute taint per
    ``eviction_interval``, across the fleet. The last time is the controller's own
    bookkeeping (:class:`Evictions`), recorded once the taint is committed, so a plan
    that lost a race records nothing; while one is being committed, others wait.
    ``archipel_cluster_evictions_total{reason="NotReady"|"Unreachable"}`` counts them.
    The newest NoExecute taint on any other cluster in the cache counts as well, so
    the limit holds across replicas (each runs the clusters whose agents it streams)
    and across a restart.

  The ``Failover`` condition says where a cluster stands, set only once failover
  concerns it (a healthy cluster never has one):

  ==============================  ===================================================
  True ``Evicting``               tainted NoExecute: workloads move elsewhere
  False ``EvictionHalted``        due a NoExecute taint, held back by the halt (the
                                  message says how many of how many are not Ready)
  False ``EvictionRateLimited``   due a NoExecute taint, waiting for the rate limit
  False ``Pending``               not Ready, not due a taint yet (within the grace
                                  period, reported healthy again, or just restarted);
                                  only when the condition is already there
  False ``ClusterReady``          Ready again, no NoExecute taint; only when the
                                  condition is already there
  ==============================  ===================================================

* Deletion removes the cluster's works (the member is going away, so nobody is left
  to clean up) and its credential, then the finalizer.

The defaults, and why (see :class:`~controlplane.context.Settings`): agents beat every
10 s, so a silent agent makes its cluster Unknown after 40 s (four missed beats, as
Karmada's and Kubernetes' 40 s monitor grace period) and NoExecute 60 s later, 100 s in
all. An API server that stops answering makes its cluster False after 30 s (Karmada's
failure threshold: a blip or an API server rollout is no fault) and NoExecute 60 s
later, 90 s in all; it is Ready again after 30 s of health (success threshold), so a
flapping cluster does not churn. The 60 s failover grace lets an agent restart or a
short network partition pass without moving anything, and still moves workloads within
two minutes. 0.55 and one cluster per 10 s are Kubernetes' ``--unhealthy-zone-threshold``
and ``--node-eviction-rate`` (0.1 per second).

A reconcile gathers an :class:`Observed` (the cached cluster and its works, a copy of
its liveness record, both clocks, the fleet's counts, when the rate limit next allows
an eviction, and for a deleting cluster its credential's revision) and :func:`plan`
decides from it alone, without I/O or clocks: one update of the cluster, or the whole
removal as one transaction. Silence changes nothing in etcd, and neither do thresholds
and grace periods passing, so the plan asks to be looked at again when the next of
them can run out (``requeue_after``); nothing sleeps.
"""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import math
import secrets
import time
from collections.abc import Sequence

from google.protobuf import timestamp_pb2

from archipel.core import kinds, names, scheduling
from archipel.core.conditions import find, set_condition
from archipel.core.errors import AlreadyExists, NotFound, Unauthenticated
from archipel.v1alpha1 import agent_pb2, cluster_pb2, meta_pb2, policy_pb2, work_pb2
from archipel.version import VERSION
from controlplane import metrics
from controlplane.context import FINALIZER, WORK_FINALIZER, Context
from controlplane.etcd import Guard
from controlplane.plan import Plan
from controlplane.predicates import is_deleting

NAME = "cluster-controller"
CREDENTIALS = "credentials/_/"
# Per cluster, the serials of the agent certificates the control plane accepts (see
# controlplane/registration.py, which writes it).
AGENT_CERTIFICATES = "agentcertificates/_/"
# Write lastHeartbeatTime at most this often when nothing else changed.
_HEARTBEAT_WRITE_INTERVAL = 30.0


# The taints this controller owns: these keys with these effects.
_AUTOMATIC_KEYS = (names.NOT_READY_TAINT, names.UNREACHABLE_TAINT)
_AUTOMATIC_EFFECTS = ("NoSchedule", "NoExecute")
_EVICTION_REASONS = {names.NOT_READY_TAINT: "NotReady", names.UNREACHABLE_TAINT: "Unreachable"}
# The eviction reason of NoExecute taints ClusterTaintPolicies add (one value, whatever
# the policy: a metric label must not grow with the objects people create).
POLICY_EVICTION_REASON = "ClusterTaintPolicy"

Ready = tuple[str, str, str]
"""A Ready condition's status, reason and message."""


@dataclasses.dataclass
class Liveness:
    heartbeat: agent_pb2.Heartbeat | None = None
    received_at: float = 0.0  # monotonic
    connected: bool = False
    agent_version: str = ""
    steady_since: float = 0.0
    """Monotonic: since when the agent has reported its API server's health as the
    newest heartbeat does, without a break (the damping thresholds count from here)."""


@dataclasses.dataclass
class Evictions:
    """The fleet's NoExecute rate limit: in-memory bookkeeping of the controller."""

    last: float = -math.inf
    """Monotonic: when the last NoExecute taint was committed."""
    in_flight: str = ""
    """The key of a cluster whose plan adding one is being committed, if any."""


@dataclasses.dataclass(frozen=True)
class RecordEviction:
    """A plan's bookkeeping once its new NoExecute taint is in etcd (never before, so
    a plan that lost its race neither uses up the rate limit nor counts)."""

    evictions: Evictions
    key: str
    at: float
    reason: str

    def __call__(self) -> None:
        self.evictions.last = max(self.evictions.last, self.at)
        if self.evictions.in_flight == self.key:
            self.evictions.in_flight = ""
        metrics.CLUSTER_EVICTIONS.labels(self.reason).inc()


def hash_secret(secret: str) -> bytes:
    return hashlib.sha256(secret.encode()).hexdigest().encode()


class ClusterController:
    def __init__(self, context: Context) -> None:
        self.context = context
        self.controller = context.controller(
            NAME, self.reconcile, owner=self._owner, follows=frozenset({"shards", "streams"})
        )
        self.liveness: dict[str, Liveness] = {}
        self.started = time.monotonic()
        # With replicas: when this one took over a cluster it has no heartbeat from
        # (its agent's stream ended elsewhere), monotonic. The cluster gets the grace a
        # restart gets, counted from then: its agent may be reconnecting right now.
        self.adopted: dict[str, float] = {}
        self.evictions = Evictions()
        # Whether each cluster (not being deleted) is Ready, as the cache has it, and how
        # many are not: the halt is decided from these shares.
        self.fleet: dict[str, bool] = {}
        self.fleet_not_ready = 0
        context.clusters.add_handler(self._cluster_changed)
        context.taint_policies.add_handler(self._taint_policy_changed)

    def _owner(self, key: str) -> list[Guard] | None:
        name = key.rsplit("/", 1)[-1]
        guards = self.context.owns_cluster(name)
        if guards is None:
            # Another replica has the cluster: what this one knows of it grows stale, and
            # must not count as its last heartbeat if the cluster comes back here.
            self.adopted.pop(name, None)
            self.liveness.pop(name, None)
        return guards

    def _cluster_changed(
        self,
        key: str,
        old: cluster_pb2.MemberCluster | None,
        new: cluster_pb2.MemberCluster | None,
    ) -> None:
        self.controller.enqueue(key)
        before = self.fleet.get(key)
        after = None if new is None or is_deleting(new) else is_ready(new)
        if before == after:
            return
        was_halted = self._halted()
        self.fleet_not_ready += (after is False) - (before is False)
        if after is None:
            del self.fleet[key]
        else:
            self.fleet[key] = after
        halted = self._halted()
        metrics.EVICTION_HALTED.set(1 if halted else 0)
        if was_halted or halted:
            # The halt is the one decision that depends on other clusters: look at every
            # one again, so that a halt lifts (or starts, or says its new counts) now,
            # not at the next heartbeat. Outside a halt nobody's plan would change.
            for other in self.fleet:
                self.controller.enqueue(other)

    def _taint_policy_changed(
        self,
        key: str,
        old: policy_pb2.ClusterTaintPolicy | None,
        new: policy_pb2.ClusterTaintPolicy | None,
    ) -> None:
        # Which clusters a policy targets may have changed with it: look at them all.
        for cluster_key in self.context.clusters.list_keys():
            self.controller.enqueue(cluster_key)

    def _halted(self) -> bool:
        share = self.fleet_not_ready / len(self.fleet) if self.fleet else 0.0
        return share > self.context.settings.unhealthy_cluster_threshold

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
        now = time.monotonic()
        # The damping thresholds want the report to have lasted without a break: a new
        # state starts it, and so does a silence long enough to have made it Unknown.
        if (
            previous is None
            or previous.api_server_ready != heartbeat.api_server_ready
            or now - live.received_at > self.context.settings.cluster_grace_period
        ):
            live.steady_since = now
        live.heartbeat = heartbeat
        live.received_at = now
        self.controller.enqueue(kinds.MEMBER_CLUSTER.key("", name))

    # -- reconcile -------------------------------------------------------------------

    async def reconcile(self, key: str) -> Plan | None:
        evictions = self.evictions
        if evictions.in_flight == key:
            # Its last plan is over (the queue never runs one key twice at once), and
            # since the mark is still here it was not committed: it took nothing.
            evictions.in_flight = ""
        cluster = self.context.clusters.get(key)
        if cluster is None:
            return None
        name = cluster.metadata.name
        credential_revision = certificates_revision = 0
        if is_deleting(cluster):
            # Not an API object, so no cache holds it: read where it is now, and the
            # purge holds only if nobody issued a new one since.
            credential = await self.context.store.etcd.get(CREDENTIALS + name)
            credential_revision = credential.mod_revision if credential is not None else 0
            accepted = await self.context.store.etcd.get(AGENT_CERTIFICATES + name)
            certificates_revision = accepted.mod_revision if accepted is not None else 0
        live = self.liveness.get(name)
        settings = self.context.settings
        now = time.monotonic()
        next_eviction_at = evictions.last + settings.eviction_interval
        if evictions.in_flight:
            # Another cluster's taint is being committed; once it is, the next one is
            # due an interval from about now.
            next_eviction_at = max(next_eviction_at, now + settings.eviction_interval)
        # Only a cluster not Ready gets the built-in NoExecute taint; any may get a
        # policy's. Others skip the look over the fleet.
        might_evict = not is_ready(cluster) or bool(self.context.taint_policies.list_keys())
        newest = (
            newest_no_execute(self.context.clusters.objects(), besides=key) if might_evict else None
        )
        if newest is not None:
            # Taints other replicas (or this process before a restart) added count too:
            # the rate limit is the fleet's, and the clusters cache shows them all.
            next_eviction_at = max(
                next_eviction_at, now + newest + settings.eviction_interval - time.time()
            )
        result = plan(
            Observed(
                cluster=cluster,
                works=tuple(self.context.works.by_index("cluster", name)),
                live=dataclasses.replace(live) if live is not None else Liveness(),
                now_monotonic=now,
                now_wall=time.time(),
                started=max(self.started, self.adopted.setdefault(name, now))
                if live is None
                else self.started,
                grace_period=settings.cluster_grace_period,
                credential_revision=credential_revision,
                certificates_revision=certificates_revision,
                liveness=self.liveness,
                failure_threshold=settings.cluster_failure_threshold,
                success_threshold=settings.cluster_success_threshold,
                failover_grace_period=settings.failover_grace_period,
                unhealthy_threshold=settings.unhealthy_cluster_threshold,
                eviction_interval=settings.eviction_interval,
                other_clusters=len(self.fleet) - (key in self.fleet),
                other_not_ready=self.fleet_not_ready - (self.fleet.get(key) is False),
                next_eviction_at=next_eviction_at,
                evictions=evictions,
                taint_policies=tuple(self.context.taint_policies.objects()),
                default_failover_taints=settings.default_failover_taints,
            )
        )
        if any(isinstance(bookkeeping, RecordEviction) for bookkeeping in result.committed):
            # No await since the plan was made: no other cluster's plan can have used
            # the same turn, and until this one is committed (or lost), none will.
            evictions.in_flight = key
        return result


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
    # The record of the agent certificates the control plane accepts for the cluster
    # (controlplane/registration.py): deleting a cluster revokes them.
    certificates_revision: int = 0
    """For a deleting cluster, the mod_revision of its credential (0: none stored)."""
    liveness: dict[str, Liveness] = dataclasses.field(default_factory=dict)
    """The controller's liveness records, for the plan's bookkeeping only (a removed
    cluster's record is dropped once it is gone); the plan reads ``live``."""
    control_plane_version: str = VERSION
    # The failover settings (controlplane.context.Settings has what each means).
    failure_threshold: float = 30.0
    success_threshold: float = 30.0
    failover_grace_period: float = 60.0
    unhealthy_threshold: float = 0.55
    eviction_interval: float = 10.0
    other_clusters: int = 0
    """How many other member clusters there are (not being deleted), as cached."""
    other_not_ready: int = 0
    """How many of them are not Ready, as cached."""
    next_eviction_at: float = -math.inf
    """Monotonic: the rate limit allows the next new NoExecute taint from then."""
    evictions: Evictions = dataclasses.field(default_factory=Evictions)
    """The controller's rate-limit record, for the plan's bookkeeping only."""
    taint_policies: tuple[policy_pb2.ClusterTaintPolicy, ...] = ()
    """Every ClusterTaintPolicy (the informer's); the plan picks those that target the
    cluster."""
    default_failover_taints: bool = True
    """The built-in rule adds NoExecute taints (off: --no-default-failover-taints)."""


def newest_no_execute(
    clusters: Sequence[cluster_pb2.MemberCluster], *, besides: str
) -> float | None:
    """When the newest NoExecute taint of any other cluster was added (Unix seconds);
    None when no other cluster has one."""
    times = [
        taint.time_added.seconds
        for cluster in clusters
        if kinds.MEMBER_CLUSTER.key_of(cluster) != besides and not is_deleting(cluster)
        for taint in cluster.spec.taints
        if taint.effect == "NoExecute" and taint.HasField("time_added")
    ]
    return float(max(times)) if times else None


def is_ready(cluster: cluster_pb2.MemberCluster) -> bool:
    condition = find(cluster.status.conditions, "Ready")
    return condition is not None and condition.status == "True"


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
    # Level-triggered liveness: look again when the grace period could run out, even
    # if nothing changes (silence is what makes a cluster Unknown); sooner when a
    # threshold or the failover grace runs out first.
    waits = [max(1.0, observed.grace_period / 4)]
    # What this pass learnt of the cluster's health, before damping (None: nothing yet,
    # the process just restarted).
    reported: Ready | None
    if heartbeat is not None and age <= observed.grace_period:
        status.kubernetes_version = heartbeat.kubernetes_version
        del status.api_enablements[:]
        status.api_enablements.extend(heartbeat.api_enablements)
        status.node_summary.CopyFrom(heartbeat.node_summary)
        status.resource_summary.CopyFrom(heartbeat.resource_summary)
        if heartbeat.cluster_id:
            updated.spec.id = heartbeat.cluster_id
        if heartbeat.api_server_ready:
            reported = ("True", "ClusterReady", "cluster is healthy and ready to accept workloads")
        else:
            reported = ("False", "ClusterNotReachable", heartbeat.message or "API server not ready")
        ready, wait = _damped(reported, observed)
        waits.append(wait)
    elif heartbeat is None and age <= observed.grace_period and find(status.conditions, "Ready"):
        # Just restarted: keep what was known until agents have had time to report.
        ready = reported = None
    elif heartbeat is None and not status.agent.HasField("last_heartbeat_time"):
        # No heartbeat was ever recorded (not only since this process started): say
        # so, rather than that the agent stopped, and say it the same way every pass.
        ready = reported = (
            "Unknown",
            "ClusterStatusUnknown",
            "waiting for the cluster agent to connect",
        )
    else:
        ready = reported = (
            "Unknown",
            "ClusterStatusUnknown",
            "the cluster agent stopped posting status",
        )
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
    wait, eviction = _taints_and_failover(
        updated, observed, unhealthy=reported is not None and reported[0] != "True"
    )
    waits.append(wait)
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
    result = Plan(requeue_after=min(w for w in waits if w > 0))
    if updated != cluster:
        result.update(kinds.MEMBER_CLUSTER, updated, current=cluster)
    if eviction:
        result.committed.append(
            RecordEviction(observed.evictions, kinds.MEMBER_CLUSTER.key_of(cluster), now, eviction)
        )
    return result


def _damped(reported: Ready, observed: Observed) -> tuple[Ready | None, float]:
    """The Ready a fresh report makes (None: keep the one there), and the seconds
    until a report held back may pass its threshold (0: none held back).

    As Karmada's: only a move between True and not True waits for its threshold;
    Unknown and False are both not True, so one becomes the other at once. A cluster
    that never had a heartbeat takes its first report as it is: joining is no recovery.
    """
    cluster = observed.cluster
    current = find(cluster.status.conditions, "Ready")
    if current is None or not cluster.status.agent.HasField("last_heartbeat_time"):
        return reported, 0.0
    healthy = reported[0] == "True"
    if healthy == (current.status == "True"):
        return reported, 0.0
    threshold = observed.success_threshold if healthy else observed.failure_threshold
    lasted = observed.now_monotonic - observed.live.steady_since
    if lasted >= threshold:
        return reported, 0.0
    return None, threshold - lasted


Pair = tuple[str, str]
"""A taint's identity: its key and effect."""


def _pair(taint: meta_pb2.Taint | policy_pb2.PolicyTaint) -> Pair:
    # A policy written for Karmada names Karmada's keys for Archipel's taints (as a
    # toleration does): they mean Archipel's.
    return names.KARMADA_TAINT_KEYS.get(taint.key, taint.key), taint.effect


def targeted_policies(
    cluster: cluster_pb2.MemberCluster, policies: Sequence[policy_pb2.ClusterTaintPolicy]
) -> list[policy_pb2.ClusterTaintPolicy]:
    """The ClusterTaintPolicies whose targetClusters select the cluster, in the order
    Karmada applies them: oldest first (then by name)."""
    info = scheduling.ClusterInfo.from_proto(cluster)
    found = [
        policy
        for policy in policies
        if not policy.spec.HasField("target_clusters")
        or scheduling.affinity_rejects(policy.spec.target_clusters, info) is None
    ]
    found.sort(
        key=lambda p: (
            p.metadata.creation_timestamp.seconds,
            p.metadata.creation_timestamp.nanos,
            p.metadata.name,
        )
    )
    return found


def conditions_match(
    conditions: Sequence[meta_pb2.Condition], tests: Sequence[policy_pb2.MatchCondition]
) -> bool:
    """Whether every test holds, as Karmada judges them: none never matches, and a
    condition the cluster lacks matches neither In nor NotIn."""
    if not tests:
        return False
    for test in tests:
        condition = next((c for c in conditions if c.type == test.condition_type), None)
        if condition is None:
            return False
        if test.operator == "In":
            if condition.status not in test.status_values:
                return False
        elif test.operator == "NotIn":
            if condition.status in test.status_values:
                return False
        else:
            return False
    return True


def _taints_and_failover(
    cluster: cluster_pb2.MemberCluster, observed: Observed, *, unhealthy: bool
) -> tuple[float, str]:
    """Set the automatic taints, the ClusterTaintPolicies' taints and the Failover
    condition from the cluster's conditions.

    ``unhealthy``: this pass heard the cluster is not healthy (its agent says so, or is
    silent); only then is a new built-in NoExecute taint due. One the cluster has stays
    until it is Ready. Returns the seconds until the failover grace period or the rate
    limit runs out (0: nothing to wait for) and the reason of the NoExecute taints
    added ("": none).

    The built-in rule owns the not-ready and unreachable NoSchedule taints, and their
    NoExecute ones unless ``default_failover_taints`` is off; then a NoExecute taint of
    those keys that a policy names is the policy's, and one no policy names is only
    removed (once Ready), never added. A policy's taints that the built-in rule owns
    are left to it. Every new NoExecute taint, built-in or a policy's, waits for the
    halt and the rate limit; all the ones due in one pass count as one eviction.
    """
    condition = find(cluster.status.conditions, "Ready")
    ready = condition.status if condition is not None else "Unknown"
    wanted = {"False": names.NOT_READY_TAINT, "Unknown": names.UNREACHABLE_TAINT}.get(ready)
    now_wall = int(observed.now_wall)
    builtin_no_execute = observed.default_failover_taints
    policies = targeted_policies(cluster, observed.taint_policies)
    named = {_pair(t) for p in policies for t in p.spec.taints}

    def builtin_owns(pair: Pair) -> bool:
        key, effect = pair
        if key not in _AUTOMATIC_KEYS or effect not in _AUTOMATIC_EFFECTS:
            return False
        return effect == "NoSchedule" or builtin_no_execute or pair not in named

    taints: list[meta_pb2.Taint] = []
    no_schedule = no_execute = False
    for existing in cluster.spec.taints:
        taint = meta_pb2.Taint()
        taint.CopyFrom(existing)
        if not builtin_owns(_pair(taint)):
            taints.append(taint)  # someone else's, or a policy's
        elif wanted is None:
            continue  # Ready: ours go
        elif taint.effect == "NoSchedule":
            if taint.key == wanted and not no_schedule:
                taints.append(taint)
                no_schedule = True
        elif not builtin_no_execute:
            # Left from when the built-in NoExecute taints were on: it stays until the
            # cluster is Ready, as it is.
            taints.append(taint)
            no_execute = True
        elif not no_execute:
            # Follows the key, keeps its time: the cluster has not stopped failing.
            taint.key = wanted
            taints.append(taint)
            no_execute = True
    if wanted is not None and not no_schedule:
        taint = meta_pb2.Taint(key=wanted, effect="NoSchedule")
        taint.time_added.FromSeconds(now_wall)
        taints.append(taint)

    # The policies, in turn, as Karmada's controller: add when addOnConditions match,
    # then remove when removeOnConditions match. A taint the cluster had keeps its time.
    original = {_pair(t): t for t in cluster.spec.taints}
    conditions = list(cluster.status.conditions)
    added_by: dict[Pair, str] = {}  # new NoExecute taints, by the policy adding them
    for policy in policies:
        if conditions_match(conditions, policy.spec.add_on_conditions):
            for wish in policy.spec.taints:
                pair = _pair(wish)
                if builtin_owns(pair) or any(_pair(t) == pair for t in taints):
                    continue
                taint = meta_pb2.Taint(key=pair[0], value=wish.value, effect=pair[1])
                if pair in original:
                    taint.CopyFrom(original[pair])
                else:
                    taint.time_added.FromSeconds(now_wall)
                    if pair[1] == "NoExecute":
                        added_by[pair] = policy.metadata.name
                taints.append(taint)
        if conditions_match(conditions, policy.spec.remove_on_conditions):
            for wish in policy.spec.taints:
                pair = _pair(wish)
                if builtin_owns(pair):
                    continue
                for index, taint in enumerate(taints):
                    if _pair(taint) == pair:
                        del taints[index]
                        break
                added_by.pop(pair, None)

    wait = 0.0
    eviction = ""
    grace = observed.failover_grace_period
    total = observed.other_clusters + 1
    not_ready = observed.other_not_ready + (wanted is not None)
    halted = not_ready / total > observed.unhealthy_threshold
    limited = observed.now_monotonic < observed.next_eviction_at
    builtin_due = False
    pending = False
    if builtin_no_execute and wanted is not None and not no_execute:
        # Nanoseconds too: whole seconds would end the grace up to a second early.
        since = (
            condition.last_transition_time.seconds + condition.last_transition_time.nanos / 1e9
            if condition is not None
            else now_wall
        )
        left = since + grace - observed.now_wall
        if not unhealthy or left > 0:
            wait = left if unhealthy else 0.0
            pending = True
        else:
            builtin_due = True
    held: Ready | None = None
    if builtin_due or added_by:
        if halted:
            # A halt lifts when another cluster's readiness changes, which looks at
            # every cluster again: no timed look is needed.
            held = (
                "False",
                "EvictionHalted",
                f"{not_ready} of {total} member clusters are not Ready, more than "
                f"{observed.unhealthy_threshold:.0%}: no cluster gets a new NoExecute "
                "taint while so many fail at once",
            )
        elif limited:
            wait = observed.next_eviction_at - observed.now_monotonic
            held = (
                "False",
                "EvictionRateLimited",
                f"waiting for its NoExecute taint: at most one cluster gets one every "
                f"{observed.eviction_interval:g}s",
            )
        elif builtin_due:
            assert wanted is not None
            taint = meta_pb2.Taint(key=wanted, effect="NoExecute")
            taint.time_added.FromSeconds(now_wall)
            taints.append(taint)
            no_execute = True
            eviction = _EVICTION_REASONS[wanted]
        else:
            eviction = POLICY_EVICTION_REASON
        if held is not None:
            taints = [t for t in taints if _pair(t) not in added_by]
            added_by.clear()
    by_policy = [
        (t.key, policy.metadata.name)
        for t in taints
        if t.effect == "NoExecute" and not builtin_owns(_pair(t))
        for policy in policies
        if _pair(t) in {_pair(w) for w in policy.spec.taints}
    ]

    failover: Ready | None = None
    always = True  # set the condition even when the cluster has none yet
    if no_execute:
        assert wanted is not None
        failover = _evicting(wanted, grace)
    elif by_policy:
        key, name = by_policy[0]
        failover = (
            "True",
            "Evicting",
            f"tainted {key}:NoExecute by ClusterTaintPolicy {name}, so workloads that do "
            "not tolerate it move to other clusters",
        )
    elif held is not None:
        failover = held
    elif wanted is None:
        failover = ("False", "ClusterReady", "the cluster is Ready: no NoExecute taint")
        always = False
    elif pending:
        failover = (
            "False",
            "Pending",
            f"not Ready, no NoExecute taint: one is added once the cluster has been "
            f"not Ready for {grace:g}s while its agent does not report it healthy",
        )
        always = False
    else:
        failover = (
            "False",
            "NoFailoverTaint",
            "not Ready, no NoExecute taint: the built-in ones are off "
            "(--no-default-failover-taints) and no ClusterTaintPolicy adds one",
        )
        always = False
    if taints != list(cluster.spec.taints):
        del cluster.spec.taints[:]
        cluster.spec.taints.extend(taints)
    if failover is not None and (always or find(cluster.status.conditions, "Failover")):
        set_condition(
            cluster.status.conditions,
            "Failover",
            *failover,
            now=datetime.datetime.fromtimestamp(observed.now_wall, datetime.UTC),
        )
    return wait, eviction


def _evicting(key: str, grace: float) -> Ready:
    return (
        "True",
        "Evicting",
        f"not Ready for {grace:g}s or more: tainted {key}:NoExecute, so workloads that do "
        "not tolerate it move to other clusters",
    )


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
    if observed.certificates_revision:
        result.purge(AGENT_CERTIFICATES + name, observed.certificates_revision)
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
