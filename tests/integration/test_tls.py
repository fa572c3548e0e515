"""TLS by default: the control plane makes its own CA and serving certificate, clients
that trust the CA get through, plaintext does not, and plaintext (``--insecure``) is
refused anywhere but on loopback. An operator's own certificate replaces the issued one."""

from __future__ import annotations

import ssl
import stat
import subprocess
import sys
import threading
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from grpc_health.v1 import health_pb2, health_pb2_grpc

from archipel import pki
from archipel.client import Client, ClientError, Config
from archipel.core import kinds
from archipel.fleet import pki as fleet_pki
from archipel.fleet.controlplane import ControlPlaneProcess, ControlPlaneReplicas
from archipel.fleet.etcd import EtcdServer
from archipel.v1alpha2 import service_pb2

pytestmark = pytest.mark.servers


def _check_health(channel: grpc.Channel) -> None:
    response = health_pb2_grpc.HealthStub(channel).Check(
        health_pb2.HealthCheckRequest(), timeout=10
    )
    assert response.status == health_pb2.HealthCheckResponse.SERVING


def test_tls_is_on_by_default_with_a_ca_of_its_own(plane: ControlPlaneProcess) -> None:
    ca = plane.ca_file
    assert ca is not None and ca.exists()
    key = plane.pki_dir / "ca" / "ca.key"
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    with plane.channel() as channel:
        _check_health(channel)

    trusted = plane.client()
    assert trusted.list_objects(kinds.MEMBER_CLUSTER) == []
    trusted.close()

    # Plaintext to a TLS port gets nowhere, and neither does TLS without the CA: the
    # client says what to do about the second.
    with (
        grpc.insecure_channel(plane.address) as plaintext,
        pytest.raises(grpc.RpcError) as refused,
    ):
        health_pb2_grpc.HealthStub(plaintext).Check(health_pb2.HealthCheckRequest(), timeout=3)
    assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
    untrusting = Client(Config(plane.address, plane.admin_token))
    with pytest.raises(ClientError, match=r"cannot verify the control plane's certificate"):
        untrusting.call(
            untrusting.stub(kinds.MEMBER_CLUSTER).List,
            service_pb2.MemberClusterServiceListRequest(),
            timeout=3,
        )
    untrusting.close()


def test_the_serving_certificate_names_localhost_and_the_extra_names(
    etcd_server: EtcdServer, tmp_path: Path
) -> None:
    plane = ControlPlaneProcess(
        etcd_endpoint=etcd_server.endpoint,
        etcd_prefix="/tls-sans/",
        directory=tmp_path / "cp",
        extra_args=["--tls-san=archipel.example.com,10.9.8.7", "--tls-san=cp.internal"],
    )
    plane.start()
    try:
        # Asked for by name: the certificate must say "localhost" for this to verify.
        assert plane.ca_file is not None
        credentials = grpc.ssl_channel_credentials(plane.ca_file.read_bytes())
        with grpc.secure_channel(f"localhost:{plane.port}", credentials) as channel:
            _check_health(channel)
        served = ssl.get_server_certificate(("127.0.0.1", plane.port))
        names = (
            x509.load_pem_x509_certificate(served.encode())
            .extensions.get_extension_for_class(x509.SubjectAlternativeName)
            .value
        )
        dns = names.get_values_for_type(x509.DNSName)
        ips = [str(ip) for ip in names.get_values_for_type(x509.IPAddress)]
        assert {"localhost", "archipel.example.com", "cp.internal"} <= set(dns)
        assert {"127.0.0.1", "10.9.8.7"} <= set(ips)
    finally:
        plane.stop()


def test_an_operators_certificate_replaces_the_issued_one(
    etcd_server: EtcdServer, tmp_path: Path
) -> None:
    ca = fleet_pki.CertificateAuthority(tmp_path / "own-pki", common_name="operator-ca")
    serving = ca.issue_server("server", hosts=("127.0.0.1", "localhost"))
    plane = ControlPlaneProcess(
        etcd_endpoint=etcd_server.endpoint,
        etcd_prefix="/tls-test/",
        directory=tmp_path / "cp",
        tls=(serving.cert, serving.key, ca.cert_path),
    )
    plane.start()
    try:
        trusted = Client(Config(plane.address, plane.admin_token, ca.cert_path.read_bytes()))
        assert trusted.list_objects(kinds.MEMBER_CLUSTER) == []
        trusted.close()
        # The control plane's own CA is not what signed this certificate.
        own = Client(
            Config(plane.address, plane.admin_token, pki.ca_cert_path(plane.pki_dir).read_bytes())
        )
        with pytest.raises(ClientError, match="cannot verify"):
            own.list_objects(kinds.MEMBER_CLUSTER)
        own.close()
    finally:
        plane.stop()


@pytest.mark.parametrize("listen", ["0.0.0.0:0", "192.0.2.1:7443", "example.com:7443"])
def test_insecure_is_refused_off_loopback(listen: str, tmp_path: Path) -> None:
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "controlplane",
            "--etcd=http://127.0.0.1:1",
            f"--listen={listen}",
            "--insecure",
            f"--admin-token-file={tmp_path / 'token'}",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 1
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert "--insecure" in lines[0] and "loopback" in lines[0]
    assert not (tmp_path / "token").exists()


def test_insecure_serves_plaintext_on_loopback(etcd_server: EtcdServer, tmp_path: Path) -> None:
    plane = ControlPlaneProcess(
        etcd_endpoint=etcd_server.endpoint,
        etcd_prefix="/tls-insecure/",
        directory=tmp_path / "cp",
        insecure=True,
    )
    plane.start()
    try:
        assert plane.ca_file is None
        with grpc.insecure_channel(plane.address) as channel:
            _check_health(channel)
        client = plane.client()
        assert client.list_objects(kinds.MEMBER_CLUSTER) == []
        client.close()
        assert not plane.pki_dir.exists()
    finally:
        plane.stop()


def test_replicas_started_together_share_one_ca(etcd_server: EtcdServer, tmp_path: Path) -> None:
    replicas = ControlPlaneReplicas(
        3, etcd_endpoint=etcd_server.endpoint, etcd_prefix="/tls-replicas/", directory=tmp_path
    )
    # All at once, not first-then-others as start() does: they race for the CA (the
    # admin token is written first, its file is not what this test is about).
    (tmp_path / "admin-token").write_text("admin.shared\n")
    for replica in replicas.replicas:
        replica.launch()
    try:
        for replica in replicas.replicas:
            replica.wait_serving()
        for replica in replicas.replicas:
            with replica.channel() as channel:
                _check_health(channel)
        assert sorted(p.name for p in (tmp_path / "pki").iterdir()) == ["ca"]
    finally:
        replicas.stop()


def test_ensure_ca_has_one_winner(tmp_path: Path) -> None:
    """Many threads ensuring one CA at once all end up with the same one."""
    found: list[bytes] = []
    lock = threading.Lock()

    def ensure() -> None:
        ca = pki.ensure_ca(tmp_path, common_name="race")
        with lock:
            found.append(ca.cert_pem)

    threads = [threading.Thread(target=ensure) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(set(found)) == 1
    assert found[0] == pki.ca_cert_path(tmp_path).read_bytes()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ca"]
