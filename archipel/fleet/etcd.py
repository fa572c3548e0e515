"""Real etcd on loopback, for member clusters and for the control plane.

One etcd can serve many kube-apiservers (each under its own ``--etcd-prefix``), which
is how a fleet of members stays cheap: one etcd process instead of one per member.
:class:`EtcdCluster` runs several members forming one Raft cluster (three, by
default), for tests and a local setup that lose a member and keep working.

With ``tls``, etcd serves its clients TLS only and asks each for a client certificate
of its CA (``--client-cert-auth``), as production runs it: :class:`EtcdTLS` makes the
CA, etcd's serving certificate and one client certificate, which the control plane
(``--etcd-cafile``, ``--etcd-certfile``, ``--etcd-keyfile``) and the members'
kube-apiservers (the same flags) present. Members of a cluster still talk to each
other in plaintext, on loopback.
"""

from __future__ import annotations

import dataclasses
import json
import random
import socket
import ssl
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from archipel.fleet import pki
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


@dataclasses.dataclass(frozen=True)
class EtcdClientTLS:
    """What a client of an etcd serving TLS is given: the CA bundle that verifies
    etcd, and a client certificate and key (None: the client presents none)."""

    ca: Path
    cert: Path | None = None
    key: Path | None = None

    def flags(self) -> list[str]:
        """The control plane's flags for these files (kube-apiserver's names too)."""
        flags = [f"--etcd-cafile={self.ca}"]
        if self.cert is not None and self.key is not None:
            flags += [f"--etcd-certfile={self.cert}", f"--etcd-keyfile={self.key}"]
        return flags

    def ssl_context(self) -> ssl.SSLContext:
        """An SSL context for etcd's HTTP endpoints (/health, the JSON gateway)."""
        context = ssl.create_default_context(cafile=str(self.ca))
        if self.cert is not None and self.key is not None:
            context.load_cert_chain(str(self.cert), str(self.key))
        return context


@dataclasses.dataclass(frozen=True)
class EtcdTLS:
    """An etcd CA's certificate, etcd's serving certificate (for the loopback
    addresses and ``localhost``) and a client certificate, as files."""

    ca: Path
    server: pki.KeyPair
    client: pki.KeyPair
    gateway: pki.KeyPair

    @classmethod
    def issue(cls, directory: Path) -> EtcdTLS:
        """A new CA in ``directory`` and the certificates it signs (the keys mode 0600).
        The members of a cluster share one, as their clients see one etcd."""
        authority = pki.CertificateAuthority(directory, common_name="archipel-etcd-ca")
        return cls(
            ca=authority.cert_path,
            server=authority.issue_server("server", hosts=("127.0.0.1", "localhost", "::1")),
            # etcd's own user when etcd's authentication is on; its RBAC is not used here.
            client=authority.issue_client("client", user="archipel"),
            # etcd's JSON gateway (/v3/...) is a client of its own gRPC port, so it needs
            # a client certificate too: the serving one has the server usage only.
            gateway=authority.issue_client("gateway", user="etcd-gateway"),
        )

    @property
    def client_tls(self) -> EtcdClientTLS:
        return EtcdClientTLS(ca=self.ca, cert=self.client.cert, key=self.client.key)

    def server_flags(self) -> list[str]:
        return [
            f"--cert-file={self.server.cert}",
            f"--key-file={self.server.key}",
            f"--trusted-ca-file={self.ca}",
            "--client-cert-auth",
            f"--client-cert-file={self.gateway.cert}",
            f"--client-key-file={self.gateway.key}",
        ]


class EtcdServer:
    """etcd with its own data directory, client and peer ports.

    Alone by default; with ``initial_cluster`` (``name=peer-url`` pairs, this member's
    among them) and ``peer_port`` it is one member of a cluster (see
    :class:`EtcdCluster`). The data directory outlives :meth:`stop` and :meth:`kill`,
    so :meth:`start` again brings back the same member, not a new one.

    With ``tls`` (``True`` for certificates of its own, in ``<directory>/pki``), it
    serves TLS with client-certificate authentication on an ``https://`` endpoint;
    ``client_tls`` is what its clients are given.
    """

    def __init__(
        self,
        *,
        binary: Path,
        directory: Path,
        name: str = "etcd",
        peer_port: int | None = None,
        initial_cluster: str | None = None,
        cluster_token: str = "etcd-cluster",
        tls: EtcdTLS | bool = False,
    ) -> None:
        self.directory = directory
        self.name = name
        self.client_port = free_port()
        self.peer_port = peer_port or free_port()
        self.tls = EtcdTLS.issue(directory / "pki") if tls is True else tls or None
        scheme = "https" if self.tls is not None else "http"
        self.endpoint = f"{scheme}://127.0.0.1:{self.client_port}"
        self.peer_url = f"http://127.0.0.1:{self.peer_port}"
        self._ssl = self.tls.client_tls.ssl_context() if self.tls is not None else None
        peer = self.peer_url
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
                f"--initial-cluster={initial_cluster or f'{name}={peer}'}",
                f"--initial-cluster-token={cluster_token}",
                # Only read on the first start: a restarted member finds its data
                # directory and rejoins with what it holds.
                "--initial-cluster-state=new",
                # Test data is disposable: skipping fsync makes every write far cheaper.
                "--unsafe-no-fsync",
                "--auto-compaction-mode=periodic",
                "--auto-compaction-retention=5m",
                "--quota-backend-bytes=8589934592",
                "--log-level=warn",
                *(self.tls.server_flags() if self.tls is not None else []),
            ],
            log_path=directory / "etcd.log",
        )

    @property
    def client_tls(self) -> EtcdClientTLS | None:
        """The files a client needs (the control plane's ``etcd_tls``); None: plaintext."""
        return self.tls.client_tls if self.tls is not None else None

    def start(self, *, timeout: float = 30.0) -> None:
        self.launch()
        self.wait_ready(timeout=timeout)

    def launch(self) -> None:
        """Start the process without waiting: a member of a cluster is healthy only
        once a quorum runs, and a restarted one once it has caught up."""
        self.directory.mkdir(parents=True, exist_ok=True)
        self.process.start()

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
            with urllib.request.urlopen(
                f"{self.endpoint}/health", timeout=1, context=self._ssl
            ) as response:
                body = json.load(response)
        except (OSError, urllib.error.URLError, ValueError):
            return False
        return bool(body.get("health") == "true")

    def stop(self) -> None:
        self.process.stop()

    def kill(self) -> None:
        """SIGKILL, as a crash or a lost machine would: no clean shutdown."""
        self.process.kill()

    @property
    def running(self) -> bool:
        return self.process.running

    def __enter__(self) -> EtcdServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


class EtcdCluster:
    """``size`` etcd members on loopback forming one cluster, each a real process.

    Tests stop, kill (-9) and start members one by one; a member started again keeps
    its data directory and so rejoins as itself. ``endpoints`` lists every member's
    client URL, in member order, for the control plane's ``--etcd``.
    """

    def __init__(self, *, binary: Path, directory: Path, size: int = 3, tls: bool = False) -> None:
        """With ``tls``, every member serves TLS with client-certificate authentication,
        all with certificates of one CA (``<directory>/pki``)."""
        if size < 1:
            raise ValueError(f"an etcd cluster needs at least one member, not {size}")
        self.directory = directory
        peers = {f"etcd{i}": free_port() for i in range(size)}
        initial = ",".join(f"{name}=http://127.0.0.1:{port}" for name, port in peers.items())
        # A token of its own, so members of two clusters started by one test run can
        # never take each other's peers for their own.
        token = f"archipel-{directory.name}-{random.randrange(1 << 32):08x}"
        self.tls = EtcdTLS.issue(directory / "pki") if tls else None
        self.members = [
            EtcdServer(
                binary=binary,
                directory=directory / name,
                name=name,
                peer_port=port,
                initial_cluster=initial,
                cluster_token=token,
                tls=self.tls or False,
            )
            for name, port in peers.items()
        ]

    @property
    def endpoints(self) -> list[str]:
        return [member.endpoint for member in self.members]

    @property
    def client_tls(self) -> EtcdClientTLS | None:
        return self.tls.client_tls if self.tls is not None else None

    def __getitem__(self, index: int) -> EtcdServer:
        return self.members[index]

    def __iter__(self) -> Iterator[EtcdServer]:
        return iter(self.members)

    def __len__(self) -> int:
        return len(self.members)

    def start(self, *, timeout: float = 60.0) -> None:
        """Start every member at once (a new cluster needs a quorum to elect a
        leader, so none can be healthy before the others have started)."""
        try:
            for member in self.members:
                member.launch()
            self.wait_healthy(timeout=timeout)
        except BaseException:
            self.stop()
            raise

    def wait_healthy(self, *, timeout: float = 60.0) -> None:
        """Until every running member reports healthy (it has a leader)."""
        for member in self.members:
            if member.running:
                member.wait_ready(timeout=timeout)

    def healthy(self) -> bool:
        """Whether every member runs and reports healthy."""
        return all(member.running and member.healthy() for member in self.members)

    def leader(self) -> EtcdServer | None:
        """The member that leads now, by its own status, or None while there is none."""
        ids: dict[int, EtcdServer] = {}
        leader = 0
        for member in self.members:
            if not member.running:
                continue
            status = _post_json(f"{member.endpoint}/v3/maintenance/status", {}, context=member._ssl)
            if status is None:
                continue
            header = status.get("header", {})
            ids[int(header.get("member_id", 0))] = member
            leader = leader or int(status.get("leader", 0))
        return ids.get(leader)

    def stop(self) -> None:
        for member in reversed(self.members):
            member.stop()

    def __enter__(self) -> EtcdCluster:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _post_json(
    url: str, body: dict[str, Any], *, context: ssl.SSLContext | None = None
) -> dict[str, Any] | None:
    """POST to etcd's JSON gateway; None when the member does not answer."""
    request = urllib.request.Request(
        url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=2, context=context) as response:
            answer = json.load(response)
    except (OSError, urllib.error.URLError, ValueError):
        return None
    return answer if isinstance(answer, dict) else None
