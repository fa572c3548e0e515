"""Server TLS by flag: clients that trust the CA get through, plaintext does not."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from archipel.client import Client, ClientError, Config
from archipel.core import kinds
from archipel.fleet import pki
from archipel.fleet.controlplane import ControlPlaneProcess
from archipel.fleet.etcd import EtcdServer
from archipel.v1alpha2 import service_pb2

pytestmark = pytest.mark.servers


def test_control_plane_serves_tls(etcd_server: EtcdServer, tmp_path: Path) -> None:
    ca = pki.CertificateAuthority(tmp_path / "pki", common_name="archipel-test-ca")
    serving = ca.issue_server("server", hosts=("127.0.0.1", "localhost"))
    plane = ControlPlaneProcess(
        etcd_endpoint=etcd_server.endpoint,
        etcd_prefix="/tls-test/",
        directory=tmp_path / "cp",
        tls=(serving.cert, serving.key),
    )
    plane.start()
    try:
        credentials = grpc.ssl_channel_credentials(root_certificates=ca.cert_path.read_bytes())
        with grpc.secure_channel(plane.address, credentials) as channel:
            response = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(), timeout=10
            )
        assert response.status == health_pb2.HealthCheckResponse.SERVING

        trusted = Client(Config(plane.address, plane.admin_token, ca.cert_path.read_bytes()))
        assert trusted.list_objects(kinds.MEMBER_CLUSTER) == []
        trusted.close()

        plaintext = Client(Config(plane.address, plane.admin_token))
        with pytest.raises(ClientError, match=r"UNAVAILABLE|cannot reach"):
            plaintext.call(
                plaintext.stub(kinds.MEMBER_CLUSTER).List,
                service_pb2.MemberClusterServiceListRequest(),
                timeout=3,
            )
        plaintext.close()
    finally:
        plane.stop()
