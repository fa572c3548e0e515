"""A real control plane and real agents as processes, for tests, the demo and benchmarks.

They run exactly as an operator would run them (``python -m controlplane``,
``python -m agent``), so a test can kill, restart or pause either side.
:class:`ControlPlaneReplicas` runs several control-plane processes on one etcd (or
etcd cluster), sharing one admin token file, as a Deployment with several replicas
would; agents are spread over them and told every address, to fail over.

By default a control plane encrypts Secrets in etcd: it is given an encryption
configuration (``encryption-config.yaml`` in its directory, one fresh random key, mode
0600, made on first start and kept), which replicas share.
"""

from __future__ import annotations

import base64
import os
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from archipel import pki
from archipel.client import Client, Config
from archipel.core import kinds
from archipel.fleet.etcd import EtcdClientTLS, free_port
from archipel.fleet.members import Member
from archipel.fleet.processes import ManagedProcess, ProcessError

ENCRYPTION_CONFIG = "encryption-config.yaml"


def encryption_config_text(
    keys: Sequence[tuple[str, bytes]], resources: Sequence[str] = ("secrets",)
) -> str:
    """An EncryptionConfiguration (the control plane's --encryption-provider-config):
    ``resources`` encrypted with AES-GCM, ``keys`` as (name, secret) in order (the first
    encrypts, all decrypt), and plaintext still read."""
    listed = "".join(
        f"            - name: {name}\n              secret: {base64.b64encode(secret).decode()}\n"
        for name, secret in keys
    )
    return (
        "apiVersion: apiserver.config.k8s.io/v1\n"
        "kind: EncryptionConfiguration\n"
        "resources:\n"
        f"  - resources: [{', '.join(resources)}]\n"
        "    providers:\n"
        "      - aesgcm:\n"
        "          keys:\n"
        f"{listed}"
        "      - identity: {}\n"
    )


def write_encryption_config(path: Path, text: str) -> None:
    """Write an encryption configuration readable by its owner only (it holds keys),
    replacing the file at once: a control plane starting meanwhile reads the old one
    or the new one, never half of one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.{os.getpid()}")
    descriptor = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w") as handle:
        handle.write(text)
    os.replace(partial, path)


def ensure_encryption_config(path: Path) -> None:
    """The configuration at ``path``, made with one fresh random 256-bit key (``key1``)
    encrypting Secrets when it is missing; an existing one is kept, so a restart reads
    what the last start wrote."""
    if not path.exists():
        write_encryption_config(path, encryption_config_text([("key1", os.urandom(32))]))


class ControlPlaneProcess:
    def __init__(
        self,
        *,
        etcd_endpoint: str,
        directory: Path,
        etcd_prefix: str = "/archipel/",
        port: int | None = None,
        heartbeat_interval: float = 10.0,
        cluster_grace_period: float = 40.0,
        tls: tuple[Path, Path, Path] | None = None,
        extra_args: Sequence[str] = (),
        name: str = "controlplane",
        token_file: Path | None = None,
        encrypt: bool = True,
        encryption_config: Path | None = None,
        insecure: bool = False,
        pki_dir: Path | None = None,
        agent_port: int | None = None,
        etcd_tls: EtcdClientTLS | None = None,
    ) -> None:
        """The control plane serves TLS with a certificate of its own CA, created in
        ``pki_dir`` (default ``<directory>/pki``, which replicas share); ``tls`` is
        (certificate, key, CA bundle) to serve the operator's certificate instead, and
        ``insecure`` serves plaintext (``--insecure``). ``extra_args`` are more of the
        control plane's flags (failover timings). ``name`` names the log
        (``<directory>/<name>.log``), so replicas sharing a directory keep theirs apart;
        ``token_file`` is the admin token's file, by default ``<directory>/admin-token``
        (replicas share one). With ``encrypt``, Secrets are encrypted in etcd by the
        configuration ``encryption_config`` (by default
        ``<directory>/encryption-config.yaml``, made with a fresh key when missing);
        without, nothing is. ``etcd_tls`` is what it is given to speak TLS to an
        ``https://`` etcd (``--etcd-cafile``, and ``--etcd-certfile`` and
        ``--etcd-keyfile`` when it has a client certificate)."""
        self.directory = directory
        self.etcd_prefix = etcd_prefix
        self.name = name
        self.tls = tls
        self.insecure = insecure
        self.pki_dir = pki_dir or directory / "pki"
        self.port = port or free_port()
        self.agent_port = agent_port or free_port()
        self.metrics_port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        # Agents with a certificate connect here (mutual TLS).
        self.agent_address = f"127.0.0.1:{self.agent_port}"
        self.token_file = token_file or directory / "admin-token"
        # Each replica writes its own audit log, as a pod of the chart does.
        self.audit_log = directory / f"{name}.audit.log"
        self.encryption_config: Path | None = None
        if encrypt:
            self.encryption_config = encryption_config or directory / ENCRYPTION_CONFIG
        argv = [
            sys.executable,
            "-m",
            "controlplane",
            f"--etcd={etcd_endpoint}",
            f"--etcd-prefix={etcd_prefix}",
            *(etcd_tls.flags() if etcd_tls is not None else []),
            f"--listen={self.address}",
            f"--metrics-listen=127.0.0.1:{self.metrics_port}",
            f"--admin-token-file={self.token_file}",
            f"--heartbeat-interval={heartbeat_interval}",
            f"--cluster-grace-period={cluster_grace_period}",
            f"--audit-log-path={self.audit_log}",
        ]
        if insecure:
            argv.append("--insecure")
        else:
            argv += [f"--pki-dir={self.pki_dir}", f"--agent-listen={self.agent_address}"]
        if tls is not None:
            argv += [f"--tls-cert-file={tls[0]}", f"--tls-key-file={tls[1]}"]
        if self.encryption_config is not None:
            argv.append(f"--encryption-provider-config={self.encryption_config}")
        argv += extra_args
        self.process = ManagedProcess(name, argv, log_path=directory / f"{name}.log", env=_env())

    @property
    def admin_token(self) -> str:
        return self.token_file.read_text().strip()

    @property
    def ca_file(self) -> Path | None:
        """The CA bundle clients verify the control plane with (None: plaintext)."""
        if self.insecure:
            return None
        return self.tls[2] if self.tls is not None else pki.ca_cert_path(self.pki_dir)

    def channel_credentials(self) -> grpc.ChannelCredentials | None:
        ca = self.ca_file
        if ca is None:
            return None
        return grpc.ssl_channel_credentials(root_certificates=ca.read_bytes())

    def channel(self, *, options: Sequence[tuple[str, Any]] = ()) -> grpc.Channel:
        """A channel to this control plane's API port, trusting its CA."""
        return open_channel(self.address, self.ca_file, options=options)

    def aio_channel(self, *, options: Sequence[tuple[str, Any]] = ()) -> grpc.aio.Channel:
        """The same as :meth:`channel`, for asyncio."""
        return open_aio_channel(self.address, self.ca_file, options=options)

    def serving(self) -> bool:
        if self.ca_file is not None and not self.ca_file.exists():
            return False  # the CA comes first: the process has not got that far
        with self.channel() as channel:
            try:
                response = health_pb2_grpc.HealthStub(channel).Check(
                    health_pb2.HealthCheckRequest(), timeout=1
                )
            except grpc.RpcError:
                return False
        return bool(response.status == health_pb2.HealthCheckResponse.SERVING)

    def start(self, *, timeout: float = 60.0) -> None:
        self.launch()
        self.wait_serving(timeout=timeout)

    def launch(self) -> None:
        """Start the process without waiting for it to serve (:meth:`wait_serving`),
        so several replicas can come up side by side."""
        self.directory.mkdir(parents=True, exist_ok=True)
        if self.encryption_config is not None:
            ensure_encryption_config(self.encryption_config)
        self.process.start()

    def wait_serving(self, *, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while not self.serving():
            self.process.check_running()
            if time.monotonic() > deadline:
                raise ProcessError(
                    f"control plane not serving after {timeout}s:\n{self.process.log_tail()}"
                )
            time.sleep(0.1)

    def stop(self) -> None:
        self.process.stop(timeout=15)

    def restart(self) -> None:
        self.stop()
        self.start()

    def config(self) -> Config:
        ca = self.ca_file
        return Config(
            server=self.address,
            token=self.admin_token,
            tls_ca=ca.read_bytes() if ca is not None else None,
            insecure=ca is None,
        )

    def client(self) -> Client:
        return Client(self.config())

    def write_cli_config(self, path: Path) -> None:
        write_cli_config(path, self.address, self.token_file, self.ca_file)

    def join(self, member: Member, *, labels: dict[str, str] | None = None) -> Path:
        """Register a member cluster; returns the file holding its agent's token."""
        return _join(self.client(), self.directory, member, labels)

    def bootstrap(
        self,
        member: Member,
        *,
        labels: dict[str, str] | None = None,
        bound: bool = True,
        ttl_seconds: int = 3600,
    ) -> Path:
        """The documented flow's first step: the member's MemberCluster (with its
        labels) and a bootstrap token for its agent, bound to it unless ``bound`` is
        false (then the agent's request waits for archipel csr approve). Returns the
        token's file (mode 0600)."""
        return _bootstrap(self.client(), self.directory, member, labels, bound, ttl_seconds)


def open_channel(
    address: str, ca_file: Path | None, *, options: Sequence[tuple[str, Any]] = ()
) -> grpc.Channel:
    """A channel to a control plane: TLS trusting ``ca_file``, plaintext when None."""
    if ca_file is None:
        return grpc.insecure_channel(address, options=options)
    credentials = grpc.ssl_channel_credentials(root_certificates=ca_file.read_bytes())
    return grpc.secure_channel(address, credentials, options=options)


def open_aio_channel(
    address: str, ca_file: Path | None, *, options: Sequence[tuple[str, Any]] = ()
) -> grpc.aio.Channel:
    """:func:`open_channel` for asyncio."""
    if ca_file is None:
        return grpc.aio.insecure_channel(address, options=options)
    credentials = grpc.ssl_channel_credentials(root_certificates=ca_file.read_bytes())
    return grpc.aio.secure_channel(address, credentials, options=options)


def write_cli_config(path: Path, server: str, token_file: Path, ca_file: Path | None) -> None:
    """The CLI's config file: where the control plane is, the admin token and the CA."""
    lines = [f"server: {server}", f"tokenFile: {token_file.resolve()}"]
    if ca_file is not None:
        lines.append(f"tlsCaFile: {ca_file.resolve()}")
    else:
        lines.append("insecure: true")
    path.write_text("\n".join(lines) + "\n")


def _join(client: Client, directory: Path, member: Member, labels: dict[str, str] | None) -> Path:
    """Register ``member`` through ``client`` (closed after) and write its agent's token
    to ``<directory>/agents/<member>.token``."""
    try:
        _, token = client.join(
            member.name,
            labels={**member.spec.labels, **(labels or {})},
            provider=member.spec.provider,
            region=member.spec.region,
            zone=member.spec.zone,
            rotate=True,
        )
    finally:
        client.close()
    token_file = directory / "agents" / f"{member.name}.token"
    token_file.parent.mkdir(parents=True, exist_ok=True)
    token_file.write_text(token + "\n")
    token_file.chmod(0o600)
    return token_file


def _bootstrap(
    client: Client,
    directory: Path,
    member: Member,
    labels: dict[str, str] | None,
    bound: bool,
    ttl_seconds: int,
) -> Path:
    spec = member.spec
    try:
        client.apply_document(
            {
                "apiVersion": kinds.MEMBER_CLUSTER.api_version,
                "kind": "MemberCluster",
                "metadata": {"name": member.name, "labels": {**spec.labels, **(labels or {})}},
                "spec": {
                    "syncMode": "Pull",
                    "provider": spec.provider,
                    "region": spec.region,
                    "zone": spec.zone,
                    "zones": [spec.zone] if spec.zone else [],
                },
            }
        )
        token = client.create_token(
            ttl_seconds=ttl_seconds, cluster=member.name if bound else ""
        ).token
    finally:
        client.close()
    token_file = directory / "agents" / f"{member.name}.bootstrap-token"
    pki.write_file(token_file, (token + "\n").encode(), private=True)
    return token_file


def rotated(addresses: Sequence[str], start: int) -> list[str]:
    """``addresses`` beginning at ``start`` (mod their count) and wrapping around: the
    server list of the ``start``-th agent, so agents spread over the replicas and each
    fails over to all the others."""
    if not addresses:
        return []
    first = start % len(addresses)
    return [*addresses[first:], *addresses[:first]]


class ControlPlaneReplicas:
    """``count`` control-plane processes on one etcd, one admin token file between them.

    With one replica it is exactly one :class:`ControlPlaneProcess` as before (log
    ``controlplane.log``); with more, replica ``i`` logs to ``controlplane-<i>.log`` in
    the same directory, and serves on a port and a metrics port of its own. The client
    config names every replica, so a client fails over between them.
    """

    def __init__(
        self,
        count: int,
        *,
        etcd_endpoint: str,
        directory: Path,
        etcd_prefix: str = "/archipel/",
        ports: Sequence[int | None] = (),
        heartbeat_interval: float = 10.0,
        cluster_grace_period: float = 40.0,
        tls: tuple[Path, Path, Path] | None = None,
        extra_args: Sequence[str] = (),
        replica_args: Callable[[int], Sequence[str]] | None = None,
        encrypt: bool = True,
        insecure: bool = False,
        agent_ports: Sequence[int | None] = (),
        etcd_tls: EtcdClientTLS | None = None,
    ) -> None:
        """``ports`` are the replicas' gRPC ports in order (missing or None: any free
        port), ``agent_ports`` their mutual-TLS ports for agents (the same);
        ``extra_args`` go to every replica, and ``replica_args(i)`` to replica ``i``
        only, after them (by default :meth:`replica_id_args`, which names each replica
        in the shards' logs and keys: ``replica-<i>``). With ``encrypt`` every replica
        reads one encryption configuration, ``<directory>/encryption-config.yaml``.
        ``etcd_tls``: as :class:`ControlPlaneProcess` takes it, for every replica."""
        if replica_args is None:
            replica_args = self.replica_id_args
        if count < 1:
            raise ValueError("a control plane needs at least one replica")
        self.directory = directory
        self.token_file = directory / "admin-token"
        self.encryption_config = directory / ENCRYPTION_CONFIG if encrypt else None
        self.replicas = [
            ControlPlaneProcess(
                etcd_endpoint=etcd_endpoint,
                directory=directory,
                etcd_prefix=etcd_prefix,
                port=ports[index] if index < len(ports) else None,
                heartbeat_interval=heartbeat_interval,
                cluster_grace_period=cluster_grace_period,
                tls=tls,
                extra_args=[*extra_args, *replica_args(index)],
                name="controlplane" if count == 1 else f"controlplane-{index}",
                token_file=self.token_file,
                encrypt=encrypt,
                encryption_config=self.encryption_config,
                insecure=insecure,
                pki_dir=directory / "pki",
                agent_port=agent_ports[index] if index < len(agent_ports) else None,
                etcd_tls=etcd_tls,
            )
            for index in range(count)
        ]

    @staticmethod
    def replica_id_args(index: int) -> tuple[str, ...]:
        """The flags that name replica ``index``: ``replica-<index>``."""
        return (f"--replica-id=replica-{index}",)

    def __len__(self) -> int:
        return len(self.replicas)

    def __getitem__(self, index: int) -> ControlPlaneProcess:
        return self.replicas[index]

    @property
    def addresses(self) -> list[str]:
        return [replica.address for replica in self.replicas]

    @property
    def server(self) -> str:
        """Every replica's address, comma-separated, as flags and configs take them."""
        return ",".join(self.addresses)

    @property
    def admin_token(self) -> str:
        return self.token_file.read_text().strip()

    def servers_for(self, index: int) -> list[str]:
        """The server list of the ``index``-th agent: replica ``index mod count`` first."""
        return rotated(self.addresses, index)

    @property
    def ca_file(self) -> Path | None:
        return self.replicas[0].ca_file

    @property
    def agent_addresses(self) -> list[str]:
        return [replica.agent_address for replica in self.replicas]

    def start(self, *, timeout: float = 60.0) -> None:
        # The first replica creates the shared token file; were several to start
        # together, each could write a token of its own over the others'. The shared
        # encryption configuration is made first, for the same reason. (The CA they
        # share is safe either way: see archipel.pki.ensure_ca.)
        if self.encryption_config is not None:
            ensure_encryption_config(self.encryption_config)
        first, *others = self.replicas
        first.start(timeout=timeout)
        for replica in others:
            replica.launch()
        for replica in others:
            replica.wait_serving(timeout=timeout)

    def stop(self) -> None:
        for replica in self.replicas:
            replica.stop()

    def config(self) -> Config:
        ca = self.ca_file
        return Config(
            server=self.server,
            token=self.admin_token,
            tls_ca=ca.read_bytes() if ca is not None else None,
            insecure=ca is None,
        )

    def client(self) -> Client:
        return Client(self.config())

    def write_cli_config(self, path: Path) -> None:
        write_cli_config(path, self.server, self.token_file, self.ca_file)

    def join(self, member: Member, *, labels: dict[str, str] | None = None) -> Path:
        """Register a member cluster through any replica that answers; returns the
        file holding its agent's token."""
        return _join(self.client(), self.directory, member, labels)

    def bootstrap(self, member: Member, *, labels: dict[str, str] | None = None) -> Path:
        """As :meth:`ControlPlaneProcess.bootstrap`, through any replica."""
        return _bootstrap(self.client(), self.directory, member, labels, True, 3600)

    def agent(
        self,
        index: int,
        *,
        member: Member,
        token_file: Path | None = None,
        bootstrap_token_file: Path | None = None,
        heartbeat_interval: float | None = None,
        name: str = "agent",
        extra_args: Sequence[str] = (),
    ) -> AgentProcess:
        """The ``index``-th agent: it starts on replica ``index mod count`` and fails
        over to the others (the other arguments as :class:`AgentProcess` takes them)."""
        return AgentProcess(
            control_plane=self.replicas[index % len(self.replicas)],
            member=member,
            token_file=token_file,
            bootstrap_token_file=bootstrap_token_file,
            heartbeat_interval=heartbeat_interval,
            name=name,
            extra_args=extra_args,
            servers=self.servers_for(index),
            agent_servers=rotated(self.agent_addresses, index),
        )


class AgentProcess:
    """The agent for one member cluster."""

    def __init__(
        self,
        *,
        control_plane: ControlPlaneProcess,
        member: Member,
        token_file: Path | None = None,
        heartbeat_interval: float | None = None,
        name: str = "agent",
        extra_args: Sequence[str] = (),
        servers: Sequence[str] = (),
        bootstrap_token_file: Path | None = None,
        agent_servers: Sequence[str] = (),
    ) -> None:
        """``name`` tells apart several agents of one member (its log is
        ``agents/<member>-<name>.log`` then); ``extra_args`` are more of the agent's
        flags (``--leader-elect``, ``--identity``, the lease's timings); ``servers``
        are the control plane's addresses as the agent is told them (several, tried in
        turn), by default ``control_plane``'s own.

        With ``token_file`` (archipel join's token) the agent streams on the API port;
        without it, it uses the certificate in its identity Secret, registering first
        with ``bootstrap_token_file`` when it has none, and streams on the mutual-TLS
        ``agent_servers`` (by default ``control_plane``'s). Tokens go in files: the
        command line holds no secret."""
        self.member = member
        argv = [
            sys.executable,
            "-m",
            "agent",
            f"--server={','.join(servers) if servers else control_plane.address}",
            f"--kubeconfig={member.kubeconfig}",
        ]
        if token_file is not None:
            argv.append(f"--token-file={token_file}")
        else:
            argv += [
                f"--cluster={member.name}",
                "--agent-server=" + ",".join(agent_servers or [control_plane.agent_address]),
            ]
            if bootstrap_token_file is not None:
                argv.append(f"--bootstrap-token-file={bootstrap_token_file}")
        if control_plane.ca_file is not None:
            argv.append(f"--tls-ca-file={control_plane.ca_file}")
        elif control_plane.insecure:
            argv.append("--insecure")
        if heartbeat_interval is not None:
            argv.append(f"--heartbeat-interval={heartbeat_interval}")
        argv += extra_args
        log_name = member.name if name == "agent" else f"{member.name}-{name}"
        self.log_path = control_plane.directory / "agents" / f"{log_name}.log"
        self.process = ManagedProcess(
            f"{member.name}/{name}", argv, log_path=self.log_path, env=_env()
        )

    def start(self) -> None:
        self.process.start()

    def stop(self) -> None:
        self.process.stop()

    def kill(self) -> None:
        self.process.kill()

    def pause(self) -> None:
        """SIGSTOP: the agent holds its connections but does nothing."""
        self.process.pause()

    def resume(self) -> None:
        self.process.resume()


def _env() -> dict[str, str]:
    env = dict(os.environ)
    # The children import the project from this checkout, installed or not.
    root = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH", "")) if p)
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env
