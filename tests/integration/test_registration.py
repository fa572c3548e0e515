"""Registration and the agents' mutual-TLS port, against a real control plane on a real
etcd, with agent streams spoken by hand (tests/integration/agents.py): bootstrap tokens,
certificate signing requests, a certificate that opens its own cluster's stream and no
other, renewal on an open stream, revocation. The whole flow with a real agent and a
real member is tests/e2e/test_registration_e2e.py."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import grpc
import pytest

from archipel import bootstrap, pki
from archipel.cli.main import main
from archipel.client import ClientError
from archipel.core import kinds
from archipel.fleet.controlplane import ControlPlaneProcess, ControlPlaneReplicas
from archipel.fleet.etcd import EtcdServer
from archipel.v1alpha1 import agent_pb2
from archipel.v1alpha2 import registration_pb2, registration_pb2_grpc
from tests.integration.agents import Api, RawAgent

pytestmark = pytest.mark.servers


def register(plane: ControlPlaneProcess, token: str, csr: bytes) -> Any:
    with plane.channel() as channel:
        return registration_pb2_grpc.RegistrationServiceStub(channel).Register(
            registration_pb2.RegisterRequest(token=token, csr=csr.decode()), timeout=10
        )


class Refusal:
    def __init__(self, error: grpc.RpcError) -> None:
        self._code: grpc.StatusCode = error.code()
        self._details = str(error.details() or "")

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return self._details


def refused(plane: ControlPlaneProcess, token: str, csr: bytes) -> Refusal:
    with pytest.raises(grpc.RpcError) as failed:
        register(plane, token, csr)
    return Refusal(failed.value)


def certified(plane: ControlPlaneProcess, cluster: str) -> tuple[bytes, bytes]:
    """A key and the certificate a bound bootstrap token gets it."""
    client = plane.client()
    token = client.create_token(ttl_seconds=600, cluster=cluster).token
    client.close()
    key = pki.new_key()
    answer = register(plane, token, bootstrap.make_csr(cluster, key))
    assert answer.state == "Approved", answer
    return pki.key_pem(key), answer.certificate.encode()


async def end_of(agent: RawAgent) -> grpc.aio.AioRpcError:
    """The error the agent's stream ended with."""
    running = agent._running
    assert running is not None
    with pytest.raises(grpc.aio.AioRpcError) as ended:
        await asyncio.wait_for(running, timeout=30)
    return ended.value


async def test_a_bound_token_registers_its_cluster_and_the_certificate_opens_its_stream(
    plane: ControlPlaneProcess,
) -> None:
    client = plane.client()
    made = client.create_token(ttl_seconds=600, cluster="edge1")
    assert bootstrap.TOKEN_PATTERN.match(made.token)
    listed = client.list_tokens()
    assert [t.id for t in listed] == [made.bootstrap_token.id]
    assert listed[0].cluster == "edge1"
    key = pki.new_key()
    answer = register(plane, made.token, bootstrap.make_csr("edge1", key))
    assert (answer.state, answer.cluster) == ("Approved", "edge1")
    assert answer.ca.encode() == plane.ca_file.read_bytes()
    # The cluster did not exist: registering made it, as join does.
    assert client.get_object(kinds.MEMBER_CLUSTER, "edge1").metadata.name == "edge1"
    (request,) = client.list_requests()
    assert (request.cluster, request.state, request.token_id) == (
        "edge1",
        "Approved",
        made.bootstrap_token.id,
    )
    client.close()

    agent = RawAgent(plane, "edge1", certificate=(pki.key_pem(key), answer.certificate.encode()))
    agent.start(agent_pb2.Hello(cluster="edge1"))
    await agent.wait("the welcome", lambda: bool(agent.received))
    assert agent.received[0].HasField("welcome")
    await agent.close()


async def test_a_certificate_for_one_cluster_cannot_open_anothers_stream(
    plane: ControlPlaneProcess,
) -> None:
    certificate = certified(plane, "alpha")
    certified(plane, "beta")
    agent = RawAgent(plane, "beta", certificate=certificate)
    agent.start(agent_pb2.Hello(cluster="beta"))
    error = await end_of(agent)
    assert error.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "alpha" in (error.details() or "") and "beta" in (error.details() or "")
    await agent.close()


async def test_the_agent_port_refuses_a_client_without_a_certificate(
    plane: ControlPlaneProcess,
) -> None:
    # TLS to the agent port, trusting the CA, but no certificate: the handshake fails.
    channel = grpc.aio.secure_channel(
        plane.agent_address,
        grpc.ssl_channel_credentials(plane.ca_file.read_bytes()),
    )
    with pytest.raises(grpc.aio.AioRpcError) as failed:
        await registration_pb2_grpc.RegistrationServiceStub(channel).Register(
            registration_pb2.RegisterRequest(), timeout=10
        )
    assert failed.value.code() == grpc.StatusCode.UNAVAILABLE
    await channel.close(None)
    # And a certificate of another CA is no better.
    stranger = pki.CertificateAuthority.create("stranger")
    cert, key = stranger.issue_client("edge1", (pki.AGENT_ORGANIZATION,))
    agent = RawAgent(plane, "edge1", certificate=(pki.key_pem(key), pki.cert_pem(cert)))
    agent.start(agent_pb2.Hello(cluster="edge1"))
    assert (await end_of(agent)).code() == grpc.StatusCode.UNAVAILABLE
    await agent.close()


async def test_a_certificate_of_the_ca_that_was_never_issued_to_an_agent_opens_nothing(
    plane: ControlPlaneProcess,
) -> None:
    """The CA's signature is not enough: the control plane accepts the certificates it
    issued through registration, by serial."""
    certified(plane, "edge1")
    ca = pki.CertificateAuthority.load(
        plane.pki_dir / "ca" / "ca.crt", plane.pki_dir / "ca" / "ca.key"
    )
    cert, key = ca.issue_client("edge1", (pki.AGENT_ORGANIZATION,))
    agent = RawAgent(plane, "edge1", certificate=(pki.key_pem(key), pki.cert_pem(cert)))
    agent.start(agent_pb2.Hello(cluster="edge1"))
    error = await end_of(agent)
    assert error.code() == grpc.StatusCode.UNAUTHENTICATED
    assert "not one the control plane accepts" in (error.details() or "")
    await agent.close()


def test_an_unbound_token_waits_for_approval(plane: ControlPlaneProcess) -> None:
    client = plane.client()
    token = client.create_token(ttl_seconds=600).token
    key = pki.new_key()
    csr = bootstrap.make_csr("edge2", key)
    first = register(plane, token, csr)
    assert (first.state, first.certificate) == ("Pending", "")
    assert f"archipel csr approve {first.name}" in first.message
    # Asking again is where it stands, not a new request.
    assert register(plane, token, csr).name == first.name
    assert [r.state for r in client.list_requests()] == ["Pending"]
    approved = client.approve_request(first.name)
    assert approved.state == "Approved"
    answer = register(plane, token, csr)
    assert answer.state == "Approved" and answer.certificate
    with pytest.raises(ClientError, match="already Approved"):
        client.approve_request(first.name)

    other = bootstrap.make_csr("edge3", pki.new_key())
    pending = register(plane, token, other)
    client.deny_request(pending.name, "not ours")
    denied = register(plane, token, other)
    assert denied.state == "Denied" and "not ours" in denied.message
    client.close()


def test_token_failures_name_the_token_and_what_to_do(plane: ControlPlaneProcess) -> None:
    client = plane.client()
    csr = bootstrap.make_csr("edge4", pki.new_key())
    unknown = refused(plane, "abcdef.0123456789abcdef", csr)
    assert unknown.code() == grpc.StatusCode.UNAUTHENTICATED
    assert "abcdef" in unknown.details() and "archipel token create" in unknown.details()
    assert "0123456789abcdef" not in unknown.details()

    wrong = client.create_token(ttl_seconds=600, cluster="edge5").token
    bound = refused(plane, wrong, csr)
    assert bound.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "edge5" in bound.details()

    deleted = client.create_token(ttl_seconds=600, cluster="edge4")
    client.delete_token(deleted.bootstrap_token.id)
    assert refused(plane, deleted.token, csr).code() == grpc.StatusCode.UNAUTHENTICATED

    short = client.create_token(ttl_seconds=1, cluster="edge4")
    deadline = time.monotonic() + 30
    while True:  # until the second has passed, as the control plane's clock says
        try:
            register(plane, short.token, csr)
        except grpc.RpcError as error:
            expired = Refusal(error)
            break
        assert time.monotonic() < deadline, "the token never expired"
        csr = bootstrap.make_csr("edge4", pki.new_key())
    assert expired.code() == grpc.StatusCode.UNAUTHENTICATED
    line = expired.details()
    assert "\n" not in line
    assert f"bootstrap token {short.bootstrap_token.id} has expired" in line
    assert "create a new one with archipel token create" in line
    # Expired tokens are pruned.
    assert short.bootstrap_token.id not in {t.id for t in client.list_tokens()}

    bad = refused(plane, client.create_token(ttl_seconds=600).token, b"not a csr")
    assert bad.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert bad.details().startswith("csr: ")
    client.close()


async def test_the_token_services_are_for_the_admin_alone(plane: ControlPlaneProcess) -> None:
    api = Api(plane)
    join_token = await api.join("edge6")
    await api.close()
    with plane.channel() as channel:
        stub = registration_pb2_grpc.BootstrapTokenServiceStub(channel)
        for metadata in ((), (("authorization", f"Bearer {join_token}"),)):
            with pytest.raises(grpc.RpcError) as denied:
                stub.Create(
                    registration_pb2.BootstrapTokenServiceCreateRequest(),
                    metadata=metadata,
                    timeout=10,
                )
            assert denied.value.code() in (
                grpc.StatusCode.UNAUTHENTICATED,
                grpc.StatusCode.PERMISSION_DENIED,
            )


async def test_renewal_on_the_open_stream(plane: ControlPlaneProcess) -> None:
    certificate = certified(plane, "edge7")
    agent = RawAgent(plane, "edge7", certificate=certificate)
    agent.start(agent_pb2.Hello(cluster="edge7"))
    await agent.wait("the resume", agent.synced.is_set)
    new_key = pki.new_key()
    agent.outbox.put_nowait(
        agent_pb2.AgentMessage(
            renewal=agent_pb2.CertificateRenewal(csr=bootstrap.make_csr("edge7", new_key).decode())
        )
    )

    def renewed() -> list[agent_pb2.RenewedCertificate]:
        return [m.certificate for m in agent.received if m.HasField("certificate")]

    await agent.wait("the renewed certificate", lambda: bool(renewed()))
    (answer,) = renewed()
    assert answer.error == "" and answer.certificate
    # The stream is still open, and the new certificate opens the next one.
    assert agent._running is not None and not agent._running.done()
    await agent.close()
    again = RawAgent(
        plane, "edge7", certificate=(pki.key_pem(new_key), answer.certificate.encode())
    )
    again.start(agent_pb2.Hello(cluster="edge7"))
    await again.wait("the resume", again.synced.is_set)
    # A renewal for another cluster is refused on the stream, which stays up.
    again.outbox.put_nowait(
        agent_pb2.AgentMessage(
            renewal=agent_pb2.CertificateRenewal(
                csr=bootstrap.make_csr("edge8", pki.new_key()).decode()
            )
        )
    )
    await again.wait("the refusal", lambda: any(m.HasField("certificate") for m in again.received))
    refusal = next(m.certificate for m in again.received if m.HasField("certificate"))
    assert "edge8" in refusal.error and not refusal.certificate
    assert again._running is not None and not again._running.done()
    await again.close()


async def test_revocation_cuts_the_stream_and_refuses_reconnects(
    plane: ControlPlaneProcess,
) -> None:
    certificate = certified(plane, "edge9")
    agent = RawAgent(plane, "edge9", certificate=certificate)
    agent.start(agent_pb2.Hello(cluster="edge9"))
    await agent.wait("the resume", agent.synced.is_set)
    api = Api(plane)
    join_token = await api.join("edge9")  # its join token is revoked as well
    await api.close()
    client = plane.client()
    old_token = client.create_token(ttl_seconds=600, cluster="edge9").token
    assert "revoked" in client.revoke("edge9")

    error = await end_of(agent)
    assert error.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "edge9 was revoked" in (error.details() or "")
    await agent.close()
    for credentials in ({"certificate": certificate}, {"token": join_token}):
        again = RawAgent(plane, "edge9", **credentials)
        again.start(agent_pb2.Hello(cluster="edge9"))
        code = (await end_of(again)).code()
        assert code in (grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.UNAUTHENTICATED)
        await again.close()
    # A token made before the revocation cannot bring it back; a new one can.
    stale = refused(plane, old_token, bootstrap.make_csr("edge9", pki.new_key()))
    assert stale.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "new token" in stale.details()
    fresh = certified(plane, "edge9")
    back = RawAgent(plane, "edge9", certificate=fresh)
    back.start(agent_pb2.Hello(cluster="edge9"))
    await back.wait("the resume", back.synced.is_set)
    await back.close()
    with pytest.raises(ClientError, match="NOT_FOUND"):
        client.revoke("nobody")
    client.close()


async def test_deleting_a_cluster_revokes_its_certificates(plane: ControlPlaneProcess) -> None:
    certificate = certified(plane, "edge10")
    agent = RawAgent(plane, "edge10", certificate=certificate)
    agent.start(agent_pb2.Hello(cluster="edge10"))
    await agent.wait("the resume", agent.synced.is_set)
    client = plane.client()
    client.delete_object(kinds.MEMBER_CLUSTER, "edge10")
    # The stream ends (how depends on which comes first: the cluster's removal, or its
    # certificates' record going with it).
    assert agent._running is not None
    await asyncio.wait({agent._running}, timeout=30)
    assert agent._running.done()
    await agent.close()
    again = RawAgent(plane, "edge10", certificate=certificate)
    again.start(agent_pb2.Hello(cluster="edge10"))
    assert (await end_of(again)).code() in (
        grpc.StatusCode.UNAUTHENTICATED,
        grpc.StatusCode.PERMISSION_DENIED,
    )
    await again.close()
    client.close()


async def test_revocation_through_one_replica_cuts_the_stream_another_holds(
    etcd_server: EtcdServer, tmp_path: Path
) -> None:
    replicas = ControlPlaneReplicas(
        2,
        etcd_endpoint=etcd_server.endpoint,
        etcd_prefix=f"/revoke-replicas-{tmp_path.name}/",
        directory=tmp_path,
    )
    replicas.start()
    try:
        holder, other = replicas[1], replicas[0]
        certificate = certified(other, "edge11")
        agent = RawAgent(holder, "edge11", certificate=certificate)
        agent.start(agent_pb2.Hello(cluster="edge11"))
        await agent.wait("the resume", agent.synced.is_set)
        client = other.client()  # replica 0 only: the revocation is written there
        client.revoke("edge11")
        client.close()
        error = await end_of(agent)
        assert error.code() == grpc.StatusCode.PERMISSION_DENIED
        assert "edge11 was revoked" in (error.details() or "")
        await agent.close()
    finally:
        replicas.stop()


def test_the_cli_manages_tokens_requests_and_revocations(
    plane: ControlPlaneProcess, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "archipel.yaml"
    plane.write_cli_config(config)

    def cli(*args: str) -> tuple[int, str, str]:
        code = main(["--config", str(config), *args])
        captured = capsys.readouterr()
        return code, captured.out, captured.err

    code, out, err = cli("token", "create", "--ttl", "10m", "--cluster", "edge12")
    token = out.strip()
    # The token alone on stdout (for files and $(...)), the rest on stderr.
    assert code == 0 and bootstrap.TOKEN_PATTERN.match(token), out
    assert "registers cluster edge12 without approval" in err
    code, out, _ = cli("token", "list")
    assert code == 0 and token.split(".")[0] in out and token.split(".")[1] not in out
    assert cli("token", "create", "--ttl", "forever")[0] == 1
    unbound = cli("token", "create")[1].strip()
    pending = register(plane, unbound, bootstrap.make_csr("edge13", pki.new_key()))
    code, out, _ = cli("csr", "list")
    assert code == 0 and pending.name in out and "Pending" in out
    code, out, _ = cli("csr", "approve", pending.name)
    assert (code, out.strip()) == (0, f"certificatesigningrequest/{pending.name} approved")
    code, _, err = cli("csr", "approve", pending.name)
    assert code == 1 and len(err.strip().splitlines()) == 1 and "already Approved" in err
    other = register(plane, unbound, bootstrap.make_csr("edge14", pki.new_key()))
    assert cli("csr", "deny", other.name, "--reason", "unknown site")[0] == 0
    assert "Denied" in cli("csr", "list")[1]
    code, out, _ = cli("clusters", "revoke", "edge13")
    assert code == 0 and "edge13 revoked" in out
    code, _, err = cli("clusters", "revoke", "nowhere")
    assert code == 1 and "NOT_FOUND" in err
    assert cli("token", "delete", token.split(".")[0])[0] == 0
    assert token.split(".")[0] not in cli("token", "list")[1]
