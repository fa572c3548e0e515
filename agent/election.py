"""Leader election among the agents of one member, over a Lease in the member.

A DaemonSet runs an agent on every node, and only one of them may hold the cluster's
stream and apply: two would evict each other's stream and apply the same works twice.
They elect a leader through a ``coordination.k8s.io/v1`` Lease in the agent's namespace
(``archipel-agent-<cluster>``), by client-go's rules, so that ``kubectl get lease``
reads as it does for the controller managers:

* A candidate takes the Lease when it is missing, released (no holder) or expired, and
  the holder renews it every retry period. Every write carries the resourceVersion it
  was read at: of two candidates, one wins and the other gets a conflict.
* Expired is judged by the candidate's own clock, never by the times in the Lease
  (clocks of different nodes disagree): a Lease expires ``leaseDurationSeconds`` after
  the candidate last saw it change. A candidate that has just started therefore waits a
  full lease duration before taking over a Lease whose holder is gone.
* The leader stops acting when it could not renew within the renew deadline, counted
  from before its last successful renew was sent: the candidates count the lease
  duration from after they saw that write, so the leader has stopped
  ``lease duration - renew deadline`` before any of them may take over. Every write the
  agent makes for its works checks :meth:`Term.check` first, in the thread that makes
  it, so nothing is applied past that point, even if the event loop is late.
* ``leaseTransitions`` counts the changes of holder; its value when a leader took the
  Lease is the leader's epoch, sent in the Hello, and the control plane keeps the
  stream of the newest epoch (``controlplane/fencing.py``). A new Lease starts at the
  current Unix time rather than 0, so that a Lease deleted and created again never
  goes back to an epoch the control plane has already seen. (Takeovers need a lease
  duration or a release each, far fewer than one a second, so the count stays behind
  the clock.)

Why not the kubernetes package's ``leaderelection`` module: it keeps no
``leaseTransitions`` (so no epoch to fence the stream with), measures expiry and the
renew deadline on the wall clock (``time.time()``, which NTP may step), runs the
leader's work in a thread of its own with ``time.sleep`` between tries, and tells of a
lost lease only by a callback once its loop has ended, with no deadline the agent's
writes could check. The loop here is a few dozen lines of asyncio over the Lease API,
its decisions a pure function (:func:`decide`, tested as a table), its clock the
monotonic one, and its calls go through the agent's :class:`~agent.kube.Kube`, on a
lane of their own so that a renewal never waits behind applies.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime
import logging
import random
import time
from typing import Any

import urllib3
from kubernetes.client.exceptions import ApiException

from agent.kube import Kube, KubeError, NotLeader, RefusedError

log = logging.getLogger(__name__)
Manifest = dict[str, Any]
# client-go's jitter on a candidate's retries: candidates that started together do not
# keep asking in step.
JITTER = 0.2
TRANSIENT = (KubeError, ApiException, urllib3.exceptions.HTTPError, OSError, TimeoutError)


@dataclasses.dataclass(frozen=True)
class Timing:
    """client-go's defaults, as kube-controller-manager's --leader-elect-* flags."""

    lease_duration: float = 15.0
    renew_deadline: float = 10.0
    retry_period: float = 2.0

    def problem(self) -> str | None:
        """Why these timings cannot work (client-go's checks), or None."""
        if self.lease_duration < 1 or self.lease_duration != int(self.lease_duration):
            # The Lease holds whole seconds, and the candidates read it from there.
            return "the lease duration must be a whole number of seconds, at least 1"
        if self.lease_duration <= self.renew_deadline:
            return "the lease duration must be longer than the renew deadline"
        if self.renew_deadline <= (1 + JITTER) * self.retry_period:
            return "the renew deadline must be longer than 1.2 retry periods"
        if self.retry_period <= 0:
            return "the retry period must be positive"
        return None


@dataclasses.dataclass(frozen=True)
class Seen:
    """The Lease as this candidate last saw it change (its resourceVersion), and when,
    on this candidate's monotonic clock."""

    resource_version: str
    at: float


def observe(seen: Seen | None, lease: Manifest | None, now: float) -> Seen | None:
    """What the candidate has seen after reading ``lease`` at ``now``."""
    if lease is None:
        return None
    version = str(lease.get("metadata", {}).get("resourceVersion", ""))
    if seen is not None and seen.resource_version == version:
        return seen
    return Seen(version, now)


@dataclasses.dataclass(frozen=True)
class Write:
    """Create (``create``) or replace the Lease with ``body``: this candidate leads at
    ``epoch`` if the write succeeds."""

    body: Manifest
    create: bool
    epoch: int


@dataclasses.dataclass(frozen=True)
class Wait:
    """Another agent holds the Lease; it may be taken over in ``expires_in`` seconds,
    if it does not change before."""

    holder: str
    epoch: int
    expires_in: float


def micro_time(wall: datetime.datetime) -> str:
    """A MicroTime as the API server reads it: always six digits of fraction."""
    return wall.astimezone(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def holder_of(lease: Manifest) -> tuple[str, int]:
    """The Lease's holder ("" when released) and leaseTransitions."""
    spec = lease.get("spec") or {}
    return str(spec.get("holderIdentity") or ""), int(spec.get("leaseTransitions") or 0)


def decide(
    lease: Manifest | None,
    seen: Seen | None,
    *,
    identity: str,
    name: str,
    namespace: str,
    lease_duration: float,
    now: float,
    wall: datetime.datetime,
) -> Write | Wait:
    """What a candidate does with the Lease it just read (None: there is none) and
    ``seen`` (from :func:`observe`, after this read): create, renew or take it, or wait.
    """
    duration = max(1, round(lease_duration))
    stamp = micro_time(wall)
    if lease is None:
        # The current Unix time as the first epoch: see the module's docstring.
        epoch = int(wall.timestamp())
        spec = {
            "holderIdentity": identity,
            "leaseDurationSeconds": duration,
            "acquireTime": stamp,
            "renewTime": stamp,
            "leaseTransitions": epoch,
        }
        metadata = {"name": name, "namespace": namespace}
        body = {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "metadata": metadata}
        return Write(body={**body, "spec": spec}, create=True, epoch=epoch)
    holder, transitions = holder_of(lease)
    spec = dict(lease.get("spec") or {})
    metadata = {
        key: value
        for key, value in (lease.get("metadata") or {}).items()
        if key in ("name", "namespace", "resourceVersion", "labels", "annotations")
    }
    body = {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "metadata": metadata}
    if holder == identity:
        # Renew: the same epoch. (Also after this agent stepped down without anyone
        # taking over: an identity is one process at a time, a pod's name.)
        spec.update(
            holderIdentity=identity,
            leaseDurationSeconds=duration,
            renewTime=stamp,
            leaseTransitions=transitions,
        )
        spec.setdefault("acquireTime", stamp)
        return Write(body={**body, "spec": spec}, create=False, epoch=transitions)
    if holder:
        held_for = int((lease.get("spec") or {}).get("leaseDurationSeconds") or duration)
        assert seen is not None, "observe() the lease before deciding"
        remaining = seen.at + held_for - now
        if remaining > 0:
            return Wait(holder=holder, epoch=transitions, expires_in=remaining)
    # Released or expired: take it, one transition later.
    spec.update(
        holderIdentity=identity,
        leaseDurationSeconds=duration,
        acquireTime=stamp,
        renewTime=stamp,
        leaseTransitions=transitions + 1,
    )
    return Write(body={**body, "spec": spec}, create=False, epoch=transitions + 1)


def released(lease: Manifest, identity: str, wall: datetime.datetime) -> Manifest | None:
    """The Lease given up by ``identity`` (client-go's ReleaseOnCancel: no holder, a
    one-second duration, so a standby takes over at its next try), or None when it is
    not ``identity``'s to give up."""
    holder, _ = holder_of(lease)
    if holder != identity:
        return None
    spec = dict(lease.get("spec") or {})
    spec.update(holderIdentity="", leaseDurationSeconds=1, renewTime=micro_time(wall))
    metadata = {
        key: value
        for key, value in (lease.get("metadata") or {}).items()
        if key in ("name", "namespace", "resourceVersion", "labels", "annotations")
    }
    return {
        "apiVersion": "coordination.k8s.io/v1",
        "kind": "Lease",
        "metadata": metadata,
        "spec": spec,
    }


class Term:
    """One stretch of leadership, at one epoch: from acquiring the Lease to losing it."""

    def __init__(self, *, identity: str, epoch: int, valid_until: float) -> None:
        self.identity = identity
        self.epoch = epoch
        # On the monotonic clock: past it, the Lease may have expired for the others.
        self.valid_until = valid_until
        self.ended = False
        self.lost = asyncio.Event()

    def check(self) -> None:
        """Raise NotLeader unless this agent may still act. Called from the worker
        threads right before each write to the member: plain reads of a float and a
        bool, and the clock."""
        if self.ended or time.monotonic() >= self.valid_until:
            raise NotLeader(
                f"this agent ({self.identity}) no longer leads at epoch {self.epoch}: "
                "its lease could not be renewed in time"
            )

    def end(self) -> None:
        self.ended = True
        self.lost.set()


class Elector:
    """Campaigns for the Lease for as long as :meth:`run` runs; :meth:`next_term` hands
    out each term won."""

    def __init__(
        self,
        kube: Kube,
        *,
        name: str,
        namespace: str,
        identity: str,
        timing: Timing = Timing(),
    ) -> None:
        self.kube = kube
        self.name = name
        self.namespace = namespace
        self.identity = identity
        self.timing = timing
        self.term: Term | None = None
        self._won = asyncio.Event()
        self._seen: Seen | None = None
        self._last_holder: tuple[str, int] | None = None
        self.transitions = 0  # terms won by this process, for logs and tests

    async def next_term(self) -> Term:
        """The current term, or the next one once it is won."""
        while self.term is None or self.term.ended:
            self._won.clear()
            await self._won.wait()
        return self.term

    # -- blocking calls (through Kube.call_lease) -----------------------------------------

    def _path(self) -> str:
        return f"/apis/coordination.k8s.io/v1/namespaces/{self.namespace}/leases"

    def _read(self, timeout: float) -> Manifest | None:
        try:
            found: Manifest = self.kube.raw_get(f"{self._path()}/{self.name}", timeout=timeout)
        except RefusedError as error:
            if error.status == 404:
                return None
            raise
        return found

    def _write(self, write: Write | Manifest, timeout: float) -> Manifest:
        body = write.body if isinstance(write, Write) else write
        if isinstance(write, Write) and write.create:
            return self.kube.raw_send("POST", self._path(), body, timeout=timeout)
        return self.kube.raw_send("PUT", f"{self._path()}/{self.name}", body, timeout=timeout)

    # -- the loop ---------------------------------------------------------------------

    async def run(self) -> None:
        """Acquire, renew, and step down when a renewal fails, until cancelled."""
        while True:
            await self._attempt()
            period = self.timing.retry_period
            if self.term is None:
                period *= 1 + random.uniform(0, JITTER)
            await asyncio.sleep(period)

    async def _attempt(self) -> None:
        started = time.monotonic()
        term = self.term
        # A leader's try must end before its term does; a candidate's within a renew
        # deadline, so a hung connection delays it no longer than that.
        limit = (term.valid_until - started) if term is not None else self.timing.renew_deadline
        try:
            async with asyncio.timeout(max(limit, 0.001)):
                await self._try(started)
        except TimeoutError:
            self._failed(started, "the member's API server did not answer in time")
        except NotLeader as error:
            self._lose(str(error))
        except TRANSIENT as error:
            self._failed(started, _describe(error))

    async def _try(self, started: float) -> None:
        timeout = self.timing.renew_deadline
        lease = await self.kube.call_lease(self._read, timeout)
        now = time.monotonic()
        self._seen = observe(self._seen, lease, now)
        decision = decide(
            lease,
            self._seen,
            identity=self.identity,
            name=self.name,
            namespace=self.namespace,
            lease_duration=self.timing.lease_duration,
            now=now,
            wall=datetime.datetime.now(datetime.UTC),
        )
        if isinstance(decision, Wait):
            if self.term is not None:
                raise NotLeader(f"the lease is held by {decision.holder} at epoch {decision.epoch}")
            if self._last_holder != (decision.holder, decision.epoch):
                self._last_holder = (decision.holder, decision.epoch)
                log.info(
                    "standing by: lease %s/%s held by %s (epoch %d)",
                    self.namespace,
                    self.name,
                    decision.holder,
                    decision.epoch,
                )
            return
        try:
            written = await self.kube.call_lease(self._write, decision, timeout)
        except RefusedError as error:
            if error.status == 409:
                # Another candidate wrote first: it leads, or the next read says who.
                raise NotLeader("another agent wrote the lease first") from error
            if error.status == 404 and decision.create:
                # No namespace yet (the agent makes its own, as for its ledger): the
                # next try creates the Lease.
                await self.kube.call_lease(self.kube.ensure_namespace, self.namespace)
                log.info("created namespace %s for lease %s", self.namespace, self.name)
                return
            raise
        self._seen = observe(self._seen, written, time.monotonic())
        self._renewed(started, decision.epoch)

    def _renewed(self, started: float, epoch: int) -> None:
        valid_until = started + self.timing.renew_deadline
        term = self.term
        if term is not None and not term.ended and term.epoch == epoch:
            term.valid_until = valid_until
            return
        if term is not None and not term.ended:
            self._lose(f"the lease moved to epoch {epoch}")
        self.term = Term(identity=self.identity, epoch=epoch, valid_until=valid_until)
        self.transitions += 1
        self._last_holder = (self.identity, epoch)
        log.info(
            "leading: lease %s/%s acquired by %s at epoch %d",
            self.namespace,
            self.name,
            self.identity,
            epoch,
        )
        self._won.set()

    def _failed(self, started: float, why: str) -> None:
        term = self.term
        if term is None:
            log.warning("lease %s/%s: %s; trying again", self.namespace, self.name, why)
        elif time.monotonic() >= term.valid_until:
            self._lose(f"could not renew within the renew deadline ({why})")
        else:
            log.warning(
                "lease %s/%s: renewal failed (%s); trying again", self.namespace, self.name, why
            )

    def _lose(self, why: str) -> None:
        term = self.term
        if term is None:
            log.info("lease %s/%s: %s", self.namespace, self.name, why)
            return
        self.term = None
        term.end()
        log.warning(
            "stepping down: %s no longer leads at epoch %d: %s", self.identity, term.epoch, why
        )

    async def release(self) -> None:
        """Give the Lease up, if this agent holds it, so a standby takes over at once
        (a graceful stop: a rolling update, a drained node). Call it once this agent
        has stopped acting."""
        term = self.term
        self.term = None
        if term is None:
            return
        term.end()
        timeout = self.timing.renew_deadline
        try:
            lease = await self.kube.call_lease(self._read, timeout)
            body = (
                released(lease, self.identity, datetime.datetime.now(datetime.UTC))
                if lease
                else None
            )
            if body is not None:
                await self.kube.call_lease(self._write, body, timeout)
                log.info("released lease %s/%s", self.namespace, self.name)
        except TRANSIENT as error:
            # The standbys take over when it expires instead.
            log.warning("releasing lease %s/%s: %s", self.namespace, self.name, _describe(error))


def _describe(error: BaseException) -> str:
    if isinstance(error, ApiException):
        return f"{error.status} {error.reason}"
    return f"{type(error).__name__}: {error}"


def default_identity(environ: dict[str, str], hostname: str, pid: int) -> str:
    """The pod's name when the chart runs the agent (one process per pod at a time),
    else host and process id."""
    return environ.get("ARCHIPEL_POD_NAME") or environ.get("POD_NAME") or f"{hostname}-{pid}"


def lease_name(cluster: str) -> str:
    return f"archipel-agent-{cluster}"
