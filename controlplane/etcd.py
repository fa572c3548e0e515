"""The one module that talks to etcd (through etcd3aio, an asyncio-native client).

It offers only what the store needs: reads at a revision, conditional writes guarded
by ``mod_revision`` (0 means "must not exist"), and prefix watches that report
compaction so the caller can relist. Every etcd error becomes :class:`Unavailable`.

Every value passes through it on its way into and out of etcd, so this is where a
storage :class:`Transformer` (encryption at rest, :mod:`controlplane.encryption`)
applies: to each ``Put`` of a transaction, and to each value a get, a range or a
watch returns. A value it cannot read back comes out as :class:`Unreadable`, which
the store reports as a corrupt object.

Several endpoints name the members of one cluster. Requests go to one member at a
time; one that fails because its member is lost (or has no leader) moves the
connection on to the next member and is tried again there (``RETRIES``), and so is a
watch, from the revision after the last event it delivered, so the caller loses
nothing and never relists for it. Endpoints may be IP addresses or host names
(resolved by gRPC, again after a failure, so a member that comes back at a new
address is found).

``https://`` endpoints speak TLS (:class:`TLS`, the control plane's ``--etcd-cafile``,
``--etcd-certfile`` and ``--etcd-keyfile``, as kube-apiserver names them): etcd's
certificate is verified against the CA bundle, for the host the endpoint names, and
the client certificate is presented to an etcd that asks for one
(``--client-cert-auth``). A handshake that fails at :meth:`Etcd.connect` is a
:class:`TLSError` naming the endpoint and the file to look at, never a wait.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime
import ipaddress
import logging
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Sequence
from pathlib import Path
from typing import Any, Protocol, TypeVar

import etcd3aio
import grpc
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from etcd3aio._protobuf import (
    Compare,
    WatchCreateRequest,
    WatchRequest,
    WatchResponse,
    WatchStub,
)
from etcd3aio.errors import EtcdConnectionError, EtcdError
from etcd3aio.kv import prefix_range_end
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception,
    stop_after_attempt,
    wait_exponential_jitter,
)

from archipel import addresses, pki
from archipel.core.errors import TooMuch, Unavailable
from controlplane import metrics

# etcd3aio wraps most failures in EtcdError, but lets some gRPC statuses through
# (RESOURCE_EXHAUSTED for a request over etcd's limit).
_CLIENT_ERRORS = (EtcdError, grpc.aio.AioRpcError)
log = logging.getLogger(__name__)
T = TypeVar("T")


def _member_lost(error: BaseException) -> bool:
    """A failure another try may not see: no member answered (UNAVAILABLE), or the
    one that did had no leader or lost it (etcd answers UNAVAILABLE then too)."""
    if isinstance(error, EtcdConnectionError):
        return True
    return isinstance(error, grpc.aio.AioRpcError) and error.code() == grpc.StatusCode.UNAVAILABLE


# While a member is lost (its connection fails, gRPC's round robin drops it) or the
# cluster elects a new leader (about two seconds with etcd's default timings), calls
# fail with UNAVAILABLE. Jittered exponential waits, about 3.5 s in all, ride that out
# without every waiting caller coming back at the same instant; after that the caller
# gets Unavailable (a controller's queue retries, the API answers UNAVAILABLE). Tests
# swap in a copy with a fake sleep.
RETRIES = AsyncRetrying(
    wait=wait_exponential_jitter(multiplier=0.05, max=1.0, jitter=0.1),
    stop=stop_after_attempt(8),
    retry=retry_if_exception(_member_lost),
    reraise=True,
)


def _resume_wait(breaks: int) -> float:
    """How long a watch waits before it opens again after ``breaks`` breaks in a row:
    ``RETRIES``' wait (exponential, jittered) for that many failed attempts."""
    state = RetryCallState(retry_object=RETRIES, fn=None, args=(), kwargs={})
    state.attempt_number = breaks
    return float(RETRIES.wait(state))


# Breaks in a row, with no event in between, after which a watch gives up: as many as
# the tries of any other call.
_RESUME_LIMIT = 8
# Sent with every watch: a member cut off from its cluster's leader then ends the
# watch (UNAVAILABLE) instead of keeping it open and silent, so it resumes elsewhere.
_REQUIRE_LEADER = (("hasleader", "true"),)


def _describe(error: BaseException | None) -> str:
    """One line for a log: a gRPC error's own text spans several."""
    if isinstance(error, grpc.aio.AioRpcError):
        return f"{error.code().name}: {error.details()}"
    return str(error)


def _log_retry(what: str) -> Callable[[RetryCallState], None]:
    def before_sleep(state: RetryCallState) -> None:
        log.info(
            "etcd %s: %s; trying again in %.2fs",
            what,
            _describe(state.outcome.exception() if state.outcome else None),
            state.upcoming_sleep,
        )

    return before_sleep


# Every value a transformer encrypted starts with this (kube-apiserver's format).
ENCRYPTED_PREFIX = b"k8s:enc:"


class Undecryptable(Exception):
    """Raised by a :class:`Transformer` that cannot turn a stored value back into
    plaintext (no configured key decrypts it, or it fails authentication)."""


class Transformer(Protocol):
    """Turns values into what etcd stores and back. ``key`` is below the prefix (it
    decides how a value is stored), ``context`` the whole etcd key (bound to the
    stored value, so a value copied under another key does not read back)."""

    def write(self, key: str, value: bytes, *, context: bytes) -> bytes: ...

    def read(self, key: str, value: bytes, *, context: bytes) -> bytes: ...


class Unreadable(bytes):
    """A stored value the transformer could not read back: the stored bytes, and why.

    It stands in for the value wherever one is returned, so one such value fails only
    its own object, as an undecodable value does (:func:`controlplane.store.decode`
    reports it as corrupt), and never a listing, a watch or a cache."""

    reason: str

    def __new__(cls, stored: bytes, reason: str) -> Unreadable:
        value = super().__new__(cls, stored)
        value.reason = reason
        return value


@dataclasses.dataclass(frozen=True)
class KeyValue:
    key: str
    value: bytes
    mod_revision: int
    create_revision: int


@dataclasses.dataclass(frozen=True)
class Event:
    """A change under a watched prefix; for deletions ``value`` is the last value."""

    type: str  # "PUT" or "DELETE"
    key: str
    value: bytes
    mod_revision: int
    created: bool = False


class RevisionOutOfRange(Exception):
    """A read at a revision etcd has compacted away or has not reached yet."""

    def __init__(self, revision: int) -> None:
        super().__init__(f"revision {revision} is out of etcd's range")
        self.revision = revision


def _status_code(error: BaseException) -> grpc.StatusCode | None:
    """The gRPC status behind an etcd client error (etcd3aio may wrap it)."""
    for candidate in (error, error.__cause__):
        if isinstance(candidate, grpc.aio.AioRpcError):
            code: grpc.StatusCode = candidate.code()
            return code
    return None


class Compacted(Exception):
    """The watch's start revision was compacted away: relist, then watch again."""

    def __init__(self, compact_revision: int) -> None:
        super().__init__(f"revision compacted (oldest available {compact_revision})")
        self.compact_revision = compact_revision


@dataclasses.dataclass(frozen=True)
class Put:
    """One write in a transaction, guarded by the key's expected mod_revision; ``lease``
    (an etcd lease id, 0 for none) makes the key go when the lease expires."""

    key: str
    value: bytes
    expect_mod_revision: int
    lease: int = 0


@dataclasses.dataclass(frozen=True)
class Delete:
    key: str
    expect_mod_revision: int


@dataclasses.dataclass(frozen=True)
class Guard:
    """A condition of a transaction that writes nothing: the key is still at
    ``expect_mod_revision`` (a shard a replica claimed is still its claim)."""

    key: str
    expect_mod_revision: int


Write = Put | Delete | Guard


class TLSError(Exception):
    """etcd's TLS cannot work as configured: a flag, a file it names, or etcd's answer
    to the handshake. The message is one line naming the flag, or the endpoint and the
    file to look at."""


@dataclasses.dataclass(frozen=True)
class TLS:
    """How the control plane speaks TLS to etcd: the CA bundle that verifies etcd's
    certificates and, for an etcd that asks for one (``--client-cert-auth``), a client
    certificate and its key (PEM). The files' names are kept for messages."""

    ca: bytes
    ca_file: str
    cert: bytes | None = None
    key: bytes | None = None
    cert_file: str = ""


# The schemes an endpoint may have: none (an address, as before) is plaintext.
_SCHEMES = {"": False, "http": False, "https": True}


def _split_endpoint(endpoint: str) -> tuple[bool, str]:
    """(whether it speaks TLS, ``host:port``) of an etcd client URL."""
    scheme, separator, rest = endpoint.partition("://")
    if not separator:
        scheme, rest = "", endpoint
    if scheme.lower() not in _SCHEMES:
        raise TLSError(f"--etcd: {endpoint}: an etcd client URL is http:// or https://")
    return _SCHEMES[scheme.lower()], rest.rstrip("/")


def uses_tls(endpoints: Sequence[str]) -> bool:
    """Whether these endpoints (of one cluster) speak TLS; :class:`TLSError` when some
    do and others do not: one etcd cluster serves its clients one way."""
    kinds = {endpoint: _split_endpoint(endpoint)[0] for endpoint in endpoints}
    secure = [endpoint for endpoint, tls in kinds.items() if tls]
    plain = [endpoint for endpoint, tls in kinds.items() if not tls]
    if secure and plain:
        raise TLSError(
            f"--etcd: {secure[0]} is TLS and {plain[0]} is plaintext: the members of one "
            "etcd cluster are all https:// or all http://"
        )
    return bool(secure)


def check_tls_flags(
    endpoints: Sequence[str],
    *,
    ca_file: Path | None,
    cert_file: Path | None,
    key_file: Path | None,
) -> None:
    """The combinations of the ``--etcd*`` flags that cannot work, as a
    :class:`TLSError` naming the flag; the files themselves are read by
    :func:`load_tls`."""
    tls = uses_tls(endpoints)
    if cert_file is not None and key_file is None:
        raise TLSError(f"--etcd-keyfile: --etcd-certfile {cert_file} needs its private key")
    if key_file is not None and cert_file is None:
        raise TLSError(f"--etcd-certfile: --etcd-keyfile {key_file} needs its certificate")
    if tls and ca_file is None:
        https = next(e for e in endpoints if _split_endpoint(e)[0])
        raise TLSError(
            f"--etcd-cafile: {https} is TLS: pass the CA bundle that signed etcd's "
            "certificate (etcd's --trusted-ca-file, or its issuer)"
        )
    if not tls:
        given = [
            flag
            for flag, value in (
                ("--etcd-cafile", ca_file),
                ("--etcd-certfile", cert_file),
                ("--etcd-keyfile", key_file),
            )
            if value is not None
        ]
        if given:
            raise TLSError(
                f"{given[0]}: every --etcd endpoint is plaintext (http://), so it would "
                "not be used: name them https:// to speak TLS to etcd"
            )


def _read(flag: str, path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as error:
        raise TLSError(f"{flag}: cannot read {path}: {error.strerror or error}") from None


def load_tls(ca_file: Path | None, cert_file: Path | None, key_file: Path | None) -> TLS | None:
    """The files of the ``--etcd-*`` TLS flags, read and checked (what gRPC would
    otherwise refuse later and vaguely: no certificate in the CA bundle, a key that is
    not the certificate's, a certificate that has expired); None without a CA."""
    if ca_file is None:
        return None
    ca = _read("--etcd-cafile", ca_file)
    try:
        x509.load_pem_x509_certificates(ca)
    except ValueError:
        raise TLSError(f"--etcd-cafile: {ca_file} holds no PEM certificate") from None
    if cert_file is None or key_file is None:
        return TLS(ca=ca, ca_file=str(ca_file))
    cert = _read("--etcd-certfile", cert_file)
    key = _read("--etcd-keyfile", key_file)
    try:
        leaf = x509.load_pem_x509_certificates(cert)[0]
    except ValueError:
        raise TLSError(f"--etcd-certfile: {cert_file} holds no PEM certificate") from None
    try:
        private = pki.load_key(key)
    except (ValueError, TypeError):
        raise TLSError(f"--etcd-keyfile: {key_file} holds no PEM private key") from None

    def spki(public: Any) -> bytes:
        encoded: bytes = public.public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        return encoded

    if spki(private.public_key()) != spki(leaf.public_key()):
        raise TLSError(
            f"--etcd-keyfile: {key_file} is not the key of the certificate in "
            f"--etcd-certfile {cert_file}"
        )
    if leaf.not_valid_after_utc < datetime.datetime.now(datetime.UTC):
        raise TLSError(
            f"--etcd-certfile: {cert_file} expired at {leaf.not_valid_after_utc:%Y-%m-%d %H:%M} UTC"
        )
    return TLS(ca=ca, ca_file=str(ca_file), cert=cert, key=key, cert_file=str(cert_file))


def _member_client(endpoint: str, tls: TLS | None = None) -> etcd3aio.Etcd3Client:
    """An etcd3aio client for one member, at an IP address or a host name; over TLS
    when ``tls`` is given (the endpoint is then ``https://``)."""
    _, address = _split_endpoint(endpoint)
    # One try per call in etcd3aio: the retries are ours (RETRIES), with jitter, long
    # enough for a leader election, and on the next member.
    if tls is None:
        client = etcd3aio.Etcd3Client([address], rpc_max_attempts=1)
    else:
        client = etcd3aio.Etcd3Client(
            [address],
            rpc_max_attempts=1,
            ca_cert=tls.ca,
            cert_key=tls.key,
            cert_chain=tls.cert,
            # The host the endpoint names, as written: the target below may be an
            # ipv4: address (gRPC's default name for it is "host:port"), and etcd3aio
            # turns "localhost" into 127.0.0.1, which a certificate for localhost may
            # not list.
            tls_server_name=_host(address),
        )
    client._manager.target = _target(address)
    # gRPC's default 4 MiB limit is far below a page of large objects or a full
    # listing; etcd3aio exposes no setting, so extend its channel options here.
    client._manager.grpc_options.extend(
        [
            ("grpc.max_receive_message_length", 512 * 1024 * 1024),
            # A member that went down is tried again at least every 5 s (gRPC's own
            # backoff grows to two minutes): once it is back, it is ready to be turned
            # to within seconds when the next member is lost.
            ("grpc.initial_reconnect_backoff_ms", 250),
            ("grpc.max_reconnect_backoff_ms", 5000),
        ]
    )
    return client


def _host(address: str) -> str:
    """The host of ``host:port`` (an IPv6 address without its brackets)."""
    host, separator, _ = address.rpartition(":")
    return (host if separator else address).strip("[]")


def _target(address: str) -> str:
    """gRPC's target for ``host:port``: the address itself for an IP address (as
    etcd3aio names it), else the name, for gRPC's DNS resolver."""
    host, _, port = address.rpartition(":")
    try:
        ip = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return f"dns:///{address}"
    return f"ipv4:{host}:{port}" if ip.version == 4 else f"ipv6:[{ip}]:{port}"


# How long connect() waits for each member's first answer over TLS. A member that is
# down answers at once (connection refused); this bounds one that is unreachable.
_HANDSHAKE_TIMEOUT = 5.0
_VERIFY_FAILED = re.compile(r"CERTIFICATE_VERIFY_FAILED(?:: ([^:]+))?")


def _details(error: BaseException) -> str:
    """The gRPC status details behind an etcd client error (etcd3aio may wrap it)."""
    for candidate in (error, error.__cause__):
        if isinstance(candidate, grpc.aio.AioRpcError):
            return str(candidate.details())
    return str(error)


def _tls_problem(endpoint: str, details: str, tls: TLS) -> str | None:
    """What a failed first call to ``endpoint`` says about TLS, in one line, or None
    when it failed for another reason (a member down, a timeout). gRPC tells failures
    apart only by its status details: these are its words (gRPC 1.85, BoringSSL), which
    tests/integration/test_etcd_tls.py checks against a real etcd."""
    host = _host(_split_endpoint(endpoint)[1])
    if "Hostname Verification" in details:
        return (
            f"the certificate of etcd at {endpoint} is not for {host}: its subjectAltNames "
            "must name the host the --etcd endpoint names"
        )
    verify = _VERIFY_FAILED.search(details)
    if verify:
        reason = (verify.group(1) or "").strip() or "CERTIFICATE_VERIFY_FAILED"
        return (
            f"cannot verify the certificate of etcd at {endpoint} with --etcd-cafile "
            f"{tls.ca_file} ({reason}): pass the CA that signed etcd's serving certificate"
        )
    if "TSI_DATA_CORRUPTED" in details:
        # etcd ended the handshake with an alert: it wants a client certificate it
        # trusts (gRPC logs the alert itself, certificate required or unknown CA, to
        # stderr only).
        if tls.cert is None:
            return (
                f"etcd at {endpoint} refused a connection without a client certificate "
                "(it runs with --client-cert-auth): pass --etcd-certfile and --etcd-keyfile"
            )
        return (
            f"etcd at {endpoint} refused the client certificate of --etcd-certfile "
            f"{tls.cert_file}: it must be signed by a CA in etcd's --trusted-ca-file"
        )
    if "Handshake read failed" in details or "handshake failed" in details.lower():
        return (
            f"the TLS handshake with etcd at {endpoint} failed ({details.rpartition(': ')[2]}): "
            "does it serve TLS (etcd's --cert-file and https:// --listen-client-urls)? "
            "If it serves plaintext, name it http://"
        )
    return None


class Etcd:
    """A connection to etcd with all keys below ``prefix``."""

    def __init__(
        self,
        endpoints: Sequence[str],
        *,
        prefix: str = "/archipel/",
        transformer: Transformer | None = None,
        tls: TLS | None = None,
    ) -> None:
        """``tls`` is for ``https://`` endpoints, and needed by them (a
        :class:`TLSError` otherwise, as for endpoints mixing http and https)."""
        self.endpoints = addresses.split(endpoints)
        if not self.endpoints:
            raise ValueError("no etcd endpoint")
        if uses_tls(self.endpoints) != (tls is not None):
            raise TLSError(
                "--etcd-cafile: https:// endpoints need it"
                if tls is None
                else "--etcd-cafile: TLS settings for plaintext (http://) endpoints"
            )
        self.tls = tls
        # A client per member, not one over all of them: etcd3aio's own client takes
        # only IP addresses for several endpoints (gRPC's ipv4: target), where
        # production names its members; and with one member at a time, which one a
        # failure came from is known, so the next try goes elsewhere. Over TLS, each
        # member is also verified under its own name.
        self._clients = [_member_client(endpoint, tls) for endpoint in self.endpoints]
        self._current = 0
        self.prefix = prefix if prefix.endswith("/") else prefix + "/"
        self.transformer = transformer
        self._group = _GroupCommit(self)

    async def connect(self) -> None:
        """Open a channel to every member. Over TLS, each member is asked once for its
        status: a handshake that fails (etcd's certificate does not verify, or etcd
        refuses the client's) raises :class:`TLSError` here, instead of every request
        failing after its retries. A member that is down or does not answer is left to
        the retries, as without TLS."""
        for client in self._clients:
            await client.connect()
        if self.tls is None:
            return
        try:
            problems = await asyncio.gather(*map(self._handshake, range(len(self._clients))))
        except BaseException:
            await self.close()
            raise
        for problem in problems:
            if problem is not None:
                await self.close()
                raise TLSError(problem)

    async def _handshake(self, index: int) -> str | None:
        """What is wrong with TLS to member ``index``, or None."""
        assert self.tls is not None
        maintenance = self._clients[index].maintenance
        assert maintenance is not None
        try:
            await maintenance.status(timeout=_HANDSHAKE_TIMEOUT, max_attempts=1)
        except _CLIENT_ERRORS as error:
            details = _details(error)
            problem = _tls_problem(self.endpoints[index], details, self.tls)
            if problem is None:
                log.info("etcd member %s does not answer yet: %s", self.endpoints[index], details)
            return problem
        return None

    async def close(self) -> None:
        for client in self._clients:
            await client.close()

    @property
    def current_endpoint(self) -> str:
        """The member requests go to now."""
        return self.endpoints[self._current]

    def _lost(self, index: int, error: BaseException) -> None:
        """The member at ``index`` failed a request as lost: the next member is
        current, unless another request has moved on already."""
        if self._current != index or len(self._clients) == 1:
            return
        self._current = (index + 1) % len(self._clients)
        log.info(
            "etcd member %s: %s; turning to %s",
            self.endpoints[index],
            _describe(error),
            self.endpoints[self._current],
        )

    def _abs(self, key: str) -> bytes:
        return (self.prefix + key).encode()

    def stored_key(self, key: str) -> bytes:
        """The whole etcd key of ``key`` (below the prefix)."""
        return self._abs(key)

    def _rel(self, key: bytes) -> str:
        return key.decode()[len(self.prefix) :]

    def _to_storage(self, key: bytes, value: bytes) -> bytes:
        if self.transformer is None:
            return value
        return self.transformer.write(self._rel(key), value, context=key)

    def _from_storage(self, key: bytes, value: bytes) -> bytes:
        """A stored value as its writer gave it, or :class:`Unreadable`."""
        if self.transformer is None:
            if value.startswith(ENCRYPTED_PREFIX):
                # Never handed to a decoder as if it were the object: ciphertext could
                # happen to parse.
                return Unreadable(
                    value, "encrypted, and this control plane has no --encryption-provider-config"
                )
            return value
        try:
            return self.transformer.read(self._rel(key), value, context=key)
        except Undecryptable as error:
            return Unreadable(value, str(error))

    def _key_value(self, kv: Any, raw: bool) -> KeyValue:
        value = kv.value if raw else self._from_storage(kv.key, kv.value)
        return KeyValue(self._rel(kv.key), value, kv.mod_revision, kv.create_revision)

    def _kv(self, index: int) -> Any:
        kv = self._clients[index].kv
        assert kv is not None, "connect() first"
        return kv

    async def _retried(self, what: str, call: Callable[[int], Awaitable[T]]) -> T:
        """``call(index)`` on the current member (its index), tried again, on the next
        member when this one is lost, while no member (or no leader) answers."""
        async for attempt in RETRIES.copy(before_sleep=_log_retry(what)):
            with attempt:
                index = self._current
                try:
                    return await call(index)
                except BaseException as error:
                    if _member_lost(error):
                        self._lost(index, error)
                    raise
        raise AssertionError("unreachable: tenacity reraises the last failure")

    async def get(self, key: str, *, raw: bool = False) -> KeyValue | None:
        """The key's value; with ``raw``, as stored (not through the transformer)."""
        started = time.perf_counter()
        try:
            response = await self._retried(
                "get", lambda member: self._kv(member).get(self._abs(key), timeout=10)
            )
        except _CLIENT_ERRORS as error:
            raise Unavailable(f"etcd: {error}") from error
        finally:
            metrics.ETCD_LATENCY.labels("get").observe(time.perf_counter() - started)
        for kv in response.kvs:
            return self._key_value(kv, raw)
        return None

    async def range(
        self,
        prefix: str,
        *,
        start_after: str = "",
        limit: int = 0,
        revision: int = 0,
        raw: bool = False,
    ) -> tuple[list[KeyValue], int, bool]:
        """Keys under ``prefix`` in key order; returns (items, revision, more). With
        ``raw``, values as stored (not through the transformer)."""
        start = self._abs(start_after) + b"\x00" if start_after else self._abs(prefix)
        started = time.perf_counter()
        try:
            response = await self._retried(
                "range",
                lambda member: self._kv(member).get(
                    start,
                    range_end=prefix_range_end(self._abs(prefix)),
                    revision=revision,
                    limit=limit,
                    timeout=30,
                ),
            )
        except _CLIENT_ERRORS as error:
            if revision and _status_code(error) == grpc.StatusCode.OUT_OF_RANGE:
                raise RevisionOutOfRange(revision) from error
            raise Unavailable(f"etcd: {error}") from error
        finally:
            metrics.ETCD_LATENCY.labels("range").observe(time.perf_counter() - started)
        items = [self._key_value(kv, raw) for kv in response.kvs]
        return items, response.header.revision, bool(response.more)

    async def commit(self, writes: Sequence[Write]) -> int | None:
        """Apply all writes atomically if every guard holds.

        Returns the new revision, or None when a guard failed (someone else wrote).
        """
        kv = self._kv(self._current)  # builds the operations: any member's will do
        compare = []
        success = []
        guarded: set[bytes] = set()
        for write in writes:
            key = self._abs(write.key)
            if isinstance(write, Guard) and key in guarded:
                continue  # several callers of one group name the same shard
            guarded.add(key)
            if write.expect_mod_revision == 0:
                compare.append(kv.txn_compare_create_revision(key, 0))
            else:
                compare.append(
                    Compare(
                        result=Compare.EQUAL,
                        target=Compare.MOD,
                        key=key,
                        mod_revision=write.expect_mod_revision,
                    )
                )
            if isinstance(write, Put):
                value = self._to_storage(key, write.value)
                success.append(kv.txn_op_put(key, value, lease=write.lease))
            elif isinstance(write, Delete):
                success.append(kv.txn_op_delete(key))
        started = time.perf_counter()
        try:
            # A retried transaction whose first attempt did land (its member died
            # before answering) fails its guard and is reported as a conflict: the
            # caller rereads, which is always safe.
            response = await self._retried(
                "txn", lambda member: self._kv(member).txn(compare, success, timeout=10)
            )
        except _CLIENT_ERRORS as error:
            if "too large" in str(error) or "larger than max" in str(error):
                raise TooMuch(
                    f"etcd refused a {sum(write_size(w) for w in writes)}-byte write as too large"
                ) from error
            raise Unavailable(f"etcd: {error}") from error
        finally:
            metrics.ETCD_LATENCY.labels("txn").observe(time.perf_counter() - started)
        if not response.succeeded:
            return None
        revision: int = response.header.revision
        return revision

    async def commit_grouped(self, writes: Sequence[Write]) -> int | None:
        """Like :meth:`commit`, but shares one etcd transaction with concurrent callers.

        Many reconciles write at once (a binding's works, agents' status reports);
        grouping their guarded writes into one transaction divides etcd round trips
        and Raft entries by the batch size. Each caller still gets its own answer: if
        the group's transaction fails a guard, its members are retried one by one.
        """
        return await self._group.submit(list(writes))

    async def watch(
        self, prefix: str, *, start_revision: int, previous: bool = False
    ) -> AsyncIterator[list[Event]]:
        """Batches of events under ``prefix`` from ``start_revision`` on.

        With ``previous``, a deletion carries the value the key had. Raises
        :class:`Compacted` when ``start_revision`` is gone.

        When the stream breaks (its member died or lost its leader), the watch opens
        again, on whichever member answers, from the revision after the last event it
        delivered: nothing is lost and nothing repeated. Breaks with nothing delivered
        in between wait longer each time (``RETRIES``' waits: losing the leader can
        break a watch twice, once on the dead member and once on a member that finds
        itself without a leader); at the eighth in a row the watch raises
        :class:`Unavailable`, and the caller's own backoff paces a cluster that keeps
        failing.
        """
        # Not etcd3aio's own watch: it reconnects by itself from the revision in the
        # last answer's header, and an answer that replays history (a watch catching
        # up, in batches of 1,000 revisions) carries the store's current revision, past
        # events not yet sent. Resuming after the last event delivered loses none.
        key = self._abs(prefix)
        range_end = prefix_range_end(key)
        resume = start_revision
        idle_breaks = 0  # breaks since the last events arrived
        while True:
            stream = await self._open_watch(key, range_end, resume, previous)
            try:
                while True:
                    response = await stream.read()
                    if response is None:
                        raise Unavailable("etcd watch: the stream ended")
                    if response.compact_revision:
                        raise Compacted(response.compact_revision)
                    if response.canceled:
                        raise Unavailable(f"etcd watch canceled: {response.cancel_reason}")
                    if not response.events:
                        continue
                    idle_breaks = 0
                    resume = response.events[-1].kv.mod_revision + 1
                    yield [
                        Event(
                            "DELETE" if event.type == 1 else "PUT",
                            self._rel(event.kv.key),
                            self._from_storage(
                                event.kv.key,
                                event.prev_kv.value if event.type == 1 else event.kv.value,
                            ),
                            event.kv.mod_revision,
                            created=event.kv.create_revision == event.kv.mod_revision,
                        )
                        for event in response.events
                    ]
            except grpc.aio.AioRpcError as error:
                if _member_lost(error):
                    self._lost(stream.member, error)
                idle_breaks += 1
                if not _member_lost(error) or idle_breaks >= _RESUME_LIMIT:
                    raise Unavailable(f"etcd watch: {_describe(error)}") from error
                wait = _resume_wait(idle_breaks)
                log.info(
                    "etcd watch on %s broke (%s); resuming from revision %d in %.2fs",
                    prefix,
                    _describe(error),
                    resume,
                    wait,
                )
            finally:
                stream.close()
            await asyncio.sleep(wait)

    async def _open_watch(
        self, key: bytes, range_end: bytes, start_revision: int, previous: bool
    ) -> _WatchStream:
        """A watch stream that etcd has confirmed (its first answer, ``created``)."""
        create = WatchRequest(
            create_request=WatchCreateRequest(
                key=key,
                range_end=range_end,
                start_revision=start_revision,
                prev_kv=previous,
                progress_notify=True,
            )
        )

        async def open_once(index: int) -> _WatchStream:
            channel = self._clients[index]._channel
            assert channel is not None, "connect() first"
            stream = _WatchStream(channel, create, index)
            try:
                first = await stream.read()
                if first is None or not first.created:
                    raise Unavailable("etcd watch: the stream ended before it was created")
                if first.compact_revision:
                    raise Compacted(first.compact_revision)
                if first.canceled:
                    # etcd refused the watch (created and canceled in one answer).
                    raise Unavailable(f"etcd watch refused: {first.cancel_reason}")
            except BaseException:
                stream.close()
                raise
            return stream

        try:
            return await self._retried("watch", open_once)
        except _CLIENT_ERRORS as error:
            raise Unavailable(f"etcd watch: {error}") from error

    async def compact(self, revision: int) -> None:
        """Drop history before ``revision`` (etcd does it by itself, by its
        ``--auto-compaction-*`` flags; tests ask for it)."""
        try:
            await self._retried(
                "compact", lambda member: self._kv(member).compact(revision, physical=True)
            )
        except _CLIENT_ERRORS as error:
            raise Unavailable(f"etcd: {error}") from error

    # -- leases ------------------------------------------------------------------------

    async def grant_lease(self, ttl: int) -> int:
        """A new lease of ``ttl`` seconds; its id."""
        try:
            response = await self._retried(
                "lease grant", lambda member: self._lease(member).grant(ttl, timeout=5)
            )
        except _CLIENT_ERRORS as error:
            raise Unavailable(f"etcd: {error}") from error
        lease: int = response.ID
        return lease

    async def keep_alive(self, lease: int) -> int:
        """Renew ``lease`` once; the seconds it has left (0: it expired, and every key
        attached to it is gone)."""

        async def renew(member: int) -> int:
            call = self._lease(member).keep_alive(lease)
            try:
                async for response in call:
                    ttl: int = response.TTL
                    return max(ttl, 0)
            finally:
                call.cancel()
            raise Unavailable("etcd lease keep-alive: no answer")

        try:
            return await self._retried("lease keep-alive", renew)
        except _CLIENT_ERRORS as error:
            raise Unavailable(f"etcd: {error}") from error

    async def revoke_lease(self, lease: int) -> None:
        """End ``lease`` now: its keys go at once, not when it would have expired."""
        try:
            await self._retried(
                "lease revoke", lambda member: self._lease(member).revoke(lease, timeout=5)
            )
        except _CLIENT_ERRORS as error:
            if _status_code(error) != grpc.StatusCode.NOT_FOUND:
                raise Unavailable(f"etcd: {error}") from error

    def _lease(self, index: int) -> Any:
        lease = self._clients[index].lease
        assert lease is not None, "connect() first"
        return lease

    async def current_revision(self) -> int:
        _, revision, _ = await self.range("\x00none", limit=1)
        return revision


class _WatchStream:
    """One watch stream on one member (``member``, its index)."""

    def __init__(self, channel: grpc.aio.Channel, create: WatchRequest, member: int) -> None:
        self.member = member
        # The requests end when the stream is closed: gRPC's task that sends them then
        # ends too, instead of waiting, for ever, on requests that never come.
        self._closed = asyncio.Event()

        async def requests() -> AsyncIterator[WatchRequest]:
            yield create
            await self._closed.wait()

        self._call = WatchStub(channel).Watch(requests(), metadata=_REQUIRE_LEADER)

    async def read(self) -> WatchResponse | None:
        """The stream's next answer, or None when it has ended."""
        response = await self._call.read()
        if response is grpc.aio.EOF:  # type: ignore[attr-defined]
            return None
        answer: WatchResponse = response
        return answer

    def close(self) -> None:
        self._closed.set()
        self._call.cancel()


# etcd refuses a transaction with more operations than --max-txn-ops (default 128),
# or larger than --max-request-bytes (default 1.5 MiB): a group stays below both, and
# a write larger than the byte bound goes alone.
MAX_TXN_OPS = 120
MAX_TXN_BYTES = 1024 * 1024
_MAX_GROUPS_IN_FLIGHT = 4


def write_size(write: Write) -> int:
    return len(write.key) + (len(write.value) if isinstance(write, Put) else 0) + 16


class _GroupCommit:
    """Batches concurrent guarded writes into shared transactions."""

    def __init__(self, etcd: Etcd) -> None:
        self._etcd = etcd
        self._pending: list[tuple[list[Write], asyncio.Future[int | None]]] = []
        self._flushing = False
        self._slots = asyncio.Semaphore(_MAX_GROUPS_IN_FLIGHT)
        # Flushes and commits in flight, held so none is collected before it is done;
        # each one settles its callers' futures, errors included.
        self._running: set[asyncio.Task[None]] = set()

    def _start(self, coroutine: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(coroutine)
        self._running.add(task)
        task.add_done_callback(self._running.discard)

    async def submit(self, writes: list[Write]) -> int | None:
        future: asyncio.Future[int | None] = asyncio.get_running_loop().create_future()
        self._pending.append((writes, future))
        if not self._flushing:
            self._flushing = True
            self._start(self._flush())
        return await future

    def _take(self) -> list[tuple[list[Write], asyncio.Future[int | None]]]:
        group: list[tuple[list[Write], asyncio.Future[int | None]]] = []
        keys: set[str] = set()
        rest = []
        operations = 0
        size = 0
        for writes, future in self._pending:
            # Guards only compare: two callers may guard by the same shard.
            touched = {w.key for w in writes if not isinstance(w, Guard)}
            added = sum(write_size(w) for w in writes)
            fits = (
                operations + len(writes) <= MAX_TXN_OPS and size + added <= MAX_TXN_BYTES
            ) or not group
            # One transaction may not name a key twice: a second write to the same
            # key waits for the next group.
            if fits and not touched & keys:
                group.append((writes, future))
                keys |= touched
                operations += len(writes)
                size += added
            else:
                rest.append((writes, future))
        self._pending = rest
        return group

    async def _flush(self) -> None:
        try:
            # Let every coroutine that is ready to write this tick join the group.
            await asyncio.sleep(0)
            while self._pending:
                await self._slots.acquire()
                group = self._take()
                self._start(self._commit(group))
        finally:
            self._flushing = False

    async def _commit(self, group: list[tuple[list[Write], asyncio.Future[int | None]]]) -> None:
        try:
            if len(group) == 1:
                writes, future = group[0]
                self._settle(future, await self._etcd.commit(writes))
                return
            try:
                revision = await self._etcd.commit([w for writes, _ in group for w in writes])
            except TooMuch:
                # Perhaps one member's fault (a write past etcd's request limit): each
                # tries alone below. (Unavailable fails the group: etcd is down.)
                revision = None
            if revision is not None:
                for _, future in group:
                    self._settle(future, revision)
                return
            # Someone's guard failed, or etcd refused the whole: one by one, so a
            # failing write fails alone and its neighbours land.
            for writes, future in group:
                try:
                    self._settle(future, await self._etcd.commit(writes))
                except Exception as error:
                    if not future.done():
                        future.set_exception(error)
        except BaseException as error:
            for _, future in group:
                if not future.done():
                    future.set_exception(error)
        finally:
            self._slots.release()

    @staticmethod
    def _settle(future: asyncio.Future[int | None], revision: int | None) -> None:
        if not future.done():
            future.set_result(revision)
