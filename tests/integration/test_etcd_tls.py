"""The control plane on an etcd that serves TLS only and asks every client for a
certificate of its CA (``--client-cert-auth``), as kube-apiserver runs on one: with
``--etcd-cafile``, ``--etcd-certfile`` and ``--etcd-keyfile`` it serves; without the
client certificate, or trusting the wrong CA, it stops at once with one line naming
the endpoint and the file, and starts nothing."""

from __future__ import annotations

import asyncio
import os
import ssl
import subprocess
import sys
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import etcd3aio
import pytest
from etcd3aio.errors import EtcdError

from archipel import structs
from archipel.fleet import pki as fleet_pki
from archipel.fleet import tools
from archipel.fleet.controlplane import ControlPlaneProcess
from archipel.fleet.etcd import EtcdClientTLS, EtcdServer, EtcdTLS
from archipel.v1alpha1 import service_pb2
from controlplane.etcd import Etcd, Put, TLSError, load_tls
from tests.integration.agents import Api

pytestmark = pytest.mark.servers

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def tls_etcd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EtcdServer]:
    """etcd serving TLS with client-certificate authentication, of the module's own."""
    server = EtcdServer(
        binary=tools.ensure("etcd").etcd, directory=tmp_path_factory.mktemp("etcd-tls"), tls=True
    )
    server.start()
    yield server
    server.stop()


def _client_tls(etcd: EtcdServer) -> EtcdClientTLS:
    assert etcd.client_tls is not None
    return etcd.client_tls


def _address(etcd: EtcdServer) -> tuple[str, int]:
    return "127.0.0.1", etcd.client_port


def test_the_etcd_refuses_plaintext_and_clients_without_a_certificate(
    tls_etcd: EtcdServer,
) -> None:
    """The rest of this module is not vacuous: this etcd speaks nothing but TLS, and
    only to a client with a certificate of its CA."""
    files = _client_tls(tls_etcd)
    assert tls_etcd.endpoint.startswith("https://")
    host, port = _address(tls_etcd)

    # Plaintext HTTP: no health, only a closed connection.
    with pytest.raises((urllib.error.URLError, ConnectionError)):
        urllib.request.urlopen(f"http://{host}:{port}/health", timeout=5)

    # Plaintext gRPC, as the control plane spoke to etcd before: no answer.
    async def plaintext_grpc() -> None:
        client = etcd3aio.Etcd3Client([f"{host}:{port}"], rpc_max_attempts=1)
        await client.connect()
        try:
            assert client.kv is not None
            await client.kv.get(b"/", timeout=5)
        finally:
            await client.close()

    with pytest.raises(EtcdError):
        asyncio.run(plaintext_grpc())

    # TLS trusting etcd's CA, without a client certificate: the handshake is refused
    # (TLS 1.3: the client learns it on its first read, as an alert or a closed socket).
    anonymous = ssl.create_default_context(cafile=str(files.ca))
    with pytest.raises((urllib.error.URLError, ssl.SSLError, ConnectionError)):
        urllib.request.urlopen(f"https://{host}:{port}/health", timeout=5, context=anonymous)

    # With the client certificate: healthy.
    assert tls_etcd.healthy()


async def test_the_control_planes_client_speaks_tls_under_the_endpoints_name(
    tls_etcd: EtcdServer,
) -> None:
    """IP address or host name, the member's certificate is verified for the name the
    endpoint gives, and what is written reads back."""
    files = _client_tls(tls_etcd)
    tls = load_tls(files.ca, files.cert, files.key)
    prefix = f"/tls-{uuid.uuid4().hex[:8]}/"
    for endpoint in (tls_etcd.endpoint, tls_etcd.endpoint.replace("127.0.0.1", "localhost")):
        etcd = Etcd([endpoint], prefix=prefix, tls=tls)
        await etcd.connect()
        try:
            revision = await etcd.current_revision()
            assert revision > 0
            key = f"from-{endpoint.split('://')[1].split(':')[0]}"
            assert await etcd.commit([Put(key, b"v", 0)]) is not None
            found = await etcd.get(key)
            assert found is not None and found.value == b"v"
        finally:
            await etcd.close()


async def test_a_certificate_for_another_name_is_refused_naming_the_host(
    tmp_path: Path,
) -> None:
    """An etcd whose certificate lists 127.0.0.1 only, reached as localhost: refused at
    connect, in one line naming the endpoint and the host."""
    authority = fleet_pki.CertificateAuthority(tmp_path / "pki", common_name="narrow-ca")
    narrow = EtcdTLS(
        ca=authority.cert_path,
        server=authority.issue_server("server", hosts=("127.0.0.1",)),
        client=authority.issue_client("client", user="archipel"),
        gateway=authority.issue_client("gateway", user="etcd-gateway"),
    )
    server = EtcdServer(binary=tools.ensure("etcd").etcd, directory=tmp_path / "etcd", tls=narrow)
    server.start()
    try:
        endpoint = server.endpoint.replace("127.0.0.1", "localhost")
        files = narrow.client_tls
        etcd = Etcd([endpoint], tls=load_tls(files.ca, files.cert, files.key))
        with pytest.raises(TLSError) as refused:
            await etcd.connect()
        assert str(refused.value) == (
            f"the certificate of etcd at {endpoint} is not for localhost: its "
            "subjectAltNames must name the host the --etcd endpoint names"
        )
    finally:
        server.stop()


def test_a_control_plane_serves_on_etcd_with_client_certificates(
    tls_etcd: EtcdServer, tmp_path: Path
) -> None:
    files = _client_tls(tls_etcd)
    prefix = f"/plane-tls-{uuid.uuid4().hex[:8]}/"
    plane = ControlPlaneProcess(
        etcd_endpoint=tls_etcd.endpoint, etcd_prefix=prefix, directory=tmp_path, etcd_tls=files
    )
    assert f"--etcd-cafile={files.ca}" in plane.process.argv
    assert f"--etcd-certfile={files.cert}" in plane.process.argv
    assert f"--etcd-keyfile={files.key}" in plane.process.argv
    plane.start()
    try:

        async def apply_and_get() -> dict[str, object]:
            api = Api(plane)
            try:
                await api.apply(
                    {
                        "apiVersion": "v1",
                        "kind": "ConfigMap",
                        "metadata": {"name": "over-tls", "namespace": "default"},
                        "data": {"etcd": "tls"},
                    }
                )
                got = await api.templates.Get(
                    service_pb2.TemplateGetRequest(
                        api_version="v1", kind="ConfigMap", namespace="default", name="over-tls"
                    ),
                    metadata=api.metadata,
                )
                return structs.from_struct(got.manifest)
            finally:
                await api.close()

        manifest = asyncio.run(apply_and_get())
        assert manifest["data"] == {"etcd": "tls"}
    finally:
        plane.stop()

    # It is in that etcd, under the plane's prefix (read over TLS here too).
    async def stored_keys() -> list[str]:
        etcd = Etcd(
            [tls_etcd.endpoint], prefix=prefix, tls=load_tls(files.ca, files.cert, files.key)
        )
        await etcd.connect()
        try:
            items, _, _ = await etcd.range("")
            return [item.key for item in items]
        finally:
            await etcd.close()

    assert any("over-tls" in key for key in asyncio.run(stored_keys()))


def _run_control_plane(tmp_path: Path, *flags: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "controlplane",
            "--listen=127.0.0.1:0",
            f"--admin-token-file={tmp_path / 'admin-token'}",
            f"--pki-dir={tmp_path / 'pki'}",
            *flags,
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env=env,
    )


def _last_line(done: subprocess.CompletedProcess[str]) -> str:
    # gRPC's core logs the TLS alert on stderr itself; the control plane's own answer
    # is the last line.
    return done.stderr.strip().splitlines()[-1]


def test_a_control_plane_without_the_client_certificate_is_refused_at_start(
    tls_etcd: EtcdServer, tmp_path: Path
) -> None:
    files = _client_tls(tls_etcd)
    done = _run_control_plane(tmp_path, f"--etcd={tls_etcd.endpoint}", f"--etcd-cafile={files.ca}")
    assert done.returncode == 1, done.stderr
    assert _last_line(done) == (
        f"archipel-controlplane: etcd at {tls_etcd.endpoint} refused a connection without a "
        "client certificate (it runs with --client-cert-auth): pass --etcd-certfile and "
        "--etcd-keyfile"
    )
    # Nothing started: the admin token is made after etcd answers.
    assert not (tmp_path / "admin-token").exists()


def test_a_control_plane_trusting_the_wrong_ca_is_refused_at_start(
    tls_etcd: EtcdServer, tmp_path: Path
) -> None:
    files = _client_tls(tls_etcd)
    other = fleet_pki.CertificateAuthority(tmp_path / "other", common_name="not-etcds-ca")
    done = _run_control_plane(
        tmp_path,
        f"--etcd={tls_etcd.endpoint}",
        f"--etcd-cafile={other.cert_path}",
        f"--etcd-certfile={files.cert}",
        f"--etcd-keyfile={files.key}",
    )
    assert done.returncode == 1, done.stderr
    line = _last_line(done)
    assert line.startswith(
        f"archipel-controlplane: cannot verify the certificate of etcd at {tls_etcd.endpoint} "
        f"with --etcd-cafile {other.cert_path} ("
    ), line
    assert line.endswith("): pass the CA that signed etcd's serving certificate"), line
    assert not (tmp_path / "admin-token").exists()


def test_a_client_certificate_of_another_ca_is_refused_at_start(
    tls_etcd: EtcdServer, tmp_path: Path
) -> None:
    files = _client_tls(tls_etcd)
    other = fleet_pki.CertificateAuthority(tmp_path / "other", common_name="not-etcds-ca")
    stranger = other.issue_client("stranger", user="archipel")
    done = _run_control_plane(
        tmp_path,
        f"--etcd={tls_etcd.endpoint}",
        f"--etcd-cafile={files.ca}",
        f"--etcd-certfile={stranger.cert}",
        f"--etcd-keyfile={stranger.key}",
    )
    assert done.returncode == 1, done.stderr
    assert _last_line(done) == (
        f"archipel-controlplane: etcd at {tls_etcd.endpoint} refused the client certificate "
        f"of --etcd-certfile {stranger.cert}: it must be signed by a CA in etcd's "
        "--trusted-ca-file"
    )


def test_https_to_a_plaintext_etcd_says_so(etcd_server: EtcdServer, tmp_path: Path) -> None:
    """The other way round: TLS flags for an etcd that serves plaintext."""
    files = EtcdTLS.issue(tmp_path / "pki-etcd").client_tls
    endpoint = etcd_server.endpoint.replace("http://", "https://")
    done = _run_control_plane(
        tmp_path,
        f"--etcd={endpoint}",
        f"--etcd-cafile={files.ca}",
        f"--etcd-certfile={files.cert}",
        f"--etcd-keyfile={files.key}",
    )
    assert done.returncode == 1, done.stderr
    line = _last_line(done)
    assert line.startswith(
        f"archipel-controlplane: the TLS handshake with etcd at {endpoint} failed ("
    ), line
    assert line.endswith("If it serves plaintext, name it http://"), line
