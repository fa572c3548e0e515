"""The documented registration flow with real agents on a real member cluster: a
bootstrap token, the agent's own key and CSR, its certificate kept in a Secret of the
member, mutual TLS on the agent port, renewal on the open stream, revocation; and the
one-line errors of a flow that cannot go on (Karmada users' complaints, issues #4810,
#4413, #3280, #6114)."""

from __future__ import annotations

import base64
import functools
import stat
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import pytest
from cryptography import x509
from kubernetes import client as k8s

from agent.identity import Identity, IdentityStore, RegistrationError
from agent.kube import Kube
from archipel import pki
from archipel.core import kinds
from archipel.fleet.controlplane import AgentProcess, ControlPlaneProcess
from archipel.fleet.members import Fleet, Member

pytestmark = pytest.mark.members(count=1, profile="api")

T = TypeVar("T")


def wait_for(
    what: str, check: Callable[[], T | None], agent: AgentProcess, seconds: float = 90
) -> T:
    deadline = time.monotonic() + seconds
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}:\n{agent.process.log_tail(40)}")
        time.sleep(0.2)


def ready(plane: ControlPlaneProcess, name: str) -> bool:
    client = plane.client()
    try:
        cluster = client.get_object(kinds.MEMBER_CLUSTER, name)
    except Exception:
        return False
    finally:
        client.close()
    return any(c.type == "Ready" and c.status == "True" for c in cluster.status.conditions)


def log_of(agent: AgentProcess) -> str:
    return agent.log_path.read_text(errors="replace")


class Setup:
    def __init__(self, members: Fleet, tmp_path: Path, extra_args: list[str]) -> None:
        assert members.etcd is not None
        self.member: Member = next(iter(members))
        self.namespace = f"reg-{uuid.uuid4().hex[:6]}"
        self.plane = ControlPlaneProcess(
            etcd_endpoint=members.etcd.endpoint,
            etcd_prefix=f"/registration-{uuid.uuid4().hex[:8]}/",
            directory=tmp_path / "cp",
            heartbeat_interval=1,
            extra_args=extra_args,
        )
        self.agents: list[AgentProcess] = []

    def agent(self, name: str, **kwargs: object) -> AgentProcess:
        agent = AgentProcess(
            control_plane=self.plane,
            member=self.member,
            heartbeat_interval=1,
            name=name,
            extra_args=[f"--namespace={self.namespace}"],
            **kwargs,  # type: ignore[arg-type]
        )
        self.agents.append(agent)
        return agent

    def secret(self) -> k8s.V1Secret | None:
        core = k8s.CoreV1Api(self.member.api_client())
        try:
            return core.read_namespaced_secret("archipel-agent-identity", self.namespace)
        except k8s.exceptions.ApiException as error:
            if error.status == 404:
                return None
            raise

    def stored_certificate(self) -> x509.Certificate | None:
        secret = self.secret()
        if secret is None or not secret.data:
            return None
        return x509.load_pem_x509_certificate(base64.b64decode(secret.data["tls.crt"]))

    def stop(self) -> None:
        for agent in self.agents:
            agent.stop()
        self.plane.stop()
        core = k8s.CoreV1Api(self.member.api_client())
        try:
            core.delete_namespace(self.namespace)
        except k8s.exceptions.ApiException as error:
            if error.status != 404:
                raise


@pytest.fixture
def setups(members: Fleet, tmp_path: Path) -> Iterator[Callable[..., Setup]]:
    """A control plane of the test's own (with these flags) and the member."""
    made: list[Setup] = []

    def make(*extra_args: str) -> Setup:
        setup = Setup(members, tmp_path / f"setup-{len(made)}", list(extra_args))
        made.append(setup)
        setup.plane.start()
        return setup

    yield make
    for setup in made:
        setup.stop()


@pytest.fixture
def setup(setups: Callable[..., Setup]) -> Setup:
    return setups()


def test_a_bound_token_registers_the_agent_which_keeps_its_certificate(setup: Setup) -> None:
    plane, member = setup.plane, setup.member
    token_file = plane.bootstrap(member)
    assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
    token = token_file.read_text().strip()
    agent = setup.agent("first", bootstrap_token_file=token_file)
    agent.start()
    wait_for("Ready over mutual TLS", functools.partial(ready, plane, member.name), agent)
    # No secret on the command line, nor in the log (the token's id alone is public).
    assert token not in " ".join(agent.process.argv)
    assert token.split(".")[1] not in log_of(agent)
    assert f"connected to {plane.agent_address}" in log_of(agent)
    stored = setup.stored_certificate()
    assert stored is not None
    assert stored.subject.rfc4514_string() == f"O=archipel:agents,CN={member.name}"
    secret = setup.secret()
    assert secret is not None and secret.type == "kubernetes.io/tls"
    agent.stop()

    # Restarted without any token (and the token deleted): the Secret is enough.
    client = plane.client()
    client.delete_token(token.split(".")[0])
    client.close()
    again = setup.agent("second")
    again.start()
    wait_for(
        "a session with the stored certificate",
        lambda: f"connected to {plane.agent_address}" in log_of(again),
        again,
    )
    assert "using the certificate" in log_of(again)
    assert "registering" not in log_of(again)


def test_an_unbound_token_waits_for_csr_approve(setup: Setup) -> None:
    plane, member = setup.plane, setup.member
    token_file = plane.bootstrap(member, bound=False)
    agent = setup.agent("pending", bootstrap_token_file=token_file)
    agent.start()
    client = plane.client()
    try:
        (request,) = wait_for("the request", client.list_requests, agent)
        assert request.state == "Pending" and request.cluster == member.name
        wait_for(
            "the agent to say what to do", lambda: "archipel csr approve" in log_of(agent), agent
        )
        assert not ready(plane, member.name)
        assert setup.secret() is None
        client.approve_request(request.name)
    finally:
        client.close()
    wait_for("Ready once approved", functools.partial(ready, plane, member.name), agent)
    assert setup.stored_certificate() is not None


def test_the_certificate_is_renewed_on_the_open_stream(setups: Callable[..., Setup]) -> None:
    setup = setups("--agent-cert-validity=12s")
    plane, member = setup.plane, setup.member
    agent = setup.agent("renewing", bootstrap_token_file=plane.bootstrap(member))
    agent.start()
    wait_for("Ready", functools.partial(ready, plane, member.name), agent)
    first = setup.stored_certificate()
    assert first is not None
    lifetime = first.not_valid_after_utc - first.not_valid_before_utc
    assert lifetime.total_seconds() < 20

    def renewed_twice() -> bool:
        return log_of(agent).count("certificate renewed") >= 2

    wait_for("two renewals", renewed_twice, agent, seconds=60)
    stored = setup.stored_certificate()
    assert stored is not None and stored.serial_number != first.serial_number
    # One session all along: the renewals went over the open stream, which stayed up
    # past the first certificate's expiry.
    assert log_of(agent).count("connected to") == 1
    assert plane.process.log_path.read_text().count(f"agent for {member.name} connected") == 1
    assert time.time() > first.not_valid_after_utc.timestamp()
    assert ready(plane, member.name)
    # And the next connection uses the renewed certificate.
    agent.stop()
    again = setup.agent("after-renewal")
    again.start()
    wait_for(
        "a session with the renewed certificate",
        lambda: f"connected to {plane.agent_address}" in log_of(again),
        again,
    )
    assert format(setup.stored_certificate().serial_number, "x") in log_of(again)


def test_revocation_cuts_the_agent_off_until_it_registers_with_a_new_token(
    setup: Setup, tmp_path: Path
) -> None:
    plane, member = setup.plane, setup.member
    token_file = plane.bootstrap(member)
    agent = setup.agent("revoked", bootstrap_token_file=token_file)
    agent.start()
    wait_for("Ready", functools.partial(ready, plane, member.name), agent)
    client = plane.client()
    try:
        client.revoke(member.name)
        wait_for(
            "the agent told it was revoked",
            lambda: f"cluster {member.name} was revoked" in log_of(agent),
            agent,
        )
        # Its reconnects are refused: it tries again with the token it has, which was
        # made before the revocation and so cannot bring the cluster back.
        wait_for(
            "the stale token refused",
            lambda: "register it with a new token" in log_of(agent),
            agent,
        )
        # A new token in the same file (as a mounted Secret would change): it registers
        # again, without a restart.
        fresh = client.create_token(ttl_seconds=600, cluster=member.name).token
    finally:
        client.close()
    token_file.write_text(fresh + "\n")
    connected = log_of(agent).count("connected to")
    wait_for(
        "a new session",
        lambda: log_of(agent).count("connected to") > connected,
        agent,
    )


def test_registration_failures_are_one_line_that_says_what_to_do(setup: Setup) -> None:
    plane, member = setup.plane, setup.member
    client = plane.client()
    short = client.create_token(ttl_seconds=1, cluster=member.name)
    client.close()
    expired_file = plane.directory / "expired-token"
    expired_file.write_text(short.token + "\n")

    # Until the token's expiry has passed (the control plane runs on this machine's clock).
    expires = short.bootstrap_token.expires.ToNanoseconds() / 1e9
    while time.time() <= expires:
        time.sleep(0.1)
    expired = setup.agent("expired", bootstrap_token_file=expired_file)
    expired.start()
    wait_for("the agent to exit", lambda: not expired.process.running, expired)
    assert expired.process.returncode == 1
    last = log_of(expired).strip().splitlines()[-1]
    assert last.startswith(f"error: registration: bootstrap token {short.bootstrap_token.id}")
    assert "has expired: create a new one with archipel token create" in last

    # No CA bundle: the agent cannot check the control plane's certificate.
    token_file = plane.bootstrap(member)
    blind = setup.agent("no-ca", bootstrap_token_file=token_file)
    blind.process.argv = [a for a in blind.process.argv if not a.startswith("--tls-ca-file")]
    blind.start()
    wait_for("the agent to exit", lambda: not blind.process.running, blind)
    last = log_of(blind).strip().splitlines()[-1]
    assert "cannot verify the control plane's certificate" in last
    assert "pass --tls-ca-file" in last

    # No token and no Secret.
    nothing = setup.agent("nothing")
    nothing.start()
    wait_for("the agent to exit", lambda: not nothing.process.running, nothing)
    last = log_of(nothing).strip().splitlines()[-1]
    assert "no bootstrap token" in last and "archipel token create --cluster" in last


async def test_an_identity_secret_the_agent_may_not_write_says_which_right_it_lacks(
    members: Fleet,
) -> None:
    """RBAC in the member, for real: a user with no rights on secrets (impersonated by
    the member's admin) is refused, and the error names the verb, the resource, the
    namespace and what grants them."""
    member = next(iter(members))
    api_client = member.api_client()
    api_client.set_default_header("Impersonate-User", "archipel-test-nobody")
    kube = Kube(api_client)
    store = IdentityStore(kube, namespace="default")
    try:
        with pytest.raises(RegistrationError) as refused:
            await store.load()
        assert "cannot get secrets in namespace default (HTTP 403)" in str(refused.value)
        cert, key = pki.CertificateAuthority.create("x").issue_client("m1")
        identity = Identity(pki.key_pem(key), pki.cert_pem(cert), b"")
        with pytest.raises(RegistrationError) as refused:
            await store.save(identity)
        message = str(refused.value)
        assert "cannot update secrets in namespace default" in message
        assert "needs get, create and update on secrets" in message
        assert "\n" not in message
    finally:
        kube.close()
