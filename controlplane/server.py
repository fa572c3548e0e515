"""The control plane process: etcd-backed store, informers, controllers, gRPC server.

Start-up order matters: informers list before any controller runs, so controllers
never act on a partial view, and agents are accepted only once the work cache is
complete, so a restart resends nothing an agent already holds. SIGTERM marks the
health service NOT_SERVING, lets open calls finish for ``shutdown_grace`` seconds,
stops the controllers and leaves the replicas' membership (its shards go to the others
at once); all state is in etcd, so a restart loses nothing.

Several processes may run against one etcd: each is a replica that serves everything
and runs the controller keys of the shards it holds (:mod:`controlplane.shards`).
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import logging
import os
import signal
import sys
from collections.abc import AsyncIterator, Coroutine, Sequence
from pathlib import Path
from typing import Any, cast

import grpc
from google.protobuf import descriptor_pool
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from prometheus_client import start_http_server

from archipel import addresses, agentstream, durations, limits, pki
from archipel.core import kinds, matching
from archipel.core.errors import (
    ArchipelError,
    Invalid,
    PermissionDenied,
    TooMuch,
    Unauthenticated,
)
from archipel.v1alpha1 import agent_pb2
from archipel.v1alpha2 import access_pb2, registration_pb2, storage_pb2
from archipel.version import VERSION
from controlplane import (
    access,
    api,
    auth,
    certificates,
    encryption,
    etcd,
    metrics,
    ratelimit,
    registration,
)
from controlplane.audit import AuditLog
from controlplane.context import Context, Settings
from controlplane.controllers import binding as binding_controller
from controlplane.controllers import cluster as cluster_controller
from controlplane.controllers import dependencies as dependencies_controller
from controlplane.controllers import namespace as namespace_controller
from controlplane.controllers import policy as policy_controller
from controlplane.controllers import scheduler as scheduler_controller
from controlplane.controllers import workloadrebalancer as rebalancer_controller
from controlplane.controllers.binding import BindingController
from controlplane.controllers.cluster import ClusterController
from controlplane.controllers.dependencies import DependenciesController
from controlplane.controllers.execution import AgentSession, ExecutionController
from controlplane.controllers.namespace import NamespaceController
from controlplane.controllers.policy import PolicyController
from controlplane.controllers.scheduler import SchedulerController
from controlplane.controllers.status import BindingStatusController, WorkStatusController
from controlplane.controllers.workloadrebalancer import WorkloadRebalancerController
from controlplane.etcd import Etcd
from controlplane.runtime import Controller
from controlplane.shards import (
    DEFAULT_LEASE_SECONDS,
    DEFAULT_SHARDS,
    Shards,
    default_replica_id,
)
from controlplane.store import Store
from controlplane.users import UserDirectory

log = logging.getLogger("archipel.controlplane")
# Every service in proto/, as the contract declares them: reflection and health list
# these, and api_servicers() must implement each of their methods.
SERVICE_NAMES = tuple(
    service.full_name
    for file in (
        *(served.file for served in api.API_VERSIONS),
        access_pb2.DESCRIPTOR,
        storage_pb2.DESCRIPTOR,
        registration_pb2.DESCRIPTOR,
        agent_pb2.DESCRIPTOR,
    )
    for service in file.services_by_name.values()
)
STORAGE_ADMIN_SERVICE = storage_pb2.DESCRIPTOR.services_by_name["StorageAdminService"].full_name
REGISTRATION_SERVICES = registration_pb2.DESCRIPTOR.services_by_name
AGENT_SERVICE = agent_pb2.DESCRIPTOR.services_by_name["AgentService"].full_name


class AgentService:
    """The agent stream: authenticate, say hello, then work both ways until it ends."""

    def __init__(
        self,
        *,
        clusters: ClusterController,
        execution: ExecutionController,
        work_status: WorkStatusController,
        shards: Shards,
        registrar: registration.Registrar,
    ) -> None:
        self.clusters = clusters
        self.execution = execution
        self.work_status = work_status
        self.shards = shards
        self.registrar = registrar
        # Releases of stream claims under way, held so none is collected unfinished.
        self._releasing: set[asyncio.Task[None]] = set()

    async def Connect(
        self,
        request_iterator: AsyncIterator[agent_pb2.AgentMessage],
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> AsyncIterator[agent_pb2.ControlMessage]:
        try:
            cluster = await self._authenticate(context)
            try:
                first = await asyncio.wait_for(anext(request_iterator), timeout=30)
            except (StopAsyncIteration, TimeoutError) as error:
                raise Invalid("hello", "the agent must open with a hello message") from error
            if not first.HasField("hello"):
                raise Invalid("hello", "the agent must open with a hello message")
            hello = first.hello
            if hello.cluster != cluster:
                raise PermissionDenied(
                    f"this credential belongs to cluster {cluster}, not "
                    f"{limits.echo(hello.cluster)}"
                )
            _check_held(hello)
            if hello.more_held_works:
                await self._read_held_works(hello, request_iterator)
            self.clusters.require_registered(cluster)
            # Last, with no await before the session is open: an agent of an older
            # lease epoch than the newest seen is refused here (controlplane/fencing.py),
            # and two hellos of one cluster are judged one after the other.
            session = self.execution.open(hello)
        except ArchipelError as error:
            await context.abort(error.code, str(error))
        try:
            # Every replica's fence: the newest epoch is kept in etcd, and the replica
            # that held the stream before sees its claim replaced and ends it.
            await self.shards.claim_stream(
                cluster, session.id, hello.leader_identity, hello.leader_epoch
            )
        except ArchipelError as error:
            self.execution.close(session)
            await context.abort(error.code, str(error))
        self.clusters.connected(cluster, hello.agent_version)
        reader = asyncio.create_task(
            self._read(session, cluster, request_iterator), name=f"session-{session.id}"
        )
        log.info(
            "agent for %s connected (session %s, holds %d works%s)",
            cluster,
            session.id,
            len(session.held),
            f", leader {limits.echo(hello.leader_identity)} at lease epoch {hello.leader_epoch}"
            if hello.leader_epoch
            else "",
        )
        try:
            async for message in self.execution.stream(session):
                yield message
        finally:
            # The bookkeeping first: this generator may be closed by a cancellation,
            # and nothing after an await is sure to run then.
            reader.cancel()
            self.execution.close(session)
            self.clusters.disconnected(cluster)
            release = asyncio.ensure_future(self.shards.release_stream(cluster, session.id))
            self._releasing.add(release)
            release.add_done_callback(self._releasing.discard)
            log.info("agent for %s disconnected (session %s)", cluster, session.id)
            # The reader handles its own errors (_read); waiting for it here only
            # makes sure it is over before the handler is.
            await asyncio.wait({reader}, timeout=_READER_GRACE)
        if session.error is not None:
            await context.abort(session.error.code, str(session.error))

    async def _authenticate(self, context: grpc.aio.ServicerContext[Any, Any]) -> str:
        """The cluster this stream is for: from the client certificate on the agent
        port (mutual TLS), never from what the agent says; else from its join token."""
        peer = context.auth_context()
        certificate = list(peer.get("x509_pem_cert", ()))
        if peer.get("x509_common_name") and certificate:
            return await self.registrar.authenticate(certificate[0])
        token = auth.bearer_token(context.invocation_metadata())  # type: ignore[arg-type]
        if token is None:
            raise Unauthenticated(
                "missing cluster credentials: a client certificate on the agent port, or "
                "'authorization: Bearer <cluster token>'"
            )
        return await self.clusters.authenticate(token)

    async def _renew(self, session: AgentSession, cluster: str, csr: str) -> None:
        """Sign a renewal CSR on the open stream; the answer goes down the same stream."""
        try:
            certificate = await self.registrar.renew(cluster, csr)
        except ArchipelError as error:
            session.push(
                agent_pb2.ControlMessage(
                    certificate=agent_pb2.RenewedCertificate(error=str(error)[:500])
                )
            )
            return
        ca = self.registrar.ca
        session.push(
            agent_pb2.ControlMessage(
                certificate=agent_pb2.RenewedCertificate(
                    certificate=certificate, ca=ca.cert_pem.decode() if ca else ""
                )
            )
        )
        log.info("renewed the certificate of cluster %s's agent", cluster)

    @staticmethod
    async def _read_held_works(
        hello: agent_pb2.Hello, request_iterator: AsyncIterator[agent_pb2.AgentMessage]
    ) -> None:
        """The HeldWorks messages that complete ``hello``, added to it.

        Each held work the control plane does not know costs a delete: one credential
        must not make the control plane do unbounded work, so the count is bounded
        while reading, not after.
        """
        more = True
        while more:
            _check_held(hello)
            try:
                message = await asyncio.wait_for(anext(request_iterator), timeout=30)
            except (StopAsyncIteration, TimeoutError) as error:
                raise Invalid("heldWorks", "the hello announced more held works") from error
            if not message.HasField("held_works"):
                raise Invalid("heldWorks", "the hello announced more held works")
            hello.held_works.extend(message.held_works.works)
            more = message.held_works.more
        _check_held(hello)

    async def _read(
        self,
        session: AgentSession,
        cluster: str,
        request_iterator: AsyncIterator[agent_pb2.AgentMessage],
    ) -> None:
        try:
            async for message in request_iterator:
                which = message.WhichOneof("message")
                if which == "ack":
                    self.execution.acknowledged(session, message.ack)
                elif which == "status":
                    # Reports are filed under the authenticated cluster, whatever they say,
                    # and bounded as an agent bounds them: a status nested too deep would
                    # make the work, and the binding that aggregates it, undecodable.
                    self.work_status.report(cluster, agentstream.bound_report(message.status))
                elif which == "deleted":
                    self.execution.forget(session, message.deleted.name)
                    self.work_status.deleted(cluster, message.deleted)
                elif which == "heartbeat":
                    size = message.heartbeat.ByteSize()
                    if size > limits.MAX_HEARTBEAT_BYTES:
                        session.fail(
                            TooMuch(
                                f"heartbeat: {size} bytes, more than the "
                                f"{limits.MAX_HEARTBEAT_BYTES} a heartbeat may have"
                            )
                        )
                        return
                    self.clusters.heartbeat(cluster, message.heartbeat)
                elif which == "renewal":
                    if session.renewing is not None and not session.renewing.done():
                        continue  # one at a time: the agent asks again if it must
                    session.renewing = asyncio.create_task(
                        self._renew(session, cluster, message.renewal.csr)
                    )
                elif which == "batch":
                    batch = message.batch
                    for ack in batch.acks:
                        self.execution.acknowledged(session, ack)
                    for report in batch.statuses:
                        self.work_status.report(cluster, agentstream.bound_report(report))
                    for deleted in batch.deleted:
                        self.execution.forget(session, deleted.name)
                        self.work_status.deleted(cluster, deleted)
        except (grpc.aio.AioRpcError, asyncio.CancelledError):
            pass
        except ArchipelError as error:
            # What the agent sent is wrong (a message that is not an AgentMessage): the
            # stream ends with the reason, as for any refused request.
            session.fail(error)
        except Exception as error:
            # A bug met reading one agent's stream ends that stream, loudly: INTERNAL
            # to the agent (which reconnects), the traceback in the log, a count in
            # the metrics. It is confined to that stream, as a handler's error is to
            # its call: what one agent sends must never take the control plane away
            # from all the others.
            metrics.SESSION_CRASHES.inc()
            log.error("agent session %s (%s) failed", session.id, cluster, exc_info=error)
            session.fail(
                ArchipelError(f"the control plane failed reading this stream: {error!r}"[:300])
            )
        finally:
            session.close()


CONTROLLER_NAMES = (
    cluster_controller.NAME,
    policy_controller.NAME,
    scheduler_controller.NAME,
    binding_controller.NAME,
    dependencies_controller.NAME,
    namespace_controller.NAME,
    WorkStatusController.NAME,
    BindingStatusController.NAME,
    rebalancer_controller.NAME,
)


def select_controllers(spec: Sequence[str], names: Sequence[str]) -> set[str]:
    """Karmada's ``--controllers`` rule: ``*`` is every controller, a name adds one,
    ``-name`` takes one away (whatever the order). Names may leave out the
    ``-controller`` suffix. An unknown name is :class:`Invalid`."""
    short = {name.removesuffix("-controller"): name for name in names}
    chosen: set[str] = set()
    removed: set[str] = set()
    for item in spec:
        word = item.strip()
        if word == "*":
            chosen |= set(names)
            continue
        target = removed if word.startswith("-") else chosen
        bare = word.removeprefix("-")
        name = short.get(bare.removesuffix("-controller"))
        if name is None:
            raise Invalid(
                "controllers",
                f"unknown controller {limits.echo(bare)}: known are {', '.join(sorted(short))}",
            )
        target.add(name)
    return chosen - removed


# How long a closing session waits for its reader to finish after cancelling it.
_READER_GRACE = 5.0


class MethodAwarePool:
    """The descriptor pool reflection answers from, in which a method's full name finds
    its service's file.

    upb's pool (protobuf's default implementation) does not index methods, so without
    this ``grpcurl describe archipel.v1alpha1.PropagationPolicyService.Get`` would
    answer "Symbol not found". Everything else is the default pool's.
    """

    def __init__(self, pool: descriptor_pool.DescriptorPool) -> None:
        self._pool = pool

    def FindFileContainingSymbol(self, symbol: str) -> Any:
        try:
            return self._pool.FindFileContainingSymbol(symbol)
        except KeyError:
            service_name, _, method = symbol.rpartition(".")
            try:
                service = self._pool.FindServiceByName(service_name)
            except KeyError:
                service = None
            if service is None or method not in service.methods_by_name:
                raise
            return service.file

    def __getattr__(self, name: str) -> Any:
        return getattr(self._pool, name)


async def _decoded(requests: AsyncIterator[bytes]) -> AsyncIterator[agent_pb2.AgentMessage]:
    """An agent's messages, decoded here rather than by gRPC's generated handler, which
    fails the stream with INTERNAL on bytes that are not an AgentMessage: such bytes
    are :class:`Invalid`, naming the field that cannot be decoded."""
    async for data in requests:
        yield api.decode_request(agent_pb2.AgentMessage, data, max_bytes=limits.MAX_RECEIVE_BYTES)


def agent_handler(agent: AgentService) -> grpc.GenericRpcHandler[Any, Any]:
    """The agent stream's handler: messages arrive as bytes (:func:`_decoded`)."""

    async def connect(
        requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[agent_pb2.ControlMessage]:
        stream = agent.Connect(_decoded(requests), context)
        try:
            async for message in stream:
                yield message
        finally:
            # The session's bookkeeping runs now, not whenever the stream is collected.
            await stream.aclose()  # type: ignore[attr-defined]

    handler = grpc.stream_stream_rpc_method_handler(
        connect, response_serializer=agent_pb2.ControlMessage.SerializeToString
    )
    return grpc.method_handlers_generic_handler(AGENT_SERVICE, {"Connect": handler})


def _check_held(hello: agent_pb2.Hello) -> None:
    if len(hello.held_works) > limits.MAX_HELD_WORKS:
        raise TooMuch(
            f"hello.heldWorks: more than the {limits.MAX_HELD_WORKS} works an agent may hold"
        )


class ControlPlane:
    """Everything one control plane runs, started and stopped together."""

    def __init__(self, settings: Settings) -> None:
        """Builds everything and connects to nothing; a bad encryption configuration
        raises :class:`encryption.ConfigError` here, before anything starts."""
        self.settings = settings
        self.encryption: encryption.Encryption | None = None
        if settings.encryption_provider_config is not None:
            self.encryption = encryption.Encryption(
                encryption.load_config(settings.encryption_provider_config)
            )
        self.etcd = Etcd(
            settings.etcd_endpoints,
            prefix=settings.etcd_prefix,
            transformer=self.encryption,
            tls=etcd.load_tls(settings.etcd_cafile, settings.etcd_certfile, settings.etcd_keyfile),
        )
        self.store = Store(self.etcd)
        self.shards = Shards(
            self.etcd,
            replica=settings.replica_id or default_replica_id(),
            count=settings.shards,
            lease_seconds=settings.shard_lease_seconds,
            address=settings.listen,
        )
        self.context = Context.build(settings, self.store, shards=self.shards)
        self.clusters = ClusterController(self.context)
        self.policy = PolicyController(self.context)
        self.scheduler = SchedulerController(self.context)
        self.binding = BindingController(self.context)
        self.dependencies = DependenciesController(self.context)
        self.namespaces = NamespaceController(self.context)
        self.work_status = WorkStatusController(self.context)
        self.execution = ExecutionController(self.context, report_status=self.work_status.report)
        self.shards.on_stream_lost(self.execution.stream_taken)
        self.registrar = registration.Registrar(
            self.store,
            validity=settings.agent_cert_validity,
            cluster_exists=lambda name: (
                self.context.clusters.get(kinds.MEMBER_CLUSTER.key("", name)) is not None
            ),
        )
        self.registrar.on_revoked(self.execution.revoke)
        self.binding_status = BindingStatusController(self.context)
        self.rebalancer = WorkloadRebalancerController(self.context)
        self.users = UserDirectory(self.etcd)
        self.audit = AuditLog(
            settings.audit_log_path,
            max_bytes=settings.audit_log_max_bytes,
            backups=settings.audit_log_backups,
            replica=self.shards.replica,
        )
        self.health = health.aio.HealthServicer()  # type: ignore[attr-defined]
        self.server: grpc.aio.Server | None = None
        self.port = 0
        self.agent_port = 0
        self.transport: certificates.TransportSecurity | None = None
        self.health_server: grpc.aio.Server | None = None
        self.health_port = 0
        self._tasks: list[asyncio.Task[None]] = []
        # Set when a long-lived task died: the process reports NOT_SERVING and exits 1.
        self.failed = asyncio.Event()
        self._stopping = False

    def _spawn(self, coroutine: Coroutine[Any, Any, None], name: str) -> None:
        """Run a long-lived task under supervision: if it ever ends, that is a crash."""
        task = asyncio.create_task(coroutine, name=name)
        task.add_done_callback(self._on_task_done)
        self._tasks.append(task)

    def _on_task_done(self, task: asyncio.Task[None]) -> None:
        if task.cancelled() or self.failed.is_set() or self._stopping:
            return
        error = task.exception() or RuntimeError("it returned, and it never should")
        log.critical(
            "%s stopped: %r; the control plane exits", task.get_name(), error, exc_info=error
        )
        self.failed.set()

    async def mark_not_serving(self) -> None:
        for name in ("", *SERVICE_NAMES):
            await self.health.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)

    def api_servicers(self) -> dict[str, object]:
        """One servicer per service of the contract, by the service's full name."""
        servicers: dict[str, object] = {}
        for served in api.API_VERSIONS:
            of_version: dict[str, object] = {
                **api.kind_services(self.store, served),
                "ResourceTemplateService": api.TemplateService(
                    self.store,
                    served,
                    templates=self.context.templates,
                    scopes=self.context.scopes,
                ),
                "ClusterAdminService": api.ClusterAdminService(
                    self.clusters, served, revoke=self.registrar.revoke
                ),
                "InfoService": api.InfoService(served),
            }
            for name, servicer in of_version.items():
                servicers[served.service(name).full_name] = servicer
        servicers[access.USER_SERVICE] = access.UserService(self.users)
        servicers[access.AUDIT_SERVICE] = access.AuditService(self.audit)
        servicers[STORAGE_ADMIN_SERVICE] = api.StorageAdminService(self.etcd, self.encryption)
        servicers[REGISTRATION_SERVICES["RegistrationService"].full_name] = (
            registration.RegistrationService(self.registrar)
        )
        servicers[REGISTRATION_SERVICES["BootstrapTokenService"].full_name] = (
            registration.BootstrapTokenService(self.registrar)
        )
        servicers[REGISTRATION_SERVICES["CertificateSigningRequestService"].full_name] = (
            registration.CertificateSigningRequestService(self.registrar)
        )
        servicers[AGENT_SERVICE] = AgentService(
            clusters=self.clusters,
            execution=self.execution,
            work_status=self.work_status,
            shards=self.shards,
            registrar=self.registrar,
        )
        return servicers

    def all_controllers(self) -> list[Controller]:
        return [
            self.clusters.controller,
            self.policy.controller,
            self.scheduler.controller,
            self.binding.controller,
            self.dependencies.controller,
            self.namespaces.controller,
            self.work_status.controller,
            self.binding_status.controller,
            self.rebalancer.controller,
        ]

    def controllers(self) -> list[Controller]:
        """The controllers this process runs (``--controllers``)."""
        every = self.all_controllers()
        chosen = select_controllers(self.settings.controllers, [c.name for c in every])
        return [c for c in every if c.name in chosen]

    async def start(self) -> None:
        settings = self.settings
        if self.encryption is not None:
            log.info("encryption at rest: %s", self.encryption.describe())
        await self.etcd.connect()
        admin_token = auth.load_or_create_admin_token(
            settings.admin_token_file or Path(".local/admin-token")
        )
        for informer in self.context.informers():
            self._spawn(informer.run(), f"informer-{informer.kind.name}")
        self._spawn(self.users.run(), "users")
        all_synced: asyncio.Future[Any] = asyncio.ensure_future(
            asyncio.gather(*(i.synced.wait() for i in self.context.informers()))
        )
        crashed: asyncio.Future[Any] = asyncio.ensure_future(self.failed.wait())
        await asyncio.wait({all_synced, crashed}, timeout=120, return_when="FIRST_COMPLETED")
        crashed.cancel()
        if not all_synced.done():
            all_synced.cancel()
            stuck = [i.kind.name for i in self.context.informers() if not i.synced.is_set()]
            raise RuntimeError(f"the caches of {', '.join(stuck)} did not fill")
        running = self.controllers()

        def ownership_changed(what: str) -> None:
            for controller in running:
                controller.ownership_changed(what)

        self.shards.add_listener(ownership_changed)
        self._spawn(self.shards.run(), "shards")
        self._spawn(self.registrar.watch_revocations(), "revocations")
        for controller in running:
            self._spawn(controller.run(), controller.name)

        interceptor = auth.AuthInterceptor(
            admin_token=admin_token,
            users=self.users,
            authenticate_cluster=self.clusters.authenticate,
            audit=self.audit,
            # Mutating calls over their identity's rate are refused before any servicer
            # runs (controlplane/ratelimit.py).
            limiter=ratelimit.RateLimitInterceptor(
                ratelimit.RateLimiter(settings.mutation_rate, settings.mutation_burst)
            ),
        )
        server = grpc.aio.server(
            interceptors=[interceptor],
            options=[
                ("grpc.max_receive_message_length", limits.MAX_RECEIVE_BYTES),
                ("grpc.max_send_message_length", limits.MAX_SEND_BYTES),
                ("grpc.keepalive_time_ms", 20000),
                ("grpc.keepalive_timeout_ms", 10000),
                ("grpc.http2.min_ping_interval_without_data_ms", 5000),
                ("grpc.keepalive_permit_without_calls", 1),
            ],
        )
        # The API's servicers get their requests as bytes and decode them themselves,
        # so that a request which is not valid protobuf is INVALID_ARGUMENT, not the
        # UNKNOWN the generated handlers answer (see api.service_handler).
        servicers = self.api_servicers()
        agent = servicers.pop(AGENT_SERVICE)
        pool = descriptor_pool.Default()
        server.add_generic_rpc_handlers(
            [
                api.service_handler(pool.FindServiceByName(name), servicer)
                for name, servicer in servicers.items()
            ]
        )
        server.add_generic_rpc_handlers([agent_handler(cast(AgentService, agent))])
        health_pb2_grpc.add_HealthServicer_to_server(self.health, server)
        reflection.enable_server_reflection(
            (*SERVICE_NAMES, health.SERVICE_NAME, reflection.SERVICE_NAME),
            server,
            # Duck-typed: reflection only calls the pool's Find* methods.
            pool=cast(descriptor_pool.DescriptorPool, MethodAwarePool(descriptor_pool.Default())),
        )
        if settings.insecure:
            self.port = server.add_insecure_port(settings.listen)
        else:
            transport = self.transport = await asyncio.to_thread(load_transport, settings)
            self.registrar.ca = transport.agent_ca
            self.port = server.add_secure_port(settings.listen, transport.api_credentials())
            # The same server, a second port: every client there shows a certificate
            # of the control plane's CA (mutual TLS), as agents with one do.
            agent_listen = agent_address(settings)
            self.agent_port = server.add_secure_port(agent_listen, transport.agent_credentials())
            if self.agent_port == 0:
                raise RuntimeError(f"cannot listen on {agent_listen}")
        if self.port == 0:
            raise RuntimeError(f"cannot listen on {settings.listen}")
        await server.start()
        self.server = server
        self._spawn(self._run_server(server), "grpc-server")
        if settings.health_listen:
            # The kubelet's gRPC probes speak plaintext only: the same health service,
            # alone, on a port of its own.
            probes = grpc.aio.server()
            health_pb2_grpc.add_HealthServicer_to_server(self.health, probes)
            self.health_port = probes.add_insecure_port(settings.health_listen)
            if self.health_port == 0:
                raise RuntimeError(f"cannot listen on {settings.health_listen}")
            await probes.start()
            self.health_server = probes
            self._spawn(self._run_server(probes), "health-server")
        for name in ("", *SERVICE_NAMES):
            await self.health.set(name, health_pb2.HealthCheckResponse.SERVING)
        if settings.metrics_listen:
            host, _, port = settings.metrics_listen.rpartition(":")
            start_http_server(int(port), addr=host or "127.0.0.1")
        metrics.BUILD_INFO.info({"version": VERSION})
        if self.transport is not None:
            log.info(
                "control plane %s serving TLS on port %d, agents (mutual TLS) on port %d; "
                "clients trust %s",
                VERSION,
                self.port,
                self.agent_port,
                self.transport.ca_file or "the CA of --tls-cert-file",
            )
        else:
            log.warning("serving PLAINTEXT (--insecure): for loopback development only")
        log.info("control plane %s serving on port %d", VERSION, self.port)

    async def _run_server(self, server: grpc.aio.Server) -> None:
        """The gRPC server, supervised like every other task: its ending on its own is a
        crash of the process."""
        await server.wait_for_termination()

    async def stop(self) -> None:
        self._stopping = True
        await self.health.enter_graceful_shutdown()
        if self.server is not None:
            await self.server.stop(self.settings.shutdown_grace)
        if self.health_server is not None:
            await self.health_server.stop(0)
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        # Leaving on purpose (a rolling restart): the shards and streams go to the other
        # replicas now, not when the lease would have expired.
        await self.shards.stop()
        await self.etcd.close()
        self.audit.close()


def load_transport(settings: Settings) -> certificates.TransportSecurity:
    return certificates.load(
        pki_dir=settings.pki_dir or DEFAULT_PKI_DIR,
        listen=settings.listen,
        sans=settings.tls_sans,
        tls_cert_file=settings.tls_cert_file,
        tls_key_file=settings.tls_key_file,
        client_ca_file=settings.client_ca_file,
        client_ca_key_file=settings.client_ca_key_file,
    )


def agent_address(settings: Settings) -> str:
    """``--agent-listen``, or by default the listen host with the next port."""
    if settings.agent_listen:
        return settings.agent_listen
    host, port = pki.split_host_port(settings.listen)
    host = f"[{host}]" if ":" in host else host
    return f"{host}:{port + 1 if port else 0}"


DEFAULT_PKI_DIR = Path(".local/pki")


def parse_args(argv: list[str] | None = None) -> Settings:
    parser = argparse.ArgumentParser(prog="archipel-controlplane", description=__doc__)
    parser.add_argument(
        "--etcd",
        action="append",
        required=True,
        help="etcd client URLs of one cluster: repeat the flag, or separate with commas",
    )
    parser.add_argument("--etcd-prefix", default="/archipel/")
    # kube-apiserver's names for the same three files.
    parser.add_argument(
        "--etcd-cafile",
        type=Path,
        metavar="FILE",
        help="the CA bundle that verifies etcd's certificates (PEM); https:// endpoints need it",
    )
    parser.add_argument(
        "--etcd-certfile",
        type=Path,
        metavar="FILE",
        help="the client certificate presented to etcd (PEM), for an etcd that runs with "
        "--client-cert-auth",
    )
    parser.add_argument(
        "--etcd-keyfile", type=Path, metavar="FILE", help="the key of --etcd-certfile (PEM)"
    )
    parser.add_argument("--listen", default="127.0.0.1:7443")
    parser.add_argument("--metrics-listen", default="")
    parser.add_argument(
        "--health-listen",
        default="",
        help="host:port for plaintext gRPC health checks only (Kubernetes probes)",
    )
    parser.add_argument("--admin-token-file", type=Path, default=Path(".local/admin-token"))
    parser.add_argument(
        "--audit-log-path",
        type=Path,
        help="write the audit log (JSON lines) to this file; default: none",
    )
    parser.add_argument(
        "--audit-log-maxsize",
        type=int,
        default=100,
        help="megabytes the audit log reaches before it is rotated",
    )
    parser.add_argument(
        "--audit-log-maxbackup", type=int, default=10, help="rotated audit logs to keep"
    )
    parser.add_argument(
        "--encryption-provider-config",
        type=Path,
        metavar="FILE",
        help="an EncryptionConfiguration (kube-apiserver's format): which resources are "
        "encrypted in etcd, and with which keys (docs/encryption.md)",
    )
    parser.add_argument(
        "--tls-cert-file",
        type=Path,
        help="the serving certificate (PEM); default: one issued at start by the CA in --pki-dir",
    )
    parser.add_argument("--tls-key-file", type=Path, help="the serving certificate's key")
    parser.add_argument(
        "--pki-dir",
        type=Path,
        default=DEFAULT_PKI_DIR,
        help="the control plane's CA (ca/ca.crt, ca/ca.key), created on first start; "
        "replicas share it",
    )
    parser.add_argument(
        "--tls-san",
        action="append",
        default=[],
        metavar="NAME[,NAME...]",
        help="more DNS names or IP addresses for the issued serving certificate (repeatable)",
    )
    parser.add_argument(
        "--client-ca-file",
        type=Path,
        help="the CA that issues and checks agents' client certificates (with "
        "--client-ca-key-file); default: the CA in --pki-dir",
    )
    parser.add_argument("--client-ca-key-file", type=Path)
    parser.add_argument(
        "--agent-listen",
        default="",
        help="host:port of the mutual-TLS port for agents with certificates (default: the "
        "--listen host, its port + 1)",
    )
    parser.add_argument(
        "--agent-cert-validity",
        default="30d",
        help="how long an agent's certificate is valid (90s, 15m, 12h, 30d); agents renew "
        "at 2/3 of it",
    )
    parser.add_argument(
        "--insecure",
        action="store_true",
        help="serve plaintext and no agent port; refused unless --listen is a loopback address",
    )
    parser.add_argument("--heartbeat-interval", type=float, default=10.0)
    parser.add_argument("--cluster-grace-period", type=float, default=40.0)
    parser.add_argument("--cluster-failure-threshold", type=float, default=30.0)
    parser.add_argument("--cluster-success-threshold", type=float, default=30.0)
    parser.add_argument(
        "--failover-grace-period",
        type=float,
        default=60.0,
        help="seconds a cluster stays not Ready before it gets NoExecute taints",
    )
    parser.add_argument(
        "--unhealthy-cluster-threshold",
        type=float,
        default=0.55,
        help="share of not-Ready clusters above which no cluster is tainted NoExecute",
    )
    parser.add_argument("--eviction-interval", type=float, default=10.0)
    parser.add_argument(
        "--no-default-failover-taints",
        dest="default_failover_taints",
        action="store_false",
        help="the built-in failover adds no NoExecute taints (its NoSchedule ones stay): "
        "ClusterTaintPolicies decide which clusters are evicted",
    )
    parser.add_argument("--graceful-eviction-timeout", type=float, default=600.0)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument(
        "--mutation-rate",
        type=float,
        default=limits.DEFAULT_MUTATION_RATE,
        help="mutating calls (Apply, Delete, Join, ...) one identity may make per second "
        "on average; more are refused with RESOURCE_EXHAUSTED and a retry hint (0: no limit)",
    )
    parser.add_argument(
        "--mutation-burst",
        type=int,
        default=limits.DEFAULT_MUTATION_BURST,
        help="mutating calls one identity may make at once above --mutation-rate",
    )
    parser.add_argument(
        "--replica-id",
        default="",
        help="this replica's name among the control plane's replicas (a pod's name); "
        "default: the host's name and a random suffix",
    )
    parser.add_argument(
        "--shards",
        type=int,
        default=DEFAULT_SHARDS,
        help="how many shards controller keys hash into; the same on every replica",
    )
    parser.add_argument(
        "--shard-lease-seconds",
        type=int,
        default=DEFAULT_LEASE_SECONDS,
        help="a replica that stops renewing its etcd lease loses its shards after this long",
    )
    parser.add_argument(
        "--controllers",
        default="*",
        help="comma-separated controllers to run: '*' for all, 'name' to add one, "
        "'-name' to leave one out (cluster, policy, scheduler, binding, dependencies, "
        "namespace, work-status, binding-status, workload-rebalancer)",
    )
    parser.add_argument(
        "--skipped-propagating-namespaces",
        action="append",
        default=[],
        metavar="REGEX[,REGEX...]",
        help="namespaces whose whole name matches one of these regular expressions are "
        "not sent to every member cluster by themselves (repeatable; comma-separated as "
        "Karmada's flag, CSV-quoted when a pattern holds a comma); kube-*, "
        "archipel-system, archipel-es-* and default never are",
    )
    parser.add_argument("--log-level", default="INFO")
    args = parser.parse_args(argv)
    controllers = tuple(c for c in args.controllers.split(",") if c.strip())
    try:
        select_controllers(controllers, CONTROLLER_NAMES)
    except Invalid as error:
        parser.error(f"--{error}")
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    if bool(args.tls_cert_file) != bool(args.tls_key_file):
        parser.error("--tls-cert-file and --tls-key-file go together")
    if args.audit_log_maxsize < 1:
        parser.error("--audit-log-maxsize must be at least 1 (megabyte)")
    if args.audit_log_maxbackup < 0:
        parser.error("--audit-log-maxbackup must not be negative")
    if bool(args.client_ca_file) != bool(args.client_ca_key_file):
        parser.error("--client-ca-file and --client-ca-key-file go together")
    etcd_endpoints = addresses.split(args.etcd)
    try:
        etcd.check_tls_flags(
            etcd_endpoints,
            ca_file=args.etcd_cafile,
            cert_file=args.etcd_certfile,
            key_file=args.etcd_keyfile,
        )
    except etcd.TLSError as error:
        # One line and exit code 1: nothing starts. (The files are read when the
        # control plane is built: see main.)
        print(f"{parser.prog}: {error}", file=sys.stderr)
        raise SystemExit(1) from None
    listen_host = args.listen.rpartition(":")[0]
    if args.insecure and not pki.is_loopback(listen_host):
        # One line and exit code 1: plaintext would carry the admin token and every
        # agent's credential over the network.
        print(
            f"{parser.prog}: --insecure serves plaintext, which is allowed on a loopback "
            f"address only, not on {limits.echo(listen_host)}: drop --insecure (TLS is on "
            "by default) or listen on 127.0.0.1",
            file=sys.stderr,
        )
        raise SystemExit(1)
    try:
        agent_cert_validity = durations.parse_duration(args.agent_cert_validity)
    except ValueError as error:
        print(f"{parser.prog}: --agent-cert-validity: {error}", file=sys.stderr)
        raise SystemExit(1) from None
    if not 0 <= args.mutation_rate < float("inf"):
        parser.error("--mutation-rate must be a number from 0 (0: no limit)")
    if args.mutation_rate and args.mutation_burst < 1:
        parser.error("--mutation-burst must be at least 1")
    if args.shards < 1:
        parser.error("--shards must be at least 1")
    if args.shard_lease_seconds < 2:
        parser.error("--shard-lease-seconds must be at least 2")
    try:
        skipped = matching.skipped_namespace_patterns(
            text for value in args.skipped_propagating_namespaces for text in _csv(value)
        )
    except Invalid as error:
        # One line and exit code 1, as the CLI answers bad input: nothing starts.
        print(f"{parser.prog}: --{error}", file=sys.stderr)
        raise SystemExit(1) from None
    return Settings(
        etcd_endpoints=etcd_endpoints,
        etcd_cafile=args.etcd_cafile,
        etcd_certfile=args.etcd_certfile,
        etcd_keyfile=args.etcd_keyfile,
        etcd_prefix=args.etcd_prefix,
        listen=args.listen,
        metrics_listen=args.metrics_listen,
        health_listen=args.health_listen,
        admin_token_file=args.admin_token_file,
        encryption_provider_config=args.encryption_provider_config,
        tls_cert_file=args.tls_cert_file,
        tls_key_file=args.tls_key_file,
        audit_log_path=args.audit_log_path,
        audit_log_max_bytes=args.audit_log_maxsize * 1024 * 1024,
        audit_log_backups=args.audit_log_maxbackup,
        pki_dir=args.pki_dir,
        tls_sans=tuple(name for value in args.tls_san for name in addresses.split(value)),
        client_ca_file=args.client_ca_file,
        client_ca_key_file=args.client_ca_key_file,
        insecure=args.insecure,
        agent_listen=args.agent_listen,
        agent_cert_validity=agent_cert_validity.total_seconds(),
        heartbeat_interval=args.heartbeat_interval,
        cluster_grace_period=args.cluster_grace_period,
        cluster_failure_threshold=args.cluster_failure_threshold,
        cluster_success_threshold=args.cluster_success_threshold,
        failover_grace_period=args.failover_grace_period,
        unhealthy_cluster_threshold=args.unhealthy_cluster_threshold,
        eviction_interval=args.eviction_interval,
        default_failover_taints=args.default_failover_taints,
        graceful_eviction_timeout=args.graceful_eviction_timeout,
        workers=args.workers,
        mutation_rate=args.mutation_rate,
        mutation_burst=args.mutation_burst,
        replica_id=args.replica_id,
        shards=args.shards,
        shard_lease_seconds=args.shard_lease_seconds,
        controllers=controllers,
        skipped_propagating_namespaces=skipped,
    )


def _csv(value: str) -> list[str]:
    """One value of a list flag: comma-separated, read as CSV, as Go's pflag reads
    Karmada's string slices (so ``"a{1,3}"``, quoted, is one pattern)."""
    try:
        rows = list(csv.reader([value]))
    except csv.Error as error:
        raise Invalid("skipped-propagating-namespaces", f"{limits.echo(value)}: {error}") from None
    return [text.strip() for row in rows for text in row if text.strip()]


async def serve(settings: Settings, plane: ControlPlane | None = None) -> int:
    """Run until SIGTERM (exit code 0), or until a supervised task dies: then report
    NOT_SERVING first, stop, and answer 1, so whatever supervises the process
    restarts it."""
    plane = plane if plane is not None else ControlPlane(settings)
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopping.set)
    await plane.start()
    print(
        f"archipel control plane listening on {settings.listen.rsplit(':', 1)[0]}:{plane.port}",
        flush=True,
    )
    await _first(stopping, plane.failed)
    if plane.failed.is_set():
        await plane.mark_not_serving()
    log.info("shutting down")
    await plane.stop()
    return 1 if plane.failed.is_set() else 0


async def _first(*events: asyncio.Event) -> None:
    waiters = [asyncio.create_task(event.wait()) for event in events]
    try:
        await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiter in waiters:
            waiter.cancel()


def main(argv: list[str] | None = None) -> int:
    settings = parse_args(argv)
    try:
        return _run(settings)
    except (encryption.ConfigError, etcd.TLSError) as error:
        # One line and exit code 1: nothing has started (a TLS handshake that etcd
        # refuses fails the first connection, before anything else runs).
        print(f"archipel-controlplane: {error}", file=sys.stderr)
        return 1


def _run(settings: Settings) -> int:
    profile = os.environ.get("ARCHIPEL_PROFILE")
    if not profile:
        return asyncio.run(serve(settings))
    # Benchmarks profile the whole process; the statistics are written on shutdown.
    import cProfile

    profiler = cProfile.Profile()
    profiler.enable()
    try:
        return asyncio.run(serve(settings))
    finally:
        profiler.disable()
        profiler.dump_stats(profile)


if __name__ == "__main__":
    sys.exit(main())
