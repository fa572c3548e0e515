"""The agent's identity: its own key and the client certificate the control plane
signed for it, kept in a Secret of its member cluster.

On start the agent uses the certificate in the Secret while it is valid; otherwise it
registers: it generates a key (which never leaves the member), sends a certificate
signing request with a bootstrap token to the control plane's RegistrationService, waits
while the request is pending, and stores the key and certificate in the Secret. A
restart, or a standby agent taking over, needs no token. Renewal (on the open stream)
stores the new certificate the same way.

Every failure says, in one line, which step failed and what to do.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import datetime
import logging
from collections.abc import Sequence

import grpc
from cryptography import x509
from cryptography.exceptions import InvalidSignature

from agent.kube import Kube, RefusedError
from archipel import bootstrap, pki
from archipel.v1alpha2 import registration_pb2, registration_pb2_grpc

log = logging.getLogger(__name__)

SECRET_NAME = "archipel-agent-identity"
# How often a pending registration asks again.
POLL_SECONDS = 2.0


class RegistrationError(Exception):
    """Registration cannot go on without a person: the message says what to do."""


@dataclasses.dataclass(frozen=True)
class Identity:
    key_pem: bytes
    cert_pem: bytes
    ca_pem: bytes

    @property
    def cert(self) -> x509.Certificate:
        return x509.load_pem_x509_certificate(self.cert_pem)

    @property
    def cluster(self) -> str:
        return pki.common_name(self.cert.subject)

    @property
    def serial(self) -> str:
        return format(self.cert.serial_number, "x")

    @property
    def not_after(self) -> datetime.datetime:
        return self.cert.not_valid_after_utc

    def renew_at(self) -> datetime.datetime:
        """When to renew: once 2/3 of the certificate's lifetime has passed."""
        start, end = self.cert.not_valid_before_utc, self.not_after
        return start + (end - start) * 2 / 3

    def issued_by(self, bundle: bytes) -> bool:
        """Whether a CA certificate of ``bundle`` (PEM) signed this certificate."""
        try:
            authorities = x509.load_pem_x509_certificates(bundle)
        except ValueError:
            return False
        for authority in authorities:
            try:
                self.cert.verify_directly_issued_by(authority)
            except (ValueError, TypeError, InvalidSignature):
                continue
            return True
        return False

    def valid(self, now: datetime.datetime | None = None) -> bool:
        now = now or datetime.datetime.now(datetime.UTC)
        return self.cert.not_valid_before_utc <= now < self.not_after


class IdentityStore:
    """The Secret that holds the agent's key and certificate in its member."""

    def __init__(self, kube: Kube, *, namespace: str, name: str = SECRET_NAME) -> None:
        self.kube = kube
        self.namespace = namespace
        self.name = name

    @property
    def _path(self) -> str:
        return f"/api/v1/namespaces/{self.namespace}/secrets/{self.name}"

    def _rbac(self, verb: str, error: RefusedError) -> RegistrationError:
        return RegistrationError(
            f"storing the agent's identity: cannot {verb} secrets in namespace "
            f"{self.namespace} (HTTP {error.status}): the agent's ServiceAccount needs get, "
            "create and update on secrets there (the chart's Role archipel-agent grants them)"
        )

    async def load(self) -> Identity | None:
        try:
            secret = await self.kube.call(self.kube.raw_get, self._path)
        except RefusedError as error:
            if error.status == 404:
                return None
            if error.status == 403:
                raise self._rbac("get", error) from None
            raise
        data = secret.get("data") or {}
        try:
            return Identity(
                key_pem=base64.b64decode(data["tls.key"]),
                cert_pem=base64.b64decode(data["tls.crt"]),
                ca_pem=base64.b64decode(data.get("ca.crt", "")),
            )
        except (KeyError, ValueError):
            log.warning(
                "the Secret %s/%s holds no identity; registering", self.namespace, self.name
            )
            return None

    async def save(self, identity: Identity) -> None:
        body = {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": self.name, "namespace": self.namespace},
            "type": "kubernetes.io/tls",
            "data": {
                "tls.key": base64.b64encode(identity.key_pem).decode(),
                "tls.crt": base64.b64encode(identity.cert_pem).decode(),
                "ca.crt": base64.b64encode(identity.ca_pem).decode(),
            },
        }
        collection = f"/api/v1/namespaces/{self.namespace}/secrets"
        for verb, method, path in (
            ("update", "PUT", self._path),
            ("create", "POST", collection),
        ):
            try:
                await self.kube.call(self.kube.raw_send, method, path, body)
                return
            except RefusedError as error:
                if error.status == 403:
                    raise self._rbac(verb, error) from None
                if error.status != 404:
                    raise
        raise RegistrationError(f"storing the agent's identity: cannot write {self._path}")


def new_request(cluster: str) -> tuple[bytes, bytes]:
    """A new key (PEM) and the CSR (PEM) for it."""
    key = pki.new_key()
    return pki.key_pem(key), bootstrap.make_csr(cluster, key)


async def register(
    *,
    servers: Sequence[str],
    tls_ca: bytes | None,
    token: str,
    cluster: str,
    insecure: bool = False,
) -> Identity:
    """Register with the control plane and wait until the request is decided."""
    key_pem, csr = new_request(cluster)
    request = registration_pb2.RegisterRequest(token=token, csr=csr.decode())
    announced = False
    attempt = 0
    while True:
        server = servers[attempt % len(servers)]
        attempt += 1
        if insecure:
            channel = grpc.aio.insecure_channel(server)
        else:
            channel = grpc.aio.secure_channel(server, grpc.ssl_channel_credentials(tls_ca))
        try:
            async with channel:
                answer = await registration_pb2_grpc.RegistrationServiceStub(channel).Register(
                    request, timeout=30
                )
        except grpc.aio.AioRpcError as error:
            problem = _problem(error, server)
            if problem is not None:
                raise RegistrationError(problem) from None
            log.warning("registration: %s unreachable (%s); trying again", server, error.details())
            await asyncio.sleep(min(10.0, 0.5 * 2 ** min(attempt, 5)))
            continue
        if answer.state == "Approved":
            log.info("registration %s approved: certificate for cluster %s", answer.name, cluster)
            return Identity(
                key_pem=key_pem,
                cert_pem=answer.certificate.encode(),
                ca_pem=answer.ca.encode() or (tls_ca or b""),
            )
        if answer.state == "Denied":
            raise RegistrationError(
                f"registration: request {answer.name} was denied ({answer.message}); make a "
                "new bootstrap token and start the agent again"
            )
        if not announced:
            log.warning(
                "registration: request %s is pending; approve it with: archipel csr approve %s",
                answer.name,
                answer.name,
            )
            announced = True
        attempt -= 1  # the same server again: it answered
        await asyncio.sleep(POLL_SECONDS)


def _problem(error: grpc.aio.AioRpcError, server: str) -> str | None:
    """The one line a registration failure that retrying cannot fix deserves."""
    code, details = error.code(), error.details() or ""
    if code in (
        grpc.StatusCode.UNAUTHENTICATED,
        grpc.StatusCode.PERMISSION_DENIED,
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.FAILED_PRECONDITION,
        grpc.StatusCode.ALREADY_EXISTS,
        grpc.StatusCode.UNIMPLEMENTED,
    ):
        return details if details.startswith("registration") else f"registration: {details}"
    lowered = details.lower()
    if "certificate verify failed" in lowered or "handshake failed" in lowered:
        return (
            f"registration: cannot verify the control plane's certificate at {server}: pass "
            "--tls-ca-file with the control plane's CA bundle (its --pki-dir's ca/ca.crt, or "
            "the ca.crt of the chart's CA Secret)"
        )
    return None
