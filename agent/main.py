"""The Archipel agent: one per member cluster, connecting out to the control plane.

It opens one bidirectional stream, says which works it holds (from its ledger in the
member; after a restart, at generation 0, so that they are sent again), applies what
it is sent, and reports status and heartbeats. When the stream breaks it reconnects
with exponential backoff and jitter, each time to the next of the control plane's
addresses when it has several (``--server a:7443,b:7443``), and meanwhile leaves every
running workload alone: a control plane outage never touches the members.

With ``--leader-elect`` (the chart's DaemonSet runs one agent per node) the agents of a
cluster elect a leader through a Lease in the member (:mod:`agent.election`). Only the
leader opens the stream and applies; each term starts from the ledger as the previous
leader left it, so a takeover re-applies nothing that is in place. The others stand by
with their client, discovery and API watches ready.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import functools
import logging
import os
import random
import signal
import socket
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import grpc
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception_type,
    stop_never,
    wait_exponential_jitter,
)

from agent import election
from agent.apiwatch import TRANSIENT, APIWatch
from agent.election import Elector, Term, Timing
from agent.facts import Facts
from agent.identity import (
    SECRET_NAME,
    Identity,
    IdentityStore,
    RegistrationError,
    new_request,
    register,
)
from agent.kube import Kube, NotLeader, load_api_client
from agent.ledger import Ledger
from agent.works import WorkManager
from archipel import addresses, agentstream, limits
from archipel.core.names import SYSTEM_NAMESPACE
from archipel.v1alpha1 import agent_pb2, agent_pb2_grpc, work_pb2
from archipel.version import VERSION

log = logging.getLogger("archipel.agent")


class StreamEnded(Exception):
    """The control plane closed the stream; reconnect."""


class TermOver(Exception):
    """This agent's term as leader is over: it stops acting and stands by."""


def _standing_by() -> None:
    raise NotLeader("this agent stands by: another agent of the cluster leads")


class Agent:
    def __init__(
        self,
        *,
        server: str | Sequence[str],
        token: str,
        cluster: str,
        kube: Kube,
        tls_ca: bytes | None = None,
        heartbeat_interval: float | None = None,
        namespace: str = SYSTEM_NAMESPACE,
        elector: Elector | None = None,
        insecure: bool = False,
        identity: Identity | None = None,
        identity_store: IdentityStore | None = None,
        reregister: Callable[[], Awaitable[Identity | None]] | None = None,
    ) -> None:
        """``elector``: campaign for the cluster's Lease and act only while leading;
        None: act from the start (the one agent of its cluster)."""
        # Addresses of one control plane (its replicas, or the ways to reach it): one
        # session at a time, with the current one; a failed session moves to the next.
        self.servers = addresses.split(server)
        if not self.servers:
            raise ValueError("no control-plane address")
        self._current = 0
        self.token = token
        self.cluster = cluster
        self.kube = kube
        self.tls_ca = tls_ca
        self.insecure = insecure
        # With an identity, the stream opens on the control plane's mutual-TLS port with
        # its certificate (``server`` names that port), and no token is sent.
        self.identity = identity
        self.identity_store = identity_store
        self.reregister = reregister
        self._renewal_key: bytes | None = None
        self.renewals = 0
        self.ledger = Ledger(kube, namespace=namespace)
        self.facts = Facts(kube)
        # The member's CRDs and APIServices, watched so that an API it stops (or starts)
        # serving is in the next heartbeat, not in ten.
        self.api_watch = APIWatch(kube, on_change=self.facts.rediscover)
        self.elector = elector
        # The current term as leader, when electing (its identity and epoch go in the
        # hello); None otherwise, and while standing by.
        self.term: Term | None = None
        self.works = self._work_manager(fence=None)
        self.heartbeat_interval = heartbeat_interval
        self._outbox: asyncio.Queue[agent_pb2.AgentMessage] | None = None
        self._pending: list[agent_pb2.AgentMessage] = []
        self.connected = asyncio.Event()
        self.sessions = 0

    def _work_manager(self, *, fence: Any) -> WorkManager:
        return WorkManager(
            self.kube,
            self.ledger,
            send=self.send,
            on_new_api=self.facts.rediscover,
            fence=fence,
        )

    def send(self, message: agent_pb2.AgentMessage) -> None:
        """Queue a message for the control plane; kept until a stream is open."""
        if self._outbox is not None:
            self._outbox.put_nowait(message)
        elif message.HasField("status") or message.HasField("deleted"):
            self._pending.append(message)

    @property
    def server(self) -> str:
        """The address the agent connects to now (or is connected to)."""
        return self.servers[self._current]

    def _next_server(self, state: RetryCallState) -> None:
        """After a failed or ended session: wait (tenacity), then try the next address."""
        failed = self.server
        self._current = (self._current + 1) % len(self.servers)
        error = state.outcome.exception() if state.outcome else None
        log.warning(
            "connection to %s lost (%s); reconnecting to %s in %.1fs",
            failed,
            transport_problem(error, failed) or error or "",
            self.server,
            state.upcoming_sleep,
        )

    def _channel(self) -> grpc.aio.Channel:
        options = [
            ("grpc.keepalive_time_ms", 20000),
            ("grpc.keepalive_timeout_ms", 10000),
            ("grpc.max_receive_message_length", limits.MAX_AGENT_RECEIVE_BYTES),
            ("grpc.max_send_message_length", limits.MAX_AGENT_SEND_BYTES),
        ]
        if self.insecure:
            return grpc.aio.insecure_channel(self.server, options=options)
        if self.identity is not None:
            identity = self.identity
            credentials = grpc.ssl_channel_credentials(
                root_certificates=self.tls_ca or identity.ca_pem or None,
                private_key=identity.key_pem,
                certificate_chain=identity.cert_pem,
            )
            return grpc.aio.secure_channel(self.server, credentials, options=options)
        # Without a CA bundle, the system's roots: a control plane serving a
        # certificate of a public CA needs none.
        credentials = grpc.ssl_channel_credentials(root_certificates=self.tls_ca)
        return grpc.aio.secure_channel(self.server, credentials, options=options)

    async def _heartbeats(self, interval: float) -> None:
        self.facts.reset()
        while True:
            try:
                heartbeat = await self.facts.collect()
            except Exception as error:
                heartbeat = agent_pb2.Heartbeat(api_server_ready=False, message=str(error)[:500])
            self.send(agent_pb2.AgentMessage(heartbeat=heartbeat))
            await asyncio.sleep(interval)

    def hello(self) -> agent_pb2.Hello:
        """What a new session starts with: this cluster, and the works it holds."""
        hello = agent_pb2.Hello(cluster=self.cluster, agent_version=VERSION)
        if self.term is not None:
            hello.leader_identity = self.term.identity
            hello.leader_epoch = self.term.epoch
        for entry in self.ledger.entries.values():
            # Generation 0 (no work has it) for a work known by its hashes only, held
            # since before this process started: the control plane then sends it again,
            # and the agent, which keeps contents in memory only, gets them back to
            # judge drift with. Receiving it costs a read per object, not an apply.
            generation = entry.generation if entry.has_contents else 0
            hello.held_works.add(name=entry.work, uid=entry.uid, generation=generation)
        return hello

    async def _session(self) -> None:
        outbox: asyncio.Queue[agent_pb2.AgentMessage] = asyncio.Queue()
        hello = self.hello()

        heartbeats: asyncio.Task[None] | None = None
        # If the heartbeats ever fail, the session ends with their error, and the agent
        # with it (it is not a connection error, so it is not retried): never silently.
        # (Not a TaskGroup: it would wrap the stream's own errors, which are retried.)
        heartbeat_failure: list[BaseException] = []
        renewals: asyncio.Task[None] | None = None
        await self._newest_identity()
        async with self._channel() as channel:
            stub = agent_pb2_grpc.AgentServiceStub(channel)
            call = stub.Connect(
                agentstream.outgoing(hello, outbox),
                metadata=[] if self.identity else [("authorization", f"Bearer {self.token}")],
            )
            # Until the welcome promises keep-alives, the agent waits as long as it takes.
            silence: float | None = None
            messages = aiter(call)
            try:
                while True:
                    try:
                        async with asyncio.timeout(silence):
                            message = await anext(messages)
                    except StopAsyncIteration:
                        break
                    except TimeoutError:
                        call.cancel()
                        raise StreamEnded(
                            f"the control plane at {self.server} sent nothing for "
                            f"{silence:.0f}s: it is frozen or cut off"
                        ) from None
                    which = message.WhichOneof("message")
                    if which == "welcome":
                        self._outbox = outbox
                        for pending in self._pending:
                            outbox.put_nowait(pending)
                        self._pending.clear()
                        self.works.resend_reports()
                        self.sessions += 1
                        self.connected.set()
                        interval = (
                            self.heartbeat_interval
                            or message.welcome.heartbeat_interval_seconds
                            or 10
                        )
                        if heartbeats is not None:
                            heartbeats.cancel()
                        heartbeats = asyncio.create_task(
                            self._heartbeats(interval), name="heartbeats"
                        )
                        heartbeats.add_done_callback(
                            functools.partial(_end_session_on_failure, call, heartbeat_failure)
                        )
                        if message.welcome.keep_alive_seconds > 0:
                            silence = 3.0 * message.welcome.keep_alive_seconds
                        if self.identity is not None and renewals is None:
                            renewals = asyncio.create_task(
                                self._renew_when_due(outbox), name="renewals"
                            )
                        log.info(
                            "connected to %s (session %s, control plane %s)",
                            self.server,
                            message.welcome.session,
                            message.welcome.control_plane_version or "unknown",
                        )
                    elif which == "work":
                        self._receive(message.work)
                    elif which == "delete":
                        self.works.receive_delete(message.delete)
                    elif which == "batch":
                        for work in message.batch.works:
                            self._receive(work)
                        for delete in message.batch.deletes:
                            self.works.receive_delete(delete)
                    elif which == "certificate":
                        await self._renewed(message.certificate)
                    elif which == "customizations":
                        self.works.set_customizations(message.customizations.items)
                    elif which == "synced":
                        synced = message.synced
                        log.info(
                            "in sync: %d sent, %d deleted, %d unchanged",
                            synced.sent,
                            synced.deleted,
                            synced.unchanged,
                        )
            except asyncio.CancelledError:
                if heartbeat_failure:
                    raise heartbeat_failure[0] from None
                raise
            finally:
                self._outbox = None
                self.connected.clear()
                for task in (heartbeats, renewals):
                    if task is not None:
                        task.cancel()
                        await asyncio.gather(task, return_exceptions=True)
        if heartbeat_failure:
            raise heartbeat_failure[0]
        raise StreamEnded("the control plane closed the stream")

    async def _newest_identity(self) -> None:
        """The identity in the Secret, if newer than this agent's: another agent of the
        cluster (a leader before this one) may have renewed it."""
        if self.identity is None or self.identity_store is None:
            return
        try:
            stored = await self.identity_store.load()
        except Exception as error:
            log.warning("reading the identity Secret: %s; using the certificate in memory", error)
            return
        if stored is not None and stored.valid() and stored.not_after > self.identity.not_after:
            self.identity = stored

    async def _renew_when_due(self, outbox: asyncio.Queue[agent_pb2.AgentMessage]) -> None:
        """Ask for a new certificate on the open stream once 2/3 of the current one's
        lifetime has passed; again a while later if the answer does not come."""
        while self.identity is not None:
            identity = self.identity
            due = (identity.renew_at() - datetime.datetime.now(datetime.UTC)).total_seconds()
            if due > 0:
                await asyncio.sleep(due)
                continue  # the identity may have changed meanwhile
            key_pem, csr = new_request(identity.cluster)
            self._renewal_key = key_pem
            log.info(
                "renewing certificate %s (valid until %s)", identity.serial, identity.not_after
            )
            outbox.put_nowait(
                agent_pb2.AgentMessage(renewal=agent_pb2.CertificateRenewal(csr=csr.decode()))
            )
            lifetime = (identity.not_after - identity.cert.not_valid_before_utc).total_seconds()
            # Not answered (or refused): ask again, well before the certificate expires.
            await asyncio.sleep(max(1.0, min(60.0, lifetime / 30)))

    async def _renewed(self, answer: agent_pb2.RenewedCertificate) -> None:
        """The control plane's answer to a renewal: the new certificate goes into the
        Secret, and is what the next connection uses; the open stream stays."""
        if answer.error or self._renewal_key is None or self.identity is None:
            log.warning("certificate renewal refused: %s", answer.error or "not asked for")
            return
        renewed = Identity(
            key_pem=self._renewal_key,
            cert_pem=answer.certificate.encode(),
            ca_pem=answer.ca.encode() or self.identity.ca_pem,
        )
        self._renewal_key = None
        if self.identity_store is not None:
            await self.identity_store.save(renewed)
        self.identity = renewed
        self.renewals += 1
        log.info(
            "certificate renewed: %s, valid until %s; the next connection uses it",
            renewed.serial,
            renewed.not_after,
        )

    def _receive(self, work: work_pb2.PropagationWork) -> None:
        meta = work.metadata
        self.send(
            agent_pb2.AgentMessage(
                ack=agent_pb2.WorkAck(name=meta.name, uid=meta.uid, generation=meta.generation)
            )
        )
        self.works.receive(work)

    async def run(self) -> None:
        """The workers that apply works, the stream that brings them and the watch on
        the member's APIs, supervised together: if any ever fails, the others stop and
        the error ends the process (non-zero, with the traceback), never leaving a
        half-alive agent behind."""
        if self.elector is not None:
            await self._run_elected(self.elector)
            return
        await self.ledger.load()
        try:
            async with asyncio.TaskGroup() as group:
                group.create_task(self.works.run(), name="works")
                group.create_task(self._stream_forever(), name="stream")
                group.create_task(self.api_watch.run(), name="api-watch")
        finally:
            self.works.stop()

    async def _run_elected(self, elector: Elector) -> None:
        """The election, the watch on the member's APIs (warm for a takeover), and each
        term won, one after the other, supervised together as :meth:`run` says. On the
        way out, once nothing acts any more, the Lease is released, so a standby takes
        over at its next try instead of after a lease duration."""
        try:
            async with asyncio.TaskGroup() as group:
                group.create_task(elector.run(), name="election")
                group.create_task(self.api_watch.run(), name="api-watch")
                group.create_task(self._terms(elector), name="terms")
        finally:
            self.works.stop()
            await elector.release()

    async def _terms(self, elector: Elector) -> None:
        await self._warm()
        while True:
            term = await elector.next_term()
            await self._lead(term)

    async def _warm(self) -> None:
        """What a standby keeps ready for a takeover: the client's connections, the
        member's discovery, and a readable ledger (its namespace too, where the Lease
        lives). Best effort: the election retries what the member cannot answer yet."""
        self.ledger.fence = _standing_by
        try:
            await self.kube.call(lambda: self.kube.dynamic)
            await self.ledger.load()
        except TRANSIENT as error:
            log.warning("standing by without a warm cache: %s", error)
            return
        log.info("standing by: %d works in the ledger", len(self.ledger.entries))

    async def _lead(self, term: Term) -> None:
        """Act for one term: the works and the stream, from the ledger as the member
        holds it now (another leader may have written it since this process read it),
        until the term is over. Its writes check the term's deadline themselves; this
        only stops the tasks."""
        self.term = term
        self.ledger.fence = term.check
        self.works = self._work_manager(fence=term.check)
        self._pending.clear()  # reports of an earlier term: the new term reports anew
        started = time.monotonic()
        try:
            async with asyncio.TaskGroup() as group:
                group.create_task(_until_over(term), name="term")
                group.create_task(self._act(), name="act")
        except* TermOver:
            log.warning(
                "stopped acting after %.1fs as leader at epoch %d; standing by",
                time.monotonic() - started,
                term.epoch,
            )
        finally:
            self.works.stop()
            self.ledger.fence = _standing_by
            self.term = None
            self.connected.clear()

    async def _act(self) -> None:
        async for attempt in AsyncRetrying(
            wait=wait_exponential_jitter(initial=0.5, max=10),
            stop=stop_never,
            retry=retry_if_exception_type(TRANSIENT),
            before_sleep=lambda state: log.warning(
                "reading the ledger: %s; retrying",
                state.outcome.exception() if state.outcome else "",
            ),
            reraise=True,
        ):
            with attempt:
                await self.ledger.load()
        async with asyncio.TaskGroup() as group:
            group.create_task(self.works.run(), name="works")
            group.create_task(self._stream_forever(), name="stream")

    async def _stream_forever(self) -> None:
        retrying = AsyncRetrying(
            wait=ReconnectBackoff(lambda: self.sessions),
            stop=stop_never,
            retry=retry_if_exception_type((grpc.aio.AioRpcError, StreamEnded, OSError)),
            before_sleep=self._next_server,
            reraise=True,
        )
        async for attempt in retrying:
            with attempt:
                try:
                    await self._session()
                except grpc.aio.AioRpcError as error:
                    await self._refused(error)
                    raise

    async def _refused(self, error: grpc.aio.AioRpcError) -> None:
        """The control plane no longer accepts this agent's certificate (revoked, or
        the cluster deleted): register again if a bootstrap token is at hand (the file
        is read anew: a Secret mounted there may have been given a new token)."""
        refusals = (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED)
        if self.identity is None or error.code() not in refusals:
            return
        log.error("the control plane refuses this agent's certificate: %s", error.details())
        if self.reregister is None:
            return
        try:
            renewed = await self.reregister()
        except RegistrationError as problem:
            log.error("%s", problem)
            return
        if renewed is not None:
            self.identity = renewed


def transport_problem(error: BaseException | None, server: str) -> str | None:
    """What to do about a connection that failed in the TLS handshake, in one line; None
    for any other failure."""
    if not isinstance(error, grpc.aio.AioRpcError):
        return None
    details = (error.details() or "").lower()
    if "certificate verify failed" in details or "handshake failed" in details:
        return (
            f"cannot verify the control plane's certificate at {server}: pass "
            "--tls-ca-file with the control plane's CA bundle (its --pki-dir's ca/ca.crt, "
            "or the ca.crt of the chart's CA Secret)"
        )
    if "wrong_version_number" in details or ("http2" in details and "frame" in details):
        return f"{server} does not speak TLS: is it a control plane started with --insecure?"
    return None


async def _until_over(term: Term) -> None:
    """Return never; raise TermOver when the term ends: lost (the elector says so) or
    past its deadline (which the elector may notice only at its next try)."""
    while not term.lost.is_set():
        remaining = term.valid_until - time.monotonic()
        if remaining <= 0:
            term.end()
            break
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(remaining):
                await term.lost.wait()
    raise TermOver(f"epoch {term.epoch}")


class ReconnectBackoff:
    """Exponential backoff with jitter (0.5 s doubling up to 20 s, plus up to 1 s) that
    starts over once a session was established.

    tenacity counts every failed attempt of the retry loop, and one loop lasts the
    agent's life: without the reset, each reconnect would wait the longest delay ever
    reached, so an agent that lived through a few restarts of the control plane would
    wait 20 s after the next one. A failure after a good session waits 0.5 s (plus
    jitter, so a fleet of agents does not come back in step)."""

    def __init__(self, sessions: Callable[[], int], *, initial: float = 0.5, most: float = 20.0):
        self._sessions = sessions
        self._initial = initial
        self._most = most
        self._seen = -1
        self._streak_from = 0

    def __call__(self, state: RetryCallState) -> float:
        if self._sessions() != self._seen:
            self._seen = self._sessions()
            self._streak_from = state.attempt_number
        failures = state.attempt_number - self._streak_from
        return float(min(self._most, self._initial * 2**failures) + random.uniform(0, 1))


def _end_session_on_failure(
    call: Any, failures: list[BaseException], task: asyncio.Task[None]
) -> None:
    """A session's helper task that failed takes the session down with its error."""
    if task.cancelled() or task.exception() is None:
        return
    error = task.exception()
    assert error is not None
    log.error("%s failed; ending the session", task.get_name(), exc_info=error)
    failures.append(error)
    call.cancel()


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="archipel-agent", description=__doc__)
    parser.add_argument(
        "--server",
        action="append",
        help="the control plane's host:port; several (replicas) separated by commas or by "
        "repeating the flag, tried in turn (default $ARCHIPEL_SERVER or 127.0.0.1:7443)",
    )
    parser.add_argument(
        "--token-file",
        type=Path,
        default=os.environ.get("ARCHIPEL_AGENT_TOKEN_FILE"),
        help="a cluster token from archipel join (the quick start); without it the agent "
        "uses its certificate, registering first with a bootstrap token if it has none",
    )
    parser.add_argument(
        "--bootstrap-token-file",
        type=Path,
        default=os.environ.get("ARCHIPEL_BOOTSTRAP_TOKEN_FILE"),
        help="a bootstrap token (archipel token create) to register with when the identity "
        "Secret holds no valid certificate; or set $ARCHIPEL_BOOTSTRAP_TOKEN (never a flag's "
        "value: argv is visible to every process)",
    )
    parser.add_argument(
        "--agent-server",
        action="append",
        help="the control plane's mutual-TLS agent port(s), host:port (default: each "
        "--server's host, its port + 1)",
    )
    parser.add_argument(
        "--identity-secret",
        default=SECRET_NAME,
        help="the Secret in --namespace that keeps the agent's key and certificate",
    )
    parser.add_argument(
        "--cluster",
        help="this member's cluster name (for registration); defaults to the cluster named "
        "in the token or the stored certificate",
    )
    parser.add_argument("--kubeconfig", help="omit to use in-cluster credentials")
    parser.add_argument(
        "--tls-ca-file",
        type=Path,
        default=os.environ.get("ARCHIPEL_TLS_CA_FILE") or None,
        help="the control plane's CA bundle (its --pki-dir's ca/ca.crt); default "
        "$ARCHIPEL_TLS_CA_FILE, else the system's roots",
    )
    parser.add_argument(
        "--insecure",
        action="store_true",
        help="plaintext, to a control plane started with --insecure (loopback only)",
    )
    parser.add_argument("--heartbeat-interval", type=float)
    parser.add_argument(
        "--namespace",
        default=os.environ.get("ARCHIPEL_NAMESPACE") or SYSTEM_NAMESPACE,
        help="where the agent keeps its ledger (its own namespace in the member)",
    )
    parser.add_argument(
        "--leader-elect",
        type=_boolean,
        nargs="?",
        const=True,
        default=False,
        metavar="true|false",
        help="elect one active agent among several of a cluster through a Lease in the "
        "member (the chart's DaemonSet turns it on); off by default: a lone agent would "
        "only wait, after a crash, for its own old lease to expire",
    )
    parser.add_argument(
        "--identity",
        default=election.default_identity(dict(os.environ), socket.gethostname(), os.getpid()),
        help="this agent's name in the Lease (default: $ARCHIPEL_POD_NAME, else hostname-pid)",
    )
    parser.add_argument(
        "--leader-elect-resource-name", help="the Lease (default: archipel-agent-<cluster>)"
    )
    parser.add_argument("--leader-elect-lease-duration", type=int, default=15)
    parser.add_argument("--leader-elect-renew-deadline", type=float, default=10.0)
    parser.add_argument("--leader-elect-retry-period", type=float, default=2.0)
    parser.add_argument("--log-level", default="INFO")
    args = parser.parse_args(argv)
    problem = timing(args).problem()
    if problem is not None:
        parser.error(f"--leader-elect-*: {problem}")
    return args


def timing(args: argparse.Namespace) -> Timing:
    return Timing(
        lease_duration=args.leader_elect_lease_duration,
        renew_deadline=args.leader_elect_renew_deadline,
        retry_period=args.leader_elect_retry_period,
    )


def _boolean(value: str) -> bool:
    lowered = value.lower()
    if lowered in ("true", "1", "yes"):
        return True
    if lowered in ("false", "0", "no"):
        return False
    raise argparse.ArgumentTypeError(f"{value!r}: true or false")


def default_agent_servers(servers: Sequence[str]) -> list[str]:
    """The mutual-TLS port next to each API address: the same host, the port + 1."""
    found = []
    for server in servers:
        host, _, port = server.rpartition(":")
        found.append(f"{host}:{int(port) + 1}")
    return found


def _read_secret_file(path: Path, what: str) -> str:
    try:
        return Path(path).read_text().strip()
    except OSError as error:
        raise SystemExit(f"error: {what}: {error}") from None


async def _identity(
    args: argparse.Namespace, kube: Kube, servers: list[str], tls_ca: bytes | None
) -> tuple[Identity, IdentityStore]:
    """The agent's certificate: the stored one while valid, else a new registration."""
    store = IdentityStore(kube, namespace=args.namespace, name=args.identity_secret)
    stored = await store.load()
    token = _bootstrap_token(args)
    usable = (
        stored is not None
        and stored.valid()
        and (not args.cluster or stored.cluster == args.cluster)
        # A certificate of another control plane (its CA is not the one trusted now)
        # is no use, when a token can get one of this one.
        and (not token or tls_ca is None or stored.issued_by(tls_ca))
    )
    if stored is not None and usable:
        log.info(
            "using the certificate %s of cluster %s from Secret %s/%s (valid until %s)",
            stored.serial,
            stored.cluster,
            args.namespace,
            args.identity_secret,
            stored.not_after,
        )
        return stored, store
    identity = await _register(args, kube, store, servers, tls_ca, token, stored is not None)
    return identity, store


def _bootstrap_token(args: argparse.Namespace) -> str:
    if args.bootstrap_token_file:
        return _read_secret_file(args.bootstrap_token_file, "--bootstrap-token-file")
    return os.environ.get("ARCHIPEL_BOOTSTRAP_TOKEN", "")


async def _register(
    args: argparse.Namespace,
    kube: Kube,
    store: IdentityStore,
    servers: list[str],
    tls_ca: bytes | None,
    token: str,
    had_one: bool,
) -> Identity:
    why = "holds an unusable certificate" if had_one else "holds no certificate"
    if not token:
        raise RegistrationError(
            f"registration: Secret {args.namespace}/{args.identity_secret} {why} and there is "
            "no bootstrap token: make one with archipel token create --cluster NAME and pass "
            "it in --bootstrap-token-file or $ARCHIPEL_BOOTSTRAP_TOKEN (or join with "
            "archipel join and pass --token-file)"
        )
    if not args.cluster:
        raise RegistrationError("registration: --cluster is required to register (the CN)")
    log.info("registering cluster %s with bootstrap token %s", args.cluster, token.split(".")[0])
    identity = await register(
        servers=servers, tls_ca=tls_ca, token=token, cluster=args.cluster, insecure=args.insecure
    )
    await kube.call(kube.ensure_namespace, args.namespace)
    await store.save(identity)
    log.info("stored the certificate in Secret %s/%s", args.namespace, args.identity_secret)
    return identity


async def _serve(args: argparse.Namespace) -> None:
    token = os.environ.get("ARCHIPEL_AGENT_TOKEN", "")
    if args.token_file:
        token = _read_secret_file(args.token_file, "--token-file")
    api_servers = addresses.split(
        args.server or os.environ.get("ARCHIPEL_SERVER") or "127.0.0.1:7443"
    )
    servers = api_servers
    tls_ca = _read_ca(args.tls_ca_file)
    kube = Kube(load_api_client(args.kubeconfig))
    identity: Identity | None = None
    identity_store: IdentityStore | None = None
    if not token:
        try:
            identity, identity_store = await _identity(args, kube, servers, tls_ca)
        except RegistrationError as error:
            kube.close()
            raise SystemExit(f"error: {error}") from None
        servers = addresses.split(args.agent_server or []) or default_agent_servers(servers)
    cluster = (
        identity.cluster if identity is not None else (args.cluster or token.partition(".")[0])
    )
    elector = None
    if args.leader_elect:
        elector = Elector(
            kube,
            name=args.leader_elect_resource_name or election.lease_name(cluster),
            namespace=args.namespace,
            identity=args.identity,
            timing=timing(args),
        )

    async def reregister() -> Identity | None:
        assert identity_store is not None
        token = _bootstrap_token(args)
        if not token:
            log.error(
                "no bootstrap token to register again with: make one with archipel token "
                "create --cluster %s and pass it in --bootstrap-token-file",
                cluster,
            )
            return None
        return await _register(args, kube, identity_store, api_servers, tls_ca, token, True)

    agent = Agent(
        reregister=reregister if identity is not None else None,
        server=servers,
        token=token,
        cluster=cluster,
        kube=kube,
        tls_ca=tls_ca,
        insecure=args.insecure,
        identity=identity,
        identity_store=identity_store,
        heartbeat_interval=args.heartbeat_interval,
        namespace=args.namespace,
        elector=elector,
    )
    task = asyncio.create_task(agent.run())
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, task.cancel)
    try:
        await task
    except asyncio.CancelledError:
        log.info("agent stopped")
    finally:
        kube.close()


def _read_ca(path: Path | None) -> bytes | None:
    if path is None:
        return None
    try:
        return Path(path).read_bytes()
    except OSError as error:
        raise SystemExit(
            f"error: --tls-ca-file: cannot read the control plane's CA bundle: {error}"
        ) from None


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    asyncio.run(_serve(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
