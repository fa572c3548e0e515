"""A small synchronous Python client for the control plane, used by the CLI and tests.

It knows where the server is and how to authenticate (config file or environment),
and converts between Kubernetes-style YAML/JSON documents and the API's messages. It
speaks the administration API's current version, ``archipel.v1alpha2``: callers ask
for objects by kind, namespace and name, and never build that version's per-method
request messages themselves.
"""

from __future__ import annotations

import base64
import dataclasses
import datetime
import os
import random
import re
import sys
import threading
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import grpc
from google.protobuf import json_format, message_factory
from google.protobuf import message as pb_message
from tenacity import (
    RetryCallState,
    Retrying,
    retry_if_exception,
    stop_after_attempt,
    stop_after_delay,
    wait_exponential_jitter,
)

from archipel import addresses, manifests, structs
from archipel.core import kinds, scopes
from archipel.v1alpha1 import cluster_pb2, work_pb2
from archipel.v1alpha2 import (
    access_pb2,
    access_pb2_grpc,
    registration_pb2,
    registration_pb2_grpc,
    service_pb2,
    service_pb2_grpc,
    storage_pb2,
    storage_pb2_grpc,
)

CONFIG_ENV = "ARCHIPEL_CONFIG"
DEFAULT_CONFIG = Path(".local/archipel.yaml")


class ClientError(Exception):
    """A failure to report to the user as one line.

    ``code`` is the gRPC status when the server (or the channel) answered with one, so
    callers can tell "not found" from "not allowed" without parsing the message.
    """

    def __init__(self, message: str, *, code: grpc.StatusCode | None = None) -> None:
        super().__init__(message)
        self.code = code


def _code(error: grpc.RpcError) -> grpc.StatusCode | None:
    # grpc.RpcError itself has no code(); the errors raised by calls are also grpc.Call.
    code = error.code() if hasattr(error, "code") else None
    return code if isinstance(code, grpc.StatusCode) else None


# The server cannot be reached (restarting, a dropped connection): a few quick tries
# before giving up, each at the next of the configured servers (FailoverChannel).
# Never any other code: those are answers, and asking again changes nothing. The
# jitter keeps many clients that lost one server from all coming back at once. Tests
# swap in a copy with a fake sleep.
CONNECTION_RETRIES = Retrying(
    wait=wait_exponential_jitter(multiplier=0.2, max=2.0, jitter=0.2),
    stop=stop_after_attempt(4),
    retry=retry_if_exception(
        lambda error: (
            isinstance(error, grpc.RpcError) and _code(error) == grpc.StatusCode.UNAVAILABLE
        )
    ),
    reraise=True,
)


# The control plane's rate limiter (controlplane/ratelimit.py) refuses a mutating call
# over its identity's rate with RESOURCE_EXHAUSTED and, in this trailing metadata, how
# many milliseconds to wait. Only such a refusal is retried (another RESOURCE_EXHAUSTED,
# a message too large, would be refused again), after the hint and a little jitter, for
# as long as RATE_LIMIT_PATIENCE seconds in all.
RETRY_AFTER_KEY = "retry-after-ms"
RATE_LIMIT_PATIENCE = 120.0


def retry_after(error: BaseException) -> float | None:
    """Seconds the server asked to wait before retrying ``error``'s call, or None when
    it is not a rate limiter's refusal."""
    if not isinstance(error, grpc.RpcError) or _code(error) != grpc.StatusCode.RESOURCE_EXHAUSTED:
        return None
    # (key, value) pairs at run time, whatever the stubs say.
    trailing: Any = error.trailing_metadata() if hasattr(error, "trailing_metadata") else None
    for key, value in trailing or ():
        if key == RETRY_AFTER_KEY:
            try:
                milliseconds = float(value)
            except ValueError:
                return None
            # A hint out of all proportion is the server's bug: wait a bounded while.
            return min(max(milliseconds, 0.0), 60_000.0) / 1000
    return None


def _wait_as_told(state: RetryCallState) -> float:
    error = state.outcome.exception() if state.outcome else None
    hinted = retry_after(error) if error is not None else None
    # Jitter: callers refused together should not all come back in the same instant.
    return (hinted or 0.0) * (1 + 0.1 * random.random())


RATE_LIMIT_RETRIES = Retrying(
    wait=_wait_as_told,
    stop=stop_after_delay(RATE_LIMIT_PATIENCE),
    retry=retry_if_exception(lambda error: retry_after(error) is not None),
    reraise=True,
)


# The kinds of Archipel's API (not resource templates): the one registry, in the core.
ApiKind = kinds.Kind[Any]
API_KINDS: tuple[ApiKind, ...] = tuple(kinds.API_KINDS.values())
API_GROUPS = ("archipel.io", "karmada.io")

# Kubernetes kinds people name on the command line, to their apiVersion.
TEMPLATE_KINDS: dict[str, tuple[str, str]] = {}
for _api_version, _kind, _names in (
    ("apps/v1", "Deployment", ("deployment", "deployments", "deploy")),
    ("apps/v1", "StatefulSet", ("statefulset", "statefulsets", "sts")),
    ("apps/v1", "DaemonSet", ("daemonset", "daemonsets", "ds")),
    ("apps/v1", "ReplicaSet", ("replicaset", "replicasets", "rs")),
    ("batch/v1", "Job", ("job", "jobs")),
    ("batch/v1", "CronJob", ("cronjob", "cronjobs", "cj")),
    ("v1", "ConfigMap", ("configmap", "configmaps", "cm")),
    ("v1", "Secret", ("secret", "secrets")),
    ("v1", "Service", ("service", "services", "svc")),
    ("v1", "Namespace", ("namespace", "namespaces", "ns")),
    ("v1", "ServiceAccount", ("serviceaccount", "serviceaccounts", "sa")),
    ("v1", "PersistentVolumeClaim", ("persistentvolumeclaim", "persistentvolumeclaims", "pvc")),
    ("networking.k8s.io/v1", "Ingress", ("ingress", "ingresses", "ing")),
    ("rbac.authorization.k8s.io/v1", "Role", ("role", "roles")),
    ("rbac.authorization.k8s.io/v1", "ClusterRole", ("clusterrole", "clusterroles")),
    ("rbac.authorization.k8s.io/v1", "RoleBinding", ("rolebinding", "rolebindings")),
    (
        "rbac.authorization.k8s.io/v1",
        "ClusterRoleBinding",
        ("clusterrolebinding", "clusterrolebindings"),
    ),
    ("scheduling.k8s.io/v1", "PriorityClass", ("priorityclass", "priorityclasses", "pc")),
    ("storage.k8s.io/v1", "StorageClass", ("storageclass", "storageclasses", "sc")),
    (
        "apiextensions.k8s.io/v1",
        "CustomResourceDefinition",
        ("customresourcedefinition", "customresourcedefinitions", "crd", "crds"),
    ),
):
    for _name in _names:
        TEMPLATE_KINDS[_name] = (_api_version, _kind)


def api_kind_by_name(name: str) -> ApiKind | None:
    lowered = name.lower()
    return next((k for k in API_KINDS if lowered in k.aliases), None)


def api_kind_of_document(document: dict[str, Any]) -> ApiKind | None:
    """The Archipel kind a document is, or None for a resource template."""
    api_version = str(document.get("apiVersion", ""))
    group = api_version.rpartition("/")[0]
    if not any(group.endswith(suffix) for suffix in API_GROUPS):
        return None
    for api_kind in API_KINDS:
        if api_kind.name == document.get("kind"):
            return api_kind
    raise ClientError(f"kind: {document.get('kind')!r} is not a kind of {api_version}")


@dataclasses.dataclass(frozen=True)
class Config:
    """``server`` is one ``host:port``, or several separated by commas: replicas of one
    control plane, tried in turn when one cannot be reached."""

    server: str
    token: str
    tls_ca: bytes | None = None
    """The CA bundle the control plane's certificate is checked with; None: the
    system's roots."""
    tls_ca_file: str = ""
    """Where ``tls_ca`` was read from, for the commands the CLI prints."""
    insecure: bool = False
    """Plaintext, to a control plane started with --insecure (``insecure: true`` in the
    config file, or ARCHIPEL_INSECURE=1)."""

    @property
    def servers(self) -> list[str]:
        return addresses.split(self.server)

    @classmethod
    def load(cls, path: Path | None = None, *, server: str | None = None) -> Config:
        """From ``path``, ``$ARCHIPEL_CONFIG`` or ``.local/archipel.yaml``; env wins,
        and ``server`` (the CLI's ``--server``) over both."""
        data: dict[str, Any] = {}
        candidate = path or Path(os.environ.get(CONFIG_ENV, DEFAULT_CONFIG))
        if candidate.exists():
            # Read as manifests are (bounded size, depth and aliases): a config file
            # from elsewhere may be anything.
            try:
                documents = manifests.load_documents(manifests.read_file(candidate), str(candidate))
            except manifests.ManifestError as error:
                raise ClientError(str(error)) from error
            loaded = documents[0][1] if documents else {}
            if not isinstance(loaded, dict):
                raise ClientError(f"{candidate}: not a mapping")
            data = loaded
        elif path is not None:
            raise ClientError(f"{path}: no such config file")
        for key in ("token", "tokenFile", "tlsCaFile", "certificateAuthorityData"):
            if data.get(key) is not None and not isinstance(data[key], str):
                raise ClientError(f"{candidate}: {key}: must be a string")
        configured = data.get("server")
        if configured is not None and not (
            isinstance(configured, str)
            or (isinstance(configured, list) and all(isinstance(s, str) for s in configured))
        ):
            raise ClientError(f"{candidate}: server: must be host:port, or a list of them")
        wanted: str | list[str] | None = server or os.environ.get("ARCHIPEL_SERVER") or configured
        if isinstance(wanted, list):
            # A YAML list of servers is the same as the comma-separated string.
            wanted = ",".join(addresses.split(wanted))
        token = os.environ.get("ARCHIPEL_TOKEN") or data.get("token") or ""
        if not token and data.get("tokenFile"):
            raw = _read_config_file(candidate, "tokenFile", data["tokenFile"])
            if not raw.isascii():
                raise ClientError(f"{candidate}: tokenFile: {data['tokenFile']}: not a token")
            token = raw.decode().strip()
        if not wanted:
            raise ClientError(
                "no server configured: run 'make up', or set ARCHIPEL_SERVER and ARCHIPEL_TOKEN"
            )
        ca = os.environ.get("ARCHIPEL_TLS_CA_FILE") or data.get("tlsCaFile")
        tls_ca = _inline_certificate_authority(candidate, data)
        if tls_ca is None and ca:
            tls_ca = _read_config_file(candidate, "tlsCaFile", ca)
        insecure = os.environ.get("ARCHIPEL_INSECURE", "").lower() in ("1", "true", "yes") or (
            data.get("insecure") is True
        )
        return cls(
            server=wanted, token=token, tls_ca=tls_ca, tls_ca_file=ca or "", insecure=insecure
        )


def _inline_certificate_authority(config: Path, data: dict[str, Any]) -> bytes | None:
    """The CA bundle in certificateAuthorityData (base64 of the PEM, as in a
    kubeconfig), which a config printed by 'archipel user create' carries so that it
    works on its own."""
    inline = data.get("certificateAuthorityData")
    if not inline:
        return None
    try:
        return base64.b64decode(str(inline), validate=True)
    except ValueError as error:
        raise ClientError(f"{config}: certificateAuthorityData: not base64 ({error})") from None


def _read_config_file(config: Path, key: str, name: str) -> bytes:
    """A file a config names (its token, its CA bundle); a one-line error if unreadable."""
    try:
        return Path(name).read_bytes()
    except (OSError, ValueError) as error:
        reason = error.strerror if isinstance(error, OSError) and error.strerror else str(error)
        raise ClientError(f"{config}: {key}: {name}: {reason}") from error


class FailoverChannel(grpc.Channel):
    """One channel over several servers of one control plane.

    Calls go to the current server; a unary call that fails with UNAVAILABLE (the
    server is down or unreachable) moves the channel on to the next server, so the
    caller's retry (``CONNECTION_RETRIES``, with backoff and jitter) asks that one.
    Stubs are built on this channel as on any other, and never see the switch.
    Streaming calls go to the current server as they are made.
    """

    def __init__(self, servers: Sequence[str], connect: Callable[[str], grpc.Channel]) -> None:
        if not servers:
            raise ValueError("no server")
        self.servers = list(servers)
        self._connect = connect
        self._channels: dict[int, grpc.Channel] = {}
        self._lock = threading.Lock()
        self.current = 0

    def channel(self, index: int) -> grpc.Channel:
        with self._lock:
            if index not in self._channels:
                self._channels[index] = self._connect(self.servers[index])
            return self._channels[index]

    def failed(self, index: int) -> None:
        """The server at ``index`` could not be reached: the next one is current, unless
        another call has moved on already."""
        with self._lock:
            if self.current == index:
                self.current = (index + 1) % len(self.servers)

    def unary_unary(
        self,
        method: str,
        request_serializer: Any = None,
        response_deserializer: Any = None,
        _registered_method: bool = False,
    ) -> Any:
        # (``_registered_method`` is grpc's own hint for generated stubs, not passed on:
        # the calls work the same without it.)
        return _FailoverCallable(
            self,
            lambda channel: channel.unary_unary(method, request_serializer, response_deserializer),
        )

    def unary_stream(
        self,
        method: str,
        request_serializer: Any = None,
        response_deserializer: Any = None,
        _registered_method: bool = False,
    ) -> Any:
        return self._on_current("unary_stream", method, request_serializer, response_deserializer)

    def stream_unary(
        self,
        method: str,
        request_serializer: Any = None,
        response_deserializer: Any = None,
        _registered_method: bool = False,
    ) -> Any:
        return self._on_current("stream_unary", method, request_serializer, response_deserializer)

    def stream_stream(
        self,
        method: str,
        request_serializer: Any = None,
        response_deserializer: Any = None,
        _registered_method: bool = False,
    ) -> Any:
        return self._on_current("stream_stream", method, request_serializer, response_deserializer)

    def _on_current(
        self, shape: str, method: str, request_serializer: Any, response_deserializer: Any
    ) -> Any:
        """A streaming call on whichever channel is current when it is made; streams are
        not tried again elsewhere (only unary calls fail over)."""
        return lambda *args, **kwargs: getattr(self.channel(self.current), shape)(
            method, request_serializer, response_deserializer
        )(*args, **kwargs)

    def subscribe(self, callback: Any, try_to_connect: bool = False) -> None:
        self.channel(self.current).subscribe(callback, try_to_connect)

    def unsubscribe(self, callback: Any) -> None:
        for channel in list(self._channels.values()):
            channel.unsubscribe(callback)

    def close(self) -> None:
        with self._lock:
            channels = list(self._channels.values())
            self._channels.clear()
        for channel in channels:
            channel.close()

    def __enter__(self) -> FailoverChannel:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _FailoverCallable:
    """A unary method of a :class:`FailoverChannel`: called on the current server."""

    def __init__(self, channel: FailoverChannel, make: Callable[[grpc.Channel], Any]) -> None:
        self._channel = channel
        self._make = make
        self._methods: dict[int, Any] = {}

    def __call__(self, request: Any, **kwargs: Any) -> Any:
        index = self._channel.current
        if index not in self._methods:
            self._methods[index] = self._make(self._channel.channel(index))
        try:
            return self._methods[index](request, **kwargs)
        except grpc.RpcError as error:
            if _code(error) == grpc.StatusCode.UNAVAILABLE:
                self._channel.failed(index)
            raise


class Client:
    def __init__(self, config: Config) -> None:
        self.config = config
        servers = config.servers
        if not servers:
            raise ClientError("no server configured")

        def connect(server: str) -> grpc.Channel:
            if config.insecure:
                return grpc.insecure_channel(server)
            credentials = grpc.ssl_channel_credentials(root_certificates=config.tls_ca)
            return grpc.secure_channel(server, credentials)

        self.channel = FailoverChannel(servers, connect)
        self.metadata = (("authorization", f"Bearer {config.token}"),)
        self.templates = service_pb2_grpc.ResourceTemplateServiceStub(self.channel)
        self.admin = service_pb2_grpc.ClusterAdminServiceStub(self.channel)
        self.info = service_pb2_grpc.InfoServiceStub(self.channel)
        self.users = access_pb2_grpc.UserServiceStub(self.channel)
        self.storage = storage_pb2_grpc.StorageAdminServiceStub(self.channel)
        self.tokens = registration_pb2_grpc.BootstrapTokenServiceStub(self.channel)
        self.requests = registration_pb2_grpc.CertificateSigningRequestServiceStub(self.channel)
        # Each kind's scope, asked once per client (one CLI invocation): (group, kind).
        self._scopes: dict[tuple[str, str], scopes.Scope] = {}

    def close(self) -> None:
        self.channel.close()

    def stub(self, api_kind: ApiKind) -> Any:
        return getattr(service_pb2_grpc, f"{api_kind.service}Stub")(self.channel)

    # -- the API's kinds -----------------------------------------------------------

    def get_object(
        self, api_kind: ApiKind, name: str, namespace: str = "", *, timeout: float = 30
    ) -> Any:
        request = _request(api_kind, "Get", namespace=namespace, name=name)
        return self.call(self.stub(api_kind).Get, request, timeout=timeout).object

    def list_objects(
        self, api_kind: ApiKind, namespace: str = "", *, label_selector: str = ""
    ) -> list[Any]:
        """Every object of a kind (in ``namespace``, or all), page after page."""
        request = _request(api_kind, "List", namespace=namespace, label_selector=label_selector)
        return self.list_all(self.stub(api_kind).List, request)

    def apply_object(self, api_kind: ApiKind, obj: Any) -> Any:
        """Create ``obj``, or replace its spec, labels and annotations; the stored object."""
        return self.call(self.stub(api_kind).Apply, _request(api_kind, "Apply", object=obj)).object

    def delete_object(
        self, api_kind: ApiKind, name: str, namespace: str = "", *, resource_version: str = ""
    ) -> bool:
        """True when the object is gone; False when finalizers still hold it."""
        request = _request(
            api_kind, "Delete", namespace=namespace, name=name, resource_version=resource_version
        )
        deleted: bool = self.call(self.stub(api_kind).Delete, request).deleted
        return deleted

    # -- resource templates ------------------------------------------------------------

    def get_template(
        self, api_version: str, kind: str, name: str, namespace: str = "", *, timeout: float = 30
    ) -> work_pb2.ResourceTemplate:
        request = service_pb2.ResourceTemplateServiceGetRequest(
            api_version=api_version, kind=kind, namespace=namespace, name=name
        )
        found: work_pb2.ResourceTemplate = self.call(
            self.templates.Get, request, timeout=timeout
        ).object
        return found

    def list_templates(
        self,
        api_version: str = "",
        kind: str = "",
        namespace: str = "",
        *,
        label_selector: str = "",
    ) -> list[work_pb2.ResourceTemplate]:
        request = service_pb2.ResourceTemplateServiceListRequest(
            api_version=api_version, kind=kind, namespace=namespace, label_selector=label_selector
        )
        return self.list_all(self.templates.List, request)

    def apply_template(self, template: work_pb2.ResourceTemplate) -> work_pb2.ResourceTemplate:
        request = service_pb2.ResourceTemplateServiceApplyRequest(object=template)
        applied: work_pb2.ResourceTemplate = self.call(self.templates.Apply, request).object
        return applied

    def delete_template(
        self,
        api_version: str,
        kind: str,
        name: str,
        namespace: str = "",
        *,
        resource_version: str = "",
    ) -> bool:
        request = service_pb2.ResourceTemplateServiceDeleteRequest(
            api_version=api_version,
            kind=kind,
            namespace=namespace,
            name=name,
            resource_version=resource_version,
        )
        deleted: bool = self.call(self.templates.Delete, request).deleted
        return deleted

    def template_scope(self, api_version: str, kind: str) -> scopes.Scope:
        """Whether templates of a kind are namespaced, as the control plane decides it
        (ResourceTemplateService.GetScope); asked once per kind and client. A control
        plane too old to answer gets the built-in rule, which is what it applies."""
        group, _ = kinds.split_api_version(api_version)
        known = self._scopes.get((group, kind))
        if known is not None:
            return known
        request = service_pb2.ResourceTemplateServiceGetScopeRequest(
            api_version=api_version, kind=kind
        )
        try:
            answer = self.call(self.templates.GetScope, request)
            scope = scopes.Scope(
                answer.group,
                answer.kind,
                answer.namespaced,
                defined_by=answer.custom_resource_definition,
            )
        except ClientError as error:
            if error.code != grpc.StatusCode.UNIMPLEMENTED:
                raise
            scope = scopes.builtin_scope(api_version, kind)
        self._scopes[(group, kind)] = scope
        return scope

    def forget_scopes(self) -> None:
        """Ask again from now on: a CustomResourceDefinition was applied or deleted."""
        self._scopes.clear()

    def template_namespace(self, api_version: str, kind: str, namespace: str | None) -> str:
        """The namespace a template of this kind is addressed in: ``namespace`` (or
        ``default``) when the kind is namespaced, none when it is cluster-scoped."""
        if not self.template_scope(api_version, kind).namespaced:
            return ""
        return namespace or "default"

    # -- clusters and versions -----------------------------------------------------------

    def join(self, name: str, **fields: Any) -> tuple[cluster_pb2.MemberCluster, str]:
        """Register a member cluster; its MemberCluster and its agent's token."""
        response = self.call(self.admin.Join, service_pb2.JoinRequest(name=name, **fields))
        return response.cluster, response.token

    # -- users and audit -----------------------------------------------------------------

    def create_user(
        self, name: str, role: str, namespaces: Sequence[str] = (), *, rotate: bool = False
    ) -> tuple[access_pb2.User, str]:
        """Create a user (or issue a new token for one); the user and its token."""
        user = access_pb2.User(name=name, role=role, namespaces=list(namespaces))
        response = self.call(
            self.users.Create, access_pb2.UserServiceCreateRequest(user=user, rotate=rotate)
        )
        return response.user, response.token

    def list_users(self) -> list[access_pb2.User]:
        return list(self.call(self.users.List, access_pb2.UserServiceListRequest()).users)

    def delete_user(self, name: str) -> bool:
        return bool(
            self.call(self.users.Delete, access_pb2.UserServiceDeleteRequest(name=name)).deleted
        )

    def audit_events(
        self, since: datetime.datetime | None, *, limit: int = 0
    ) -> list[access_pb2.AuditEvent]:
        """The audit events of every server in the config (each replica keeps its own
        log), oldest first."""
        request = access_pb2.AuditServiceListRequest(limit=limit)
        if since is not None:
            request.since.FromDatetime(since)
        events: list[access_pb2.AuditEvent] = []
        for index in range(len(self.channel.servers)):
            stub = access_pb2_grpc.AuditServiceStub(self.channel.channel(index))
            try:
                events.extend(stub.List(request, metadata=self.metadata, timeout=30).events)
            except grpc.RpcError as error:
                server = self.channel.servers[index]
                raise ClientError(f"{server}: {_describe(error)}", code=_code(error)) from error
        return sorted(events, key=lambda event: event.time.ToNanoseconds())

    def revoke(self, name: str) -> str:
        """Cut a cluster's agent off: its certificates and token stop working."""
        answer = self.call(self.admin.Revoke, service_pb2.RevokeRequest(name=name))
        return str(answer.message)

    # -- bootstrap tokens and certificate signing requests --------------------------------

    def create_token(
        self, *, ttl_seconds: int, cluster: str = "", usages: Sequence[str] = ()
    ) -> registration_pb2.BootstrapTokenServiceCreateResponse:
        answer: registration_pb2.BootstrapTokenServiceCreateResponse = self.call(
            self.tokens.Create,
            registration_pb2.BootstrapTokenServiceCreateRequest(
                ttl_seconds=ttl_seconds, cluster=cluster, usages=list(usages)
            ),
        )
        return answer

    def list_tokens(self) -> list[registration_pb2.BootstrapToken]:
        answer = self.call(self.tokens.List, registration_pb2.BootstrapTokenServiceListRequest())
        return list(answer.items)

    def delete_token(self, token_id: str) -> None:
        self.call(
            self.tokens.Delete, registration_pb2.BootstrapTokenServiceDeleteRequest(id=token_id)
        )

    def list_requests(self) -> list[registration_pb2.CertificateSigningRequest]:
        answer = self.call(
            self.requests.List, registration_pb2.CertificateSigningRequestServiceListRequest()
        )
        return list(answer.items)

    def approve_request(self, name: str) -> registration_pb2.CertificateSigningRequest:
        answer = self.call(
            self.requests.Approve,
            registration_pb2.CertificateSigningRequestServiceApproveRequest(name=name),
        )
        return answer.request  # type: ignore[no-any-return]

    def deny_request(
        self, name: str, reason: str = ""
    ) -> registration_pb2.CertificateSigningRequest:
        answer = self.call(
            self.requests.Deny,
            registration_pb2.CertificateSigningRequestServiceDenyRequest(name=name, reason=reason),
        )
        return answer.request  # type: ignore[no-any-return]

    def version(self) -> service_pb2.GetVersionResponse:
        answer: service_pb2.GetVersionResponse = self.call(
            self.info.GetVersion, service_pb2.GetVersionRequest()
        )
        return answer

    def reencrypt(self, *, dry_run: bool = False) -> storage_pb2.ReencryptResponse:
        """Rewrite every stored object in the form the encryption configuration writes
        now (``archipel admin reencrypt``)."""
        # It reads and may rewrite every object: minutes, for a large store.
        answer: storage_pb2.ReencryptResponse = self.call(
            self.storage.Reencrypt, storage_pb2.ReencryptRequest(dry_run=dry_run), timeout=3600
        )
        return answer

    def stub_for(self, kind: str) -> Any:
        """The service stub of an Archipel kind named as on the command line."""
        api_kind = api_kind_by_name(kind)
        if api_kind is None:
            raise ClientError(f"unknown kind {kind!r}")
        return self.stub(api_kind)

    def call(self, method: Any, request: Any, *, timeout: float = 30) -> Any:
        """Call ``method``; retried while the server is unreachable or, after the wait it
        asks for, while its rate limiter refuses the call; any failure becomes a
        :class:`ClientError` carrying the status code."""
        # At least one try at every server, and a few more when there is only one.
        tries = max(4, len(self.channel.servers) + 1)
        try:
            return RATE_LIMIT_RETRIES(
                CONNECTION_RETRIES.copy(stop=stop_after_attempt(tries)),
                method,
                request,
                metadata=self.metadata,
                timeout=timeout,
            )
        except grpc.RpcError as error:
            raise ClientError(_describe(error), code=_code(error)) from error

    def list_all(self, method: Any, request: Any, *, timeout: float = 30) -> list[Any]:
        """Every item of a List call, page after page.

        The server cuts a List answer by count and by bytes and hands back a continue
        token; this follows the tokens until one comes back empty. ``request`` is not
        changed.
        """
        items: list[Any] = []
        seen: set[str] = set()
        while True:
            page = self.call(method, request, timeout=timeout)
            items.extend(page.items)
            token: str = getattr(page, "continue")  # a Python keyword, so no attribute syntax
            if not token:
                return items
            if token in seen:
                # A server that hands back a token it already gave would loop forever.
                raise ClientError("the server repeated a continue token: the listing is incomplete")
            seen.add(token)
            # A new request per page: the caller's, and any already sent, stay as they were.
            request = _copy(request)
            setattr(request, "continue", token)

    def binding_of(
        self, api_version: str, kind: str, namespace: str, name: str
    ) -> work_pb2.PropagationBinding | None:
        """The binding of a template, by what it binds.

        Most bindings carry Karmada's name ``<name>-<kind>``; one whose name was taken
        by a template of another API group with the same kind and name has a suffix,
        so the namespace's bindings are searched when the first guess is not it.
        """
        group = api_version.rpartition("/")[0]

        def binds(binding: work_pb2.PropagationBinding) -> bool:
            resource = binding.spec.resource
            return (
                resource.kind == kind
                and resource.name == name
                and resource.api_version.rpartition("/")[0] == group
            )

        bindings = kinds.PROPAGATION_BINDING
        try:
            guess: work_pb2.PropagationBinding = self.get_object(
                bindings, f"{name}-{kind.lower()}", namespace
            )
            if binds(guess):
                return guess
        except ClientError:
            pass
        for binding in self.list_objects(bindings, namespace):
            if binds(binding):
                found: work_pb2.PropagationBinding = binding
                return found
        return None

    # -- documents -------------------------------------------------------------------

    def apply_document(self, document: dict[str, Any]) -> tuple[str, str]:
        """Apply one parsed document; returns (display name, outcome)."""
        api_kind = api_kind_of_document(document)
        if api_kind is None:
            before = self._template_version(document)
            result = self.apply_template(
                work_pb2.ResourceTemplate(manifest=structs.to_struct(document))
            )
            manifest = structs.from_struct(result.manifest)
            name = f"{manifest['kind'].lower()}/{manifest['metadata']['name']}"
            after = manifest["metadata"].get("resourceVersion")
            return name, _outcome(before, after)
        message = to_message(api_kind, document)
        before = self._api_version_of(api_kind, message)
        result = self.apply_object(api_kind, message)
        name = f"{api_kind.name.lower()}/{result.metadata.name}"
        return name, _outcome(before, result.metadata.resource_version)

    def _template_version(self, document: dict[str, Any]) -> str | None:
        metadata = document.get("metadata", {})
        try:
            found = self.get_template(
                str(document.get("apiVersion", "")),
                str(document.get("kind", "")),
                str(metadata.get("name", "")),
                str(metadata.get("namespace", "")),
                timeout=10,
            )
        except ClientError as error:
            if error.code in _ABSENT:
                return None
            raise  # not allowed, unreachable...: the user must see why, not "created"
        version: str | None = structs.from_struct(found.manifest)["metadata"].get("resourceVersion")
        return version

    def _api_version_of(self, api_kind: ApiKind, message: Any) -> str | None:
        namespace = message.metadata.namespace if api_kind.namespaced else ""
        try:
            found = self.get_object(api_kind, message.metadata.name, namespace, timeout=10)
        except ClientError as error:
            if error.code in _ABSENT:
                return None
            raise  # not allowed, unreachable...: the user must see why, not "created"
        version: str = found.metadata.resource_version
        return version


# What a lookup before an Apply takes for "not there yet". INVALID_ARGUMENT too: the
# document's own key is malformed, and the Apply that follows rejects it naming the
# document's field (metadata.name), which says more than the lookup's answer.
_ABSENT = (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.INVALID_ARGUMENT)


def _request(api_kind: ApiKind, method: str, *, namespace: str = "", **fields: Any) -> Any:
    """The v1alpha2 request of ``method`` of a kind's service.

    Requests for cluster-scoped kinds have no namespace field; naming one for them is
    the caller's mistake, said as the server would say it.
    """
    service = service_pb2.DESCRIPTOR.services_by_name[api_kind.service]
    request_type = message_factory.GetMessageClass(service.methods_by_name[method].input_type)
    if "namespace" in request_type.DESCRIPTOR.fields_by_name:
        fields["namespace"] = namespace
    elif namespace:
        raise ClientError(f"namespace: must be empty: {api_kind.name} is cluster-scoped")
    return request_type(**fields)


def _copy(request: Any) -> Any:
    copied = type(request)()
    copied.CopyFrom(request)
    return copied


def _outcome(before: str | None, after: str | None) -> str:
    if before is None:
        return "created"
    return "unchanged" if before == after else "configured"


def _describe(error: grpc.RpcError) -> str:
    code = error.code() if hasattr(error, "code") else None
    details = error.details() if hasattr(error, "details") else str(error)
    if code == grpc.StatusCode.UNAVAILABLE:
        lowered = (details or "").lower()
        if "certificate verify failed" in lowered or "handshake failed" in lowered:
            return (
                "cannot verify the control plane's certificate: set tlsCaFile in the "
                "config (or ARCHIPEL_TLS_CA_FILE) to its CA bundle (the control plane's "
                f"--pki-dir ca/ca.crt): {details}"
            )
        return f"cannot reach the control plane: {details}"
    name = code.name if code is not None else "ERROR"
    return f"{name}: {details}"


def to_message(api_kind: ApiKind, document: dict[str, Any]) -> Any:
    """Parse a document strictly: an unknown field is an error that names it."""
    message = api_kind.new()
    try:
        json_format.ParseDict(document, message, ignore_unknown_fields=False)
    except json_format.ParseError as error:
        raise ClientError(f"{api_kind.name} {_parse_problem(error)}") from error
    return message


_UNKNOWN_FIELD = re.compile(r'has no field named "([^"]+)" at "([^"]+)"')


def _parse_problem(error: json_format.ParseError) -> str:
    """protobuf's message, as one line that names the field by its YAML path."""
    text = str(error)
    unknown = _UNKNOWN_FIELD.search(text)
    if unknown:
        field, where = unknown.groups()
        path = ".".join([*where.split(".")[1:], field])
        return f"{path}: unknown field"
    first = text.splitlines()[0].strip()
    fields = re.findall(r"Failed to parse (\w+) field: ", first)
    problem = re.sub(r"(Failed to parse \w+ field: )+", "", first)
    problem = re.sub(r" at [\w.]+$", "", problem.rstrip(".")).rstrip(".")
    return f"{'.'.join(fields)}: {problem}" if fields else problem


def read_documents(
    source: str, *, namespace: str | None = None
) -> Iterator[tuple[str, dict[str, Any]]]:
    """(origin, document) from a file, a directory (sorted, *.yaml|*.yml|*.json) or '-'.

    Documents are read by :mod:`archipel.manifests`: anything that is not a manifest
    is a :class:`ClientError` naming the file, the document and the field or line.
    """
    try:
        if source == "-":
            yield from _parse(
                manifests.read_stream(sys.stdin.buffer, "<stdin>"), "<stdin>", namespace
            )
            return
        path = Path(source)
        if path.is_dir():
            files = sorted(p for p in path.iterdir() if p.suffix in (".yaml", ".yml", ".json"))
        elif path.exists():
            files = [path]
        else:
            raise ClientError(f"{source}: no such file or directory")
        for file in files:
            yield from _parse(manifests.read_file(file), str(file), namespace)
    except manifests.ManifestError as error:
        raise ClientError(str(error)) from error
    except OSError as error:
        raise ClientError(f"{source}: {error.strerror or error}") from error


def _parse(
    data: bytes | str, origin: str, namespace: str | None
) -> Iterator[tuple[str, dict[str, Any]]]:
    try:
        documents = manifests.load_manifests(data, origin)
    except manifests.ManifestError as error:
        raise ClientError(str(error)) from error
    for number, document in documents:
        where = f"{origin} (document {number})"
        if namespace and not document["metadata"].get("namespace"):
            try:
                api_kind = api_kind_of_document(document)
            except ClientError as error:
                raise ClientError(f"{where}: {error}") from error
            if api_kind is None or api_kind.namespaced:
                document["metadata"]["namespace"] = namespace
        yield where, document


def _whole_numbers(value: Any) -> Any:
    """Struct fields come back as floats; Kubernetes readers expect 2, not 2.0."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, dict):
        return {k: _whole_numbers(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_whole_numbers(v) for v in value]
    return value


def message_to_document(message: pb_message.Message) -> dict[str, Any]:
    if isinstance(message, work_pb2.ResourceTemplate):
        return structs.from_struct(message.manifest)
    document: dict[str, Any] = _whole_numbers(json_format.MessageToDict(message))
    return document
