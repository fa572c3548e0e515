"""A real control plane and real agents as processes, for tests, the demo and benchmarks.

They run exactly as an operator would run them (``python -m controlplane``,
``python -m agent``), so a test can kill, restart or pause either side.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from archipel.client import Client, Config
from archipel.fleet.etcd import free_port
from archipel.fleet.members import Member
from archipel.fleet.processes import ManagedProcess, ProcessError


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
        tls: tuple[Path, Path] | None = None,
        extra_args: Sequence[str] = (),
    ) -> None:
        """``tls`` is (certificate, key) to serve TLS instead of plaintext;
        ``extra_args`` are more of the control plane's flags (failover timings)."""
        self.directory = directory
        self.tls = tls
        self.port = port or free_port()
        self.metrics_port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.token_file = directory / "admin-token"
        argv = [
            sys.executable,
            "-m",
            "controlplane",
            f"--etcd={etcd_endpoint}",
            f"--etcd-prefix={etcd_prefix}",
            f"--listen={self.address}",
            f"--metrics-listen=127.0.0.1:{self.metrics_port}",
            f"--admin-token-file={self.token_file}",
            f"--heartbeat-interval={heartbeat_interval}",
            f"--cluster-grace-period={cluster_grace_period}",
        ]
        if tls is not None:
            argv += [f"--tls-cert-file={tls[0]}", f"--tls-key-file={tls[1]}"]
        argv += extra_args
        self.process = ManagedProcess(
            "controlplane", argv, log_path=directory / "controlplane.log", env=_env()
        )

    @property
    def admin_token(self) -> str:
        return self.token_file.read_text().strip()

    def serving(self) -> bool:
        if self.tls is not None:
            # Any answer over TLS, even a refusal, means the server is up.
            return self.process.running and "serving on port" in self.process.log_tail(50)
        with grpc.insecure_channel(self.address) as channel:
            try:
                response = health_pb2_grpc.HealthStub(channel).Check(
                    health_pb2.HealthCheckRequest(), timeout=1
                )
            except grpc.RpcError:
                return False
        return bool(response.status == health_pb2.HealthCheckResponse.SERVING)

    def start(self, *, timeout: float = 60.0) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        self.process.start()
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
        return Config(server=self.address, token=self.admin_token)

    def client(self) -> Client:
        return Client(self.config())

    def write_cli_config(self, path: Path) -> None:
        path.write_text(f"server: {self.address}\ntokenFile: {self.token_file.resolve()}\n")

    def join(self, member: Member, *, labels: dict[str, str] | None = None) -> Path:
        """Register a member cluster; returns the file holding its agent's token."""
        client = self.client()
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
        token_file = self.directory / "agents" / f"{member.name}.token"
        token_file.parent.mkdir(parents=True, exist_ok=True)
        token_file.write_text(token + "\n")
        token_file.chmod(0o600)
        return token_file


class AgentProcess:
    """The agent for one member cluster."""

    def __init__(
        self,
        *,
        control_plane: ControlPlaneProcess,
        member: Member,
        token_file: Path,
        heartbeat_interval: float | None = None,
        name: str = "agent",
        extra_args: Sequence[str] = (),
        servers: Sequence[str] = (),
    ) -> None:
        """``name`` tells apart several agents of one member (its log is
        ``agents/<member>-<name>.log`` then); ``extra_args`` are more of the agent's
        flags (``--leader-elect``, ``--identity``, the lease's timings); ``servers``
        are the control plane's addresses as the agent is told them (several, tried in
        turn), by default ``control_plane``'s own."""
        self.member = member
        argv = [
            sys.executable,
            "-m",
            "agent",
            f"--server={','.join(servers) if servers else control_plane.address}",
            f"--token-file={token_file}",
            f"--kubeconfig={member.kubeconfig}",
        ]
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
