"""The execution controller: hands each cluster's works to that cluster's agent stream.

Each connected agent has a session. A change to a work only marks its name dirty in
the owning cluster's session; the session's sender turns dirty names into messages
from the newest cached state, one at a time, as fast as the agent reads them. So a
burst of updates to one work sends it once, a slow or stuck agent holds back only its
own stream (its backlog is bounded by its number of works), and nothing waits on it.

On connect the agent names the works it already holds (uid and generation); only
works that are new or changed are sent, works it should no longer hold are deleted,
and a restart of either side resends nothing that did not change.

A stream message carries at most :data:`BATCH` works and about
``limits.MAX_STREAM_BATCH_BYTES``, so however much waits for an agent, every message
fits the receiver's limit; a work too large for any message is not sent, and its
status says why. A work that cannot be decoded (quarantined) is neither sent nor
deleted: the agent keeps what it has until the binding controller rewrites it.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import uuid
from collections.abc import AsyncIterator, Callable, Iterable

from archipel import limits
from archipel.core import kinds
from archipel.core.errors import ArchipelError, FailedPrecondition, PermissionDenied
from archipel.core.names import CLUSTER_LABEL
from archipel.v1alpha1 import agent_pb2, cluster_pb2, work_pb2
from archipel.version import VERSION
from controlplane import fencing, metrics
from controlplane.context import Context
from controlplane.predicates import is_deleting

NAME = "execution-controller"
# Most works per stream message; larger batches save little and delay the first work.
BATCH = 100
# Room left in a stream message for everything around one work.
_ENVELOPE_BYTES = 64 * 1024
log = logging.getLogger(__name__)


class Unchanged(enum.Enum):
    """What :meth:`ExecutionController._decide` says of a work the agent holds as it is."""

    UNCHANGED = "unchanged"


UNCHANGED = Unchanged.UNCHANGED
ReportStatus = Callable[[str, agent_pb2.WorkStatusReport], None]


class AgentSession:
    """One agent stream: what the agent holds and what it still has to hear about."""

    def __init__(self, cluster: str, held: Iterable[agent_pb2.HeldWork]) -> None:
        self.cluster = cluster
        self.id = uuid.uuid4().hex[:12]
        # The elected agent at the other end (epoch 0: one that does not elect).
        self.leader = fencing.Leader("", 0)
        # name -> (uid, generation) the agent holds, as far as we know.
        self.held: dict[str, tuple[str, int]] = {w.name: (w.uid, w.generation) for w in held}
        self._dirty: dict[str, None] = {}  # insertion-ordered set
        # The agent needs every ResourceInterpreterCustomization: first, then on change.
        self.customizations_due = True
        self._wakeup = asyncio.Event()
        self.closed = asyncio.Event()
        # Why the control plane ends this stream, when the agent broke a limit.
        self.error: ArchipelError | None = None
        self.sent = 0
        self.deleted = 0
        self.unchanged = 0
        # Answers to the agent's own requests (a renewed certificate), sent next.
        self.outgoing: list[agent_pb2.ControlMessage] = []
        # The renewal of the agent's certificate under way, if any.
        self.renewing: asyncio.Task[None] | None = None

    def push(self, message: agent_pb2.ControlMessage) -> None:
        self.outgoing.append(message)
        self._wakeup.set()

    def mark(self, name: str) -> None:
        self._dirty[name] = None
        self._wakeup.set()

    def mark_customizations(self) -> None:
        self.customizations_due = True
        self._wakeup.set()

    def close(self) -> None:
        self.closed.set()
        self._wakeup.set()

    def fail(self, error: ArchipelError) -> None:
        self.error = error
        self.close()

    def take_dirty(self, limit: int) -> list[str]:
        """Up to ``limit`` more dirty names that are ready now, without waiting."""
        names: list[str] = []
        for name in self._dirty:
            if len(names) >= limit:
                break
            names.append(name)
        for name in names:
            del self._dirty[name]
        return names

    async def next_dirty(self, idle: float | None = None) -> str | None:
        """The next dirty work's name; "" when only the customizations are due, or
        when nothing came for ``idle`` seconds (the stream is due a keep-alive)."""
        while not self._dirty:
            if self.closed.is_set():
                return None
            if self.customizations_due or self.outgoing:
                return ""
            self._wakeup.clear()
            try:
                await asyncio.wait_for(self._wakeup.wait(), idle)
            except TimeoutError:
                return ""
        name = next(iter(self._dirty))
        del self._dirty[name]
        return name

    @property
    def backlog(self) -> int:
        return len(self._dirty)


class ExecutionController:
    def __init__(self, context: Context, *, report_status: ReportStatus | None = None) -> None:
        self.context = context
        self.sessions: dict[str, AgentSession] = {}
        # The newest elected agent seen per cluster, in memory (controlplane/fencing.py).
        self.leaders: dict[str, fencing.Leader] = {}
        # Where a work that can never be delivered gets its status.
        self.report_status = report_status
        context.works.add_handler(self._on_work)
        context.customizations.add_handler(self._on_customization)
        context.clusters.add_handler(self._on_cluster)

    def _on_cluster(
        self, key: str, old: cluster_pb2.MemberCluster | None, new: cluster_pb2.MemberCluster | None
    ) -> None:
        # A cluster being removed loses its stream before its works go, so its agent is
        # never told to delete anything: the member's objects stay (docs/semantics.md).
        if new is None or is_deleting(new):
            session = self.sessions.get(key.rsplit("/", 1)[-1])
            if session is not None:
                self.close(session)

    def _on_customization(self, key: str, old: object, new: object) -> None:
        for session in self.sessions.values():
            session.mark_customizations()

    def _customizations(self) -> agent_pb2.ControlMessage:
        message = agent_pb2.ControlMessage()
        message.customizations.items.extend(self.context.customizations.objects())
        return message

    def _on_work(
        self, key: str, old: work_pb2.PropagationWork | None, new: work_pb2.PropagationWork | None
    ) -> None:
        work = new or old
        assert work is not None
        session = self.sessions.get(work.metadata.labels.get(CLUSTER_LABEL, ""))
        if session is not None:
            session.mark(work.metadata.name)

    def _work(self, cluster: str, name: str) -> work_pb2.PropagationWork | None:
        return self.context.works.get(
            kinds.PROPAGATION_WORK.key(kinds.execution_namespace(cluster), name)
        )

    def open(self, hello: agent_pb2.Hello) -> AgentSession:
        """Start a session, replacing an older one for the same cluster, unless the
        hello comes from a leader older than the newest one seen for it
        (:mod:`controlplane.fencing`): FailedPrecondition then, and the current
        session stays."""
        cluster = hello.cluster
        leader = fencing.Leader(hello.leader_identity, hello.leader_epoch)
        newest = self.leaders.get(cluster)
        refused = fencing.refusal(newest, leader)
        if refused is not None:
            metrics.AGENT_STREAMS_FENCED.inc()
            raise FailedPrecondition(refused)
        previous = self.sessions.get(cluster)
        if previous is not None:
            if leader.epoch == 0 and previous.leader.epoch > 0:
                log.warning(
                    "an agent of %s that does not elect a leader replaces the stream of "
                    "its leader %s (epoch %d): run every agent of a cluster with "
                    "--leader-elect, or only one",
                    cluster,
                    fencing.who(previous.leader.identity),
                    previous.leader.epoch,
                )
            if leader.epoch > 0 and leader != previous.leader:
                # Deposed: tell it why, so its log says more than a closed stream.
                previous.fail(
                    FailedPrecondition(
                        f"agent {fencing.who(leader.identity)} took over "
                        f"at lease epoch {leader.epoch}"
                    )
                )
            else:
                previous.close()
        updated = fencing.newest(newest, leader)
        if updated is not None:
            self.leaders[cluster] = updated
        session = AgentSession(cluster, hello.held_works)
        session.leader = leader
        self.sessions[cluster] = session
        metrics.AGENTS_CONNECTED.set(len(self.sessions))
        return session

    def stream_taken(self, cluster: str, session_id: str) -> None:
        """Another replica took ``cluster``'s agent stream (a newer leader connected
        there, or this replica's claim went with its lease): end ours, saying why."""
        session = self.sessions.get(cluster)
        if session is not None and session.id == session_id:
            session.fail(
                FailedPrecondition(
                    "another control-plane replica holds this cluster's agent stream now"
                )
            )
            self.close(session)

    def revoke(self, cluster: str, message: str) -> None:
        """The cluster's credentials were revoked (or the cluster deleted), on this
        replica or another: end its stream here, saying so."""
        session = self.sessions.get(cluster)
        if session is not None:
            session.fail(PermissionDenied(message))
            self.close(session)

    def close(self, session: AgentSession) -> None:
        session.close()
        if self.sessions.get(session.cluster) is session:
            del self.sessions[session.cluster]
        metrics.AGENTS_CONNECTED.set(len(self.sessions))

    def connected(self, cluster: str) -> bool:
        return cluster in self.sessions

    def _decide(
        self, session: AgentSession, name: str
    ) -> work_pb2.PropagationWork | agent_pb2.WorkDelete | Unchanged | None:
        """What the agent should hear about this work now: the work, a deletion, or nothing."""
        key = kinds.PROPAGATION_WORK.key(kinds.execution_namespace(session.cluster), name)
        if key in self.context.works.quarantined:
            return None  # unreadable: neither send nor delete until it is rewritten
        work = self.context.works.get(key)
        held = session.held.get(name)
        if work is None or is_deleting(work):
            if held is None:
                if work is not None:
                    # Nothing to clean up in the member: finish the deletion now.
                    return agent_pb2.WorkDelete(
                        name=name,
                        uid=work.metadata.uid,
                        preserve_resources=work.spec.preserve_resources_on_deletion,
                    )
                return None
            preserve = work.spec.preserve_resources_on_deletion if work is not None else False
            return agent_pb2.WorkDelete(name=name, uid=held[0], preserve_resources=preserve)
        if work.spec.suspend_dispatching:
            return None
        if held == (work.metadata.uid, work.metadata.generation):
            return UNCHANGED
        return work

    async def stream(self, session: AgentSession) -> AsyncIterator[agent_pb2.ControlMessage]:
        """What the control plane sends one agent, for as long as the session lasts."""
        keep_alive = max(1, int(self.context.settings.heartbeat_interval))
        yield agent_pb2.ControlMessage(
            welcome=agent_pb2.Welcome(
                session=session.id,
                heartbeat_interval_seconds=int(self.context.settings.heartbeat_interval),
                control_plane_version=VERSION,
                keep_alive_seconds=keep_alive,
            )
        )
        cluster_works = self.context.works.index_keys("cluster", session.cluster)
        # The resume: every work the cluster has or the agent holds, each judged once.
        # Until all of them are, ``synced`` waits: a work cut from a full message goes
        # to the back of the queue, and works already sent may be marked again (their
        # status moves), so neither a count of names handled nor the queue running dry
        # says the resume is over; this set does.
        pending = {k.rsplit("/", 1)[1] for k in cluster_works} | set(session.held)
        for name in sorted(pending):
            session.mark(name)
        resume = agent_pb2.SyncComplete()
        # Before any work: the agent reads what it applies with these.
        session.customizations_due = False
        yield self._customizations()
        if not pending:
            yield agent_pb2.ControlMessage(synced=resume)
        while True:
            while session.outgoing:
                yield session.outgoing.pop(0)
            if session.customizations_due:
                session.customizations_due = False
                yield self._customizations()
            first = await session.next_dirty(idle=keep_alive)
            if first is None:
                return
            if not first:
                if not session.customizations_due and not session.outgoing:
                    # Idle: a frozen or cut-off control plane says nothing at all, and
                    # its agent then moves to another replica.
                    yield agent_pb2.ControlMessage(keep_alive=agent_pb2.KeepAlive())
                continue
            # Whatever else is already dirty goes out in the same stream message, up to
            # BATCH works and about MAX_STREAM_BATCH_BYTES.
            message = agent_pb2.ControlMessage()
            batch = message.batch  # filled in place: no copy of the works
            size = 0
            handled_now = 0
            resuming = bool(pending)
            current: str | None = first
            while current is not None:
                decided = self._decide(session, current)
                first_look = current in pending
                if isinstance(decided, work_pb2.PropagationWork):
                    sent = batch.works.add()
                    sent.CopyFrom(decided)
                    sent.ClearField("status")  # the agent needs only what it applies
                    work_size = sent.ByteSize()
                    if work_size > limits.MAX_AGENT_RECEIVE_BYTES - _ENVELOPE_BYTES:
                        del batch.works[-1]
                        self._undeliverable(session, decided, work_size)
                    elif size and size + work_size > limits.MAX_STREAM_BATCH_BYTES:
                        del batch.works[-1]
                        session.mark(current)  # the next message takes it
                        break
                    else:
                        size += work_size
                        session.sent += 1
                        resume.sent += int(first_look)
                        metrics.WORKS_DELIVERED.inc()
                        # Assume delivery; an ack confirms, and a reconnect corrects it.
                        session.held[current] = (decided.metadata.uid, decided.metadata.generation)
                elif decided is UNCHANGED:
                    session.unchanged += 1
                    resume.unchanged += int(first_look)
                elif decided is not None:
                    session.deleted += 1
                    resume.deleted += int(first_look)
                    metrics.WORK_DELETES_DELIVERED.inc()
                    batch.deletes.append(decided)
                pending.discard(current)
                handled_now += 1
                more = session.take_dirty(1) if handled_now < BATCH else []
                current = more[0] if more else None
            if batch.works or batch.deletes:
                yield message
            if resuming and not pending:
                yield agent_pb2.ControlMessage(synced=resume)

    def _undeliverable(
        self, session: AgentSession, work: work_pb2.PropagationWork, size: int
    ) -> None:
        problem = (
            f"the work is {size / 2**20:.1f} MiB, more than one stream message may carry "
            f"({limits.MAX_AGENT_RECEIVE_BYTES / 2**20:.0f} MiB); it was not sent"
        )
        log.error("%s for %s: %s", work.metadata.name, session.cluster, problem)
        if self.report_status is not None:
            self.report_status(
                session.cluster,
                agent_pb2.WorkStatusReport(
                    name=work.metadata.name,
                    uid=work.metadata.uid,
                    generation=work.metadata.generation,
                    applied=False,
                    message=problem,
                ),
            )

    def acknowledged(self, session: AgentSession, ack: agent_pb2.WorkAck) -> None:
        # Only works of this cluster count: acks for made-up names would grow memory.
        if ack.name not in session.held and self._work(session.cluster, ack.name) is None:
            return
        metrics.WORKS_ACKNOWLEDGED.inc()
        session.held[ack.name] = (ack.uid, ack.generation)

    def forget(self, session: AgentSession, name: str) -> None:
        session.held.pop(name, None)
