"""Agents' registration: bootstrap tokens, certificate signing requests, the agent
certificates the control plane accepts, renewal and revocation.

Everything lives in etcd under the control plane's prefix, so every replica agrees:

* ``bootstraptokens/_/<id>``: a token's hash (never its secret), expiry, bound cluster.
* ``certificatesigningrequests/_/<name>``: an agent's request, its state and, once
  approved, its certificate (public).
* ``agentcertificates/_/<cluster>``: the serials of the cluster's certificates that
  are accepted, and whether the cluster is revoked. A certificate of the CA whose serial
  is not there opens nothing; revoking empties the list (and deletes the cluster's
  join token), and every replica, watching the prefix, closes the cluster's stream.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime
import json
import logging
import time
from collections.abc import Callable
from typing import Any

from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID
from google.protobuf.timestamp_pb2 import Timestamp

from archipel import bootstrap, limits, pki
from archipel.core import kinds
from archipel.core.errors import (
    AlreadyExists,
    Conflict,
    FailedPrecondition,
    Invalid,
    NotFound,
    PermissionDenied,
    Unauthenticated,
    Unavailable,
)
from archipel.v1alpha1 import cluster_pb2
from archipel.v1alpha2 import registration_pb2
from controlplane import api
from controlplane.context import FINALIZER
from controlplane.controllers.cluster import AGENT_CERTIFICATES, CREDENTIALS
from controlplane.etcd import Compacted
from controlplane.store import Store

log = logging.getLogger(__name__)

TOKENS = "bootstraptokens/_/"
REQUESTS = "certificatesigningrequests/_/"
DEFAULT_TTL = 3600.0
MAX_TTL = 30 * 86400.0
# Serials kept per cluster: the newest ones; a cluster has one or two live at a time
# (the current one and its renewal), so this bounds only a misbehaving agent.
MAX_SERIALS = 16
PENDING, APPROVED, DENIED = "Pending", "Approved", "Denied"

RevokedListener = Callable[[str, str], None]


def _now() -> float:
    return time.time()


@dataclasses.dataclass
class Outcome:
    """Where a registration stands."""

    name: str
    cluster: str
    state: str
    certificate: str = ""
    message: str = ""


class Registrar:
    def __init__(
        self, store: Store, *, validity: float, cluster_exists: Callable[[str], bool]
    ) -> None:
        self.store = store
        self.etcd = store.etcd
        self.validity = datetime.timedelta(seconds=validity)
        # Set once the transport is loaded; None: plaintext (--insecure), nothing to sign.
        self.ca: pki.CertificateAuthority | None = None
        self._cluster_exists = cluster_exists
        self._listeners: list[RevokedListener] = []

    def on_revoked(self, listener: RevokedListener) -> None:
        self._listeners.append(listener)

    # -- JSON records ---------------------------------------------------------------

    async def _read(self, key: str) -> tuple[dict[str, Any] | None, int]:
        found = await self.etcd.get(key)
        if found is None:
            return None, 0
        loaded: dict[str, Any] = json.loads(found.value)
        return loaded, found.mod_revision

    async def _write(self, key: str, record: dict[str, Any], revision: int) -> None:
        written = await self.store.put_raw(
            key, json.dumps(record, sort_keys=True).encode(), expect_mod_revision=revision
        )
        if written is None:
            raise Conflict(f"{key}: changed concurrently; try again")

    # -- bootstrap tokens -----------------------------------------------------------

    async def create_token(
        self, *, ttl: float, cluster: str, usages: list[str], description: str
    ) -> tuple[bootstrap.Token, dict[str, Any]]:
        ttl = ttl or DEFAULT_TTL
        if ttl < 0 or ttl > MAX_TTL:
            raise Invalid("ttlSeconds", f"between 1 and {MAX_TTL:.0f} seconds (30 days)")
        if cluster and not bootstrap.is_cluster_name(cluster):
            raise Invalid("cluster", f"{limits.echo(cluster)} is not a valid cluster name")
        usages = usages or list(bootstrap.USAGES)
        for index, usage in enumerate(usages):
            if usage not in bootstrap.USAGES:
                raise Invalid(f"usages[{index}]", f"{limits.echo(usage)}: only 'join'")
        if len(description) > 256:
            raise Invalid("description", "256 characters at most")
        token = bootstrap.new_token()
        now = _now()
        record = {
            "id": token.id,
            "hash": bootstrap.hash_secret(token),
            "cluster": cluster,
            "usages": usages,
            "created": now,
            "expires": now + ttl,
            "description": description,
        }
        await self._write(TOKENS + token.id, record, 0)
        log.info("bootstrap token %s created (cluster %s)", token.id, cluster or "any")
        return token, record

    async def list_tokens(self) -> list[dict[str, Any]]:
        items, _, _ = await self.etcd.range(TOKENS)
        now = _now()
        alive = []
        for item in items:
            record = json.loads(item.value)
            if record["expires"] <= now:
                await self.store.delete_raw(item.key)  # expired: pruned
            else:
                alive.append(record)
        return sorted(alive, key=lambda r: r["created"])

    async def delete_token(self, token_id: str) -> None:
        if not bootstrap.TOKEN_PATTERN.match(f"{token_id}.{'0' * 16}"):
            raise Invalid("id", "a token id is 6 characters of [a-z0-9]")
        if await self.etcd.get(TOKENS + token_id) is None:
            raise NotFound(f"bootstrap token {token_id} does not exist")
        await self.store.delete_raw(TOKENS + token_id)

    async def _valid_token(self, token: bootstrap.Token) -> dict[str, Any]:
        record, _ = await self._read(TOKENS + token.id)
        if record is not None and record["expires"] <= _now():
            await self.store.delete_raw(TOKENS + token.id)
            raise Unauthenticated(
                f"registration: bootstrap token {token.id} has expired: create a new one "
                "with archipel token create"
            )
        if record is None or not bootstrap.secret_matches(token, record["hash"]):
            raise Unauthenticated(
                f"registration: bootstrap token {token.id} is unknown (deleted, or never "
                "made here): create a new one with archipel token create"
            )
        if "join" not in record["usages"]:
            raise PermissionDenied(f"registration: bootstrap token {token.id} is not for join")
        return record

    # -- registration ---------------------------------------------------------------

    def _signing_ca(self) -> pki.CertificateAuthority:
        if self.ca is None:
            raise FailedPrecondition(
                "registration: this control plane runs --insecure and signs no certificates"
            )
        return self.ca

    async def register(self, token_text: str, csr_pem: str) -> Outcome:
        token = bootstrap.parse_token(token_text)
        self._signing_ca()
        request = bootstrap.check_csr(csr_pem)
        cluster = bootstrap.csr_cluster(request)
        name = f"{cluster}-{bootstrap.key_fingerprint(request.public_key())}"
        existing, _ = await self._read(REQUESTS + name)
        if existing is not None and existing["tokenId"] == token.id:
            # The agent asking again: where its request stands. Its certificate is
            # public, so an expired token may still fetch an approved one.
            return _outcome(existing)
        record = await self._valid_token(token)
        if existing is not None:
            raise AlreadyExists(
                f"registration: request {name} exists for another token; an agent keeps "
                "its key: ask with the token it first used, or start over with a new key"
            )
        bootstrap.check_csr(csr_pem, bound_cluster=record["cluster"])
        accepted, _ = await self._read(AGENT_CERTIFICATES + cluster)
        if (
            accepted is not None
            and accepted.get("revoked")
            and (record["created"] <= accepted.get("revokedAt", 0))
        ):
            raise PermissionDenied(
                f"registration: cluster {cluster} was revoked after bootstrap token "
                f"{token.id} was made: register it with a new token (archipel token create)"
            )
        stored = {
            "name": name,
            "cluster": cluster,
            "csr": csr_pem if isinstance(csr_pem, str) else csr_pem.decode(),
            "state": PENDING,
            "tokenId": token.id,
            "created": _now(),
            "message": "waiting for archipel csr approve " + name,
            "certificate": "",
        }
        if record["cluster"]:
            await self._ensure_cluster(cluster)
            stored["certificate"] = await self._sign(cluster, request)
            stored["state"] = APPROVED
            stored["message"] = f"approved: bootstrap token {token.id} is bound to {cluster}"
        try:
            await self._write(REQUESTS + name, stored, 0)
        except Conflict:
            raise AlreadyExists(
                f"registration: request {name} exists for another token; an agent keeps "
                "its key: ask with the token it first used, or start over with a new key"
            ) from None
        log.info("registration %s for cluster %s: %s", name, cluster, stored["state"])
        return _outcome(stored)

    async def list_requests(self) -> list[dict[str, Any]]:
        items, _, _ = await self.etcd.range(REQUESTS)
        return sorted((json.loads(i.value) for i in items), key=lambda r: r["created"])

    async def decide(self, name: str, *, approve: bool, reason: str = "") -> dict[str, Any]:
        record, revision = await self._read(REQUESTS + name)
        if record is None:
            raise NotFound(f"certificate signing request {name} does not exist")
        if record["state"] != PENDING:
            raise FailedPrecondition(
                f"certificate signing request {name} is already {record['state']}"
            )
        if approve:
            request = bootstrap.check_csr(record["csr"])
            await self._ensure_cluster(record["cluster"])
            record["certificate"] = await self._sign(record["cluster"], request, reinstate=True)
            record["state"] = APPROVED
            record["message"] = "approved by an administrator"
        else:
            record["state"] = DENIED
            record["message"] = "denied: " + (reason or "by an administrator")
        await self._write(REQUESTS + name, record, revision)
        return record

    async def _ensure_cluster(self, cluster: str) -> None:
        """Registering a cluster that does not exist yet creates it, as join does."""
        if self._cluster_exists(cluster):
            return
        key = kinds.MEMBER_CLUSTER.key("", cluster)
        found = await self.store.get(kinds.MEMBER_CLUSTER, key)
        if found is not None:
            if found.metadata.deletion_timestamp.seconds:
                raise FailedPrecondition(
                    f"registration: MemberCluster {cluster} is being deleted; register "
                    "again once it is gone"
                )
            return
        created = cluster_pb2.MemberCluster(
            api_version=kinds.MEMBER_CLUSTER.api_version, kind="MemberCluster"
        )
        created.metadata.name = cluster
        created.metadata.finalizers.append(FINALIZER)
        created.spec.sync_mode = "Pull"
        with contextlib.suppress(AlreadyExists):
            await self.store.create(kinds.MEMBER_CLUSTER, created)

    async def _sign(
        self, cluster: str, request: x509.CertificateSigningRequest, *, reinstate: bool = True
    ) -> str:
        """Sign ``request`` and add its serial to the cluster's accepted ones (a
        registration reinstates a revoked cluster; a renewal never does)."""
        ca = self._signing_ca()
        cert = ca.sign(
            request.public_key(),  # type: ignore[arg-type]
            name=pki.subject(cluster, (pki.AGENT_ORGANIZATION,)),
            usage=ExtendedKeyUsageOID.CLIENT_AUTH,
            validity=self.validity,
            backdate=min(pki.BACKDATE, self.validity / 10),
        )
        for _ in range(10):
            record, revision = await self._read(AGENT_CERTIFICATES + cluster)
            record = record or {"serials": {}, "revoked": False}
            if record.get("revoked") and not reinstate:
                raise PermissionDenied(
                    f"cluster {cluster} is revoked: its agent must register again"
                )
            now = _now()
            serials = {s: t for s, t in record["serials"].items() if t > now}
            serials[format(cert.serial_number, "x")] = cert.not_valid_after_utc.timestamp()
            newest = sorted(serials.items(), key=lambda item: item[1])[-MAX_SERIALS:]
            record["serials"] = dict(newest)
            record["revoked"] = False
            try:
                await self._write(AGENT_CERTIFICATES + cluster, record, revision)
            except Conflict:
                continue
            return pki.cert_pem(cert).decode()
        raise Conflict(f"cluster {cluster}: its certificates changed concurrently; try again")

    # -- the agent port -------------------------------------------------------------

    async def authenticate(self, cert_pem: bytes) -> str:
        """The cluster an agent's client certificate (already verified against the CA by
        TLS) stands for, if the control plane still accepts it."""
        cert = x509.load_pem_x509_certificate(cert_pem)
        cluster = pki.common_name(cert.subject)
        if pki.organizations(cert.subject) != [pki.AGENT_ORGANIZATION]:
            raise PermissionDenied(
                f"the client certificate of {limits.echo(cluster)} is not an agent's "
                f"(O={pki.AGENT_ORGANIZATION})"
            )
        record, _ = await self._read(AGENT_CERTIFICATES + cluster)
        if record is not None and record.get("revoked"):
            raise PermissionDenied(
                f"cluster {cluster} was revoked (archipel clusters revoke): its agent must "
                "register again with a new bootstrap token"
            )
        serial = format(cert.serial_number, "x")
        if record is None or serial not in record["serials"]:
            raise Unauthenticated(
                f"the certificate {serial} of cluster {limits.echo(cluster)} is not one the "
                "control plane accepts (revoked, or the cluster was deleted): register "
                "again with a new bootstrap token"
            )
        return cluster

    async def renew(self, cluster: str, csr_pem: str) -> str:
        """A new certificate for an agent whose stream is open with its current one."""
        request = bootstrap.check_csr(csr_pem, bound_cluster=cluster)
        return await self._sign(cluster, request, reinstate=False)

    # -- revocation -----------------------------------------------------------------

    async def revoke(self, cluster: str) -> None:
        if not bootstrap.is_cluster_name(cluster):
            raise Invalid("name", f"{limits.echo(cluster)} is not a valid cluster name")
        if (
            await self.store.get(kinds.MEMBER_CLUSTER, kinds.MEMBER_CLUSTER.key("", cluster))
            is None
        ):
            raise NotFound(f"MemberCluster {cluster} does not exist")
        for _ in range(10):
            _, revision = await self._read(AGENT_CERTIFICATES + cluster)
            record = {"serials": {}, "revoked": True, "revokedAt": _now()}
            try:
                await self._write(AGENT_CERTIFICATES + cluster, record, revision)
                break
            except Conflict:
                continue
        # The join token goes too: a revoked cluster comes back only through a new
        # bootstrap token (or an administrator's join --rotate).
        await self.store.delete_raw(CREDENTIALS + cluster)
        log.warning("cluster %s revoked: its certificates and token stop working", cluster)

    async def watch_revocations(self) -> None:
        """Tell the listeners of every revocation (and deletion) of a cluster's
        certificates, on whichever replica wrote it. Runs for the process's life."""
        while True:
            try:
                _, revision, _ = await self.etcd.range(AGENT_CERTIFICATES, limit=1)
                async for events in self.etcd.watch(
                    AGENT_CERTIFICATES, start_revision=revision + 1
                ):
                    for event in events:
                        cluster = event.key[len(AGENT_CERTIFICATES) :]
                        if event.type == "DELETE":
                            self._revoked(cluster, f"cluster {cluster} was deleted")
                        elif json.loads(event.value).get("revoked"):
                            self._revoked(
                                cluster,
                                f"cluster {cluster} was revoked (archipel clusters revoke): "
                                "register again with a new bootstrap token",
                            )
            except (Compacted, Unavailable) as error:
                log.warning("watching revocations: %s; watching again", error)
                await asyncio.sleep(1.0)

    def _revoked(self, cluster: str, message: str) -> None:
        for listener in self._listeners:
            listener(cluster, message)


def _outcome(record: dict[str, Any]) -> Outcome:
    return Outcome(
        name=record["name"],
        cluster=record["cluster"],
        state=record["state"],
        certificate=record.get("certificate", ""),
        message=record.get("message", ""),
    )


def _timestamp(seconds: float) -> Timestamp:
    stamp = Timestamp()
    stamp.FromNanoseconds(int(seconds * 1e9))
    return stamp


def _token_message(record: dict[str, Any]) -> registration_pb2.BootstrapToken:
    return registration_pb2.BootstrapToken(
        id=record["id"],
        cluster=record["cluster"],
        usages=record["usages"],
        expires=_timestamp(record["expires"]),
        created=_timestamp(record["created"]),
        description=record["description"],
    )


def _request_message(record: dict[str, Any]) -> registration_pb2.CertificateSigningRequest:
    return registration_pb2.CertificateSigningRequest(
        name=record["name"],
        cluster=record["cluster"],
        state=record["state"],
        token_id=record["tokenId"],
        created=_timestamp(record["created"]),
        message=record["message"],
    )


class RegistrationService:
    """Open: the bootstrap token in the request is the credential."""

    def __init__(self, registrar: Registrar) -> None:
        self.registrar = registrar

    @api.guarded
    async def Register(
        self, request: registration_pb2.RegisterRequest, context: Any
    ) -> registration_pb2.RegisterResponse:
        outcome = await self.registrar.register(request.token, request.csr)
        ca = self.registrar.ca
        return registration_pb2.RegisterResponse(
            name=outcome.name,
            cluster=outcome.cluster,
            state=outcome.state,
            certificate=outcome.certificate,
            ca=ca.cert_pem.decode() if ca is not None else "",
            message=outcome.message,
        )


class BootstrapTokenService:
    def __init__(self, registrar: Registrar) -> None:
        self.registrar = registrar

    @api.guarded
    async def Create(
        self, request: registration_pb2.BootstrapTokenServiceCreateRequest, context: Any
    ) -> registration_pb2.BootstrapTokenServiceCreateResponse:
        token, record = await self.registrar.create_token(
            ttl=float(request.ttl_seconds),
            cluster=request.cluster,
            usages=list(request.usages),
            description=request.description,
        )
        return registration_pb2.BootstrapTokenServiceCreateResponse(
            token=str(token), bootstrap_token=_token_message(record)
        )

    @api.guarded
    async def List(
        self, request: registration_pb2.BootstrapTokenServiceListRequest, context: Any
    ) -> registration_pb2.BootstrapTokenServiceListResponse:
        records = await self.registrar.list_tokens()
        return registration_pb2.BootstrapTokenServiceListResponse(
            items=[_token_message(r) for r in records]
        )

    @api.guarded
    async def Delete(
        self, request: registration_pb2.BootstrapTokenServiceDeleteRequest, context: Any
    ) -> registration_pb2.BootstrapTokenServiceDeleteResponse:
        await self.registrar.delete_token(request.id)
        return registration_pb2.BootstrapTokenServiceDeleteResponse()


class CertificateSigningRequestService:
    def __init__(self, registrar: Registrar) -> None:
        self.registrar = registrar

    @api.guarded
    async def List(
        self, request: registration_pb2.CertificateSigningRequestServiceListRequest, context: Any
    ) -> registration_pb2.CertificateSigningRequestServiceListResponse:
        records = await self.registrar.list_requests()
        return registration_pb2.CertificateSigningRequestServiceListResponse(
            items=[_request_message(r) for r in records]
        )

    @api.guarded
    async def Approve(
        self,
        request: registration_pb2.CertificateSigningRequestServiceApproveRequest,
        context: Any,
    ) -> registration_pb2.CertificateSigningRequestServiceApproveResponse:
        record = await self.registrar.decide(request.name, approve=True)
        return registration_pb2.CertificateSigningRequestServiceApproveResponse(
            request=_request_message(record)
        )

    @api.guarded
    async def Deny(
        self, request: registration_pb2.CertificateSigningRequestServiceDenyRequest, context: Any
    ) -> registration_pb2.CertificateSigningRequestServiceDenyResponse:
        record = await self.registrar.decide(request.name, approve=False, reason=request.reason)
        return registration_pb2.CertificateSigningRequestServiceDenyResponse(
            request=_request_message(record)
        )
