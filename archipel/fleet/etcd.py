"""A real etcd server on loopback, for member clusters and for the control plane.

One etcd can serve many kube-apiservers (each under its own ``--etcd-prefix``), which
is how a fleet of members stays cheap: one etcd process instead of one per member.
"""

from __future__ import annotations

import json
import random
import socket
import time
import urllib.error
import urllib.request
from pathlib import Path

from archipel.fleet.processes import ManagedProcess, ProcessError

# Below Linux's ephemeral range (32768-60999): a port handed out here cannot be taken
# by some client's outgoing connection between the check and the server's bind.
_PORT_RANGE = (20000, 32000)
_handed_out: set[int] = set()


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nobody listens on now and this process never gave out."""
    while True:
        port = random.randrange(*_PORT_RANGE)
        if port in _handed_out:
            continue
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
        _handed_out.add(port)
        return port


class EtcdServer:
    """etcd with its own data directory, client and peer ports."""

    def __init__(self, *, binary: Path, directory: Path, name: str = "etcd") -> None:
        self.directory = directory
        self.client_port = free_port()
        self.peer_port = free_port()
        self.endpoint = f"http://127.0.0.1:{self.client_port}"
        peer = f"http://127.0.0.1:{self.peer_port}"
        self.process = ManagedProcess(
            name,
            [
                str(binary),
                f"--name={name}",
                f"--data-dir={directory / 'data'}",
                f"--listen-client-urls={self.endpoint}",
                f"--advertise-client-urls={self.endpoint}",
                f"--listen-peer-urls={peer}",
                f"--initial-advertise-peer-urls={peer}",
                f"--initial-cluster={name}={peer}",
                # Test data is disposable: skipping fsync makes every write far cheaper.
                "--unsafe-no-fsync",
                "--auto-compaction-mode=periodic",
                "--auto-compaction-retention=5m",
                "--quota-backend-bytes=8589934592",
                "--log-level=warn",
            ],
            log_path=directory / "etcd.log",
        )

    def start(self, *, timeout: float = 30.0) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        self.process.start()
        self.wait_ready(timeout=timeout)

    def wait_ready(self, *, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while True:
            self.process.check_running()
            if self.healthy():
                return
            if time.monotonic() > deadline:
                raise ProcessError(
                    f"etcd at {self.endpoint} not healthy after {timeout}s:\n"
                    f"{self.process.log_tail()}"
                )
            time.sleep(0.05)

    def healthy(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.endpoint}/health", timeout=1) as response:
                body = json.load(response)
        except (OSError, urllib.error.URLError, ValueError):
            return False
        return bool(body.get("health") == "true")

    def stop(self) -> None:
        self.process.stop()

    def __enter__(self) -> EtcdServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
