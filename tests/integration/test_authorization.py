"""The authorization matrix: every RPC against every role and an agent's credential.

A real control plane on a real etcd. Each cell sends a request that changes nothing
(empty, or a Watch from a resourceVersion that does not parse), so an allowed call
answers with anything but UNAUTHENTICATED or PERMISSION_DENIED, and a refused one with
exactly one of those. The expected table below is the specification, written out
independently of ``archipel.core.roles``.
"""

from __future__ import annotations

import dataclasses
import datetime
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
import yaml
from google.protobuf import message_factory
from google.protobuf.descriptor import MethodDescriptor

from archipel import structs
from archipel.cli import main as cli
from archipel.client import Client, ClientError, Config
from archipel.core import kinds
from archipel.fleet.controlplane import ControlPlaneProcess
from archipel.fleet.etcd import EtcdServer
from archipel.v1alpha1 import agent_pb2, work_pb2
from archipel.v1alpha2 import access_pb2, access_pb2_grpc, service_pb2
from controlplane.server import AGENT_SERVICE, SERVICE_NAMES
from tests.integration.rawgrpc import RawApi

pytestmark = pytest.mark.servers

ADMIN, OPERATOR, EDITOR, VIEWER = "admin", "operator", "editor", "viewer"
AGENT, ANONYMOUS, FORGED = "agent", "anonymous", "forged"
PEOPLE = {ADMIN, OPERATOR, EDITOR, VIEWER}
ALL = PEOPLE

# Who besides the admin may call each service's reads and its writes.
POLICIES = (ALL, {OPERATOR, EDITOR})
ACCESS: dict[str, tuple[set[str], set[str]]] = {
    "ResourceTemplateService": (ALL, {EDITOR}),
    "PropagationPolicyService": POLICIES,
    "OverridePolicyService": POLICIES,
    "ClusterPropagationPolicyService": POLICIES,
    "ClusterOverridePolicyService": POLICIES,
    "ResourceInterpreterCustomizationService": POLICIES,
    "MemberClusterService": (ALL, {OPERATOR}),
    "WorkloadRebalancerService": (ALL, {OPERATOR}),
    "ClusterTaintPolicyService": (ALL, {OPERATOR}),
    # Operators reschedule: `archipel reschedule` writes the binding.
    "PropagationBindingService": (ALL, {OPERATOR}),
    # Works carry the rendered Secrets: read by those who may read Secrets.
    "PropagationWorkService": ({EDITOR}, set()),
    "InfoService": (ALL, set()),
}
READS = {"Get", "List", "Watch", "GetScope", "GetVersion"}
REFUSED = {grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.UNAUTHENTICATED}


# Open to every caller, whatever bearer token it sends: an agent registering proves
# itself with the bootstrap token in its request, which these requests lack.
OPEN = {"RegistrationService"}


def expected(identity: str, service: str, method: str) -> grpc.StatusCode | None:
    """None for allowed; otherwise the refusal."""
    if service in OPEN:
        return grpc.StatusCode.UNAUTHENTICATED
    if identity in (ANONYMOUS, FORGED):
        return grpc.StatusCode.UNAUTHENTICATED
    if identity == AGENT:
        return grpc.StatusCode.PERMISSION_DENIED
    if identity == ADMIN:
        return None
    readers, writers = ACCESS.get(service, (set(), set()))
    allowed = readers if method in READS else writers
    return None if identity in allowed else grpc.StatusCode.PERMISSION_DENIED


@dataclasses.dataclass(frozen=True)
class Rpc:
    service: str  # without its package
    method: MethodDescriptor

    @property
    def path(self) -> str:
        return f"/{self.method.containing_service.full_name}/{self.method.name}"

    def harmless_request(self) -> bytes:
        request = message_factory.GetMessageClass(self.method.input_type)()
        if "resource_version" in request.DESCRIPTOR.fields_by_name:
            setattr(request, "resource_version", "not-a-revision")  # noqa: B010
        data: bytes = request.SerializeToString()
        return data


def _rpcs() -> list[Rpc]:
    from google.protobuf import descriptor_pool

    pool = descriptor_pool.Default()
    found = []
    for name in SERVICE_NAMES:
        if name == AGENT_SERVICE:
            continue
        service = pool.FindServiceByName(name)
        for method in service.methods:
            found.append(Rpc(service.name, method))
    return found


RPCS = _rpcs()


@dataclasses.dataclass
class Fleet:
    plane: ControlPlaneProcess
    tokens: dict[str, str | None]
    admin: Client

    def raw(self, identity: str) -> RawApi:
        return RawApi(self.plane, token=self.tokens[identity] or "")

    def client(self, identity: str) -> Client:
        return Client(self.config(self.tokens[identity] or ""))

    def config(self, token: str) -> Config:
        return dataclasses.replace(self.plane.config(), token=token)


@pytest.fixture(scope="module")
def fleet(etcd_server: EtcdServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    directory = tmp_path_factory.mktemp("authz")
    plane = ControlPlaneProcess(
        etcd_endpoint=etcd_server.endpoint,
        etcd_prefix=f"/authz-{uuid.uuid4().hex[:8]}/",
        directory=directory / "cp",
    )
    plane.start()
    admin = plane.client()
    try:
        tokens: dict[str, str | None] = {ADMIN: plane.admin_token, ANONYMOUS: None}
        for role in (OPERATOR, EDITOR, VIEWER):
            _, tokens[role] = admin.create_user(f"{role}-user", role)
        _, tokens["team-editor"] = admin.create_user("team-editor", EDITOR, ["team-a"])
        _, tokens["team-viewer"] = admin.create_user("team-viewer", VIEWER, ["team-a"])
        _, tokens[AGENT] = admin.join("alpha")
        tokens[FORGED] = "user:editor-user.not-its-secret"
        yield Fleet(plane, tokens, admin)
    finally:
        admin.close()
        plane.stop()


def _answer(api: RawApi, rpc: Rpc) -> grpc.StatusCode:
    if rpc.method.server_streaming:
        return api.stream(rpc.path, rpc.harmless_request(), timeout=10).code
    return api.unary(rpc.path, rpc.harmless_request()).code


@pytest.mark.parametrize("identity", [ADMIN, OPERATOR, EDITOR, VIEWER, AGENT, ANONYMOUS, FORGED])
def test_matrix(fleet: Fleet, identity: str) -> None:
    api = fleet.raw(identity)
    wrong = []
    try:
        for rpc in RPCS:
            code = _answer(api, rpc)
            want = expected(identity, rpc.service, rpc.method.name)
            if want is None and code in REFUSED:
                wrong.append(f"{rpc.path}: refused ({code.name}), should be allowed")
            elif want is not None and code != want:
                wrong.append(f"{rpc.path}: {code.name}, should be {want.name}")
    finally:
        api.close()
    assert not wrong, "\n".join(wrong)
    # The matrix covered the whole API, the access services included.
    assert {rpc.service for rpc in RPCS} >= {*ACCESS, "UserService", "AuditService"}


def test_agent_credential_opens_only_its_own_clusters_stream(fleet: Fleet) -> None:
    channel = fleet.plane.channel()
    connect = channel.stream_stream(
        f"/{AGENT_SERVICE}/Connect",
        request_serializer=agent_pb2.AgentMessage.SerializeToString,
        response_deserializer=agent_pb2.ControlMessage.FromString,
    )
    hello = agent_pb2.AgentMessage(hello=agent_pb2.Hello(cluster="beta", agent_version="0"))
    try:
        for identity, code in [
            (AGENT, grpc.StatusCode.PERMISSION_DENIED),  # alpha's credential, beta's hello
            (ADMIN, grpc.StatusCode.UNAUTHENTICATED),
            (EDITOR, grpc.StatusCode.UNAUTHENTICATED),
            (ANONYMOUS, grpc.StatusCode.UNAUTHENTICATED),
        ]:
            token = fleet.tokens[identity]
            metadata: tuple[tuple[str, str | bytes], ...] = (
                (("authorization", f"Bearer {token}"),) if token else ()
            )
            with pytest.raises(grpc.RpcError) as raised:
                for _ in connect(iter([hello]), metadata=metadata, timeout=10):
                    pass
            assert raised.value.code() == code, (identity, raised.value.details())
    finally:
        channel.close()


def _config_map(name: str, namespace: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": name, "namespace": namespace},
        "data": {"k": "v"},
    }


def _secret(name: str, namespace: str, value: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": name, "namespace": namespace},
        "stringData": {"password": value},
    }


def _apply(client: Client, manifest: dict[str, Any]) -> None:
    client.apply_template(work_pb2.ResourceTemplate(manifest=structs.to_struct(manifest)))


def _list(client: Client, namespace: str = "", kind: str = "") -> list[str]:
    items = client.list_templates("v1" if kind else "", kind, namespace)
    return sorted(f"{item.manifest['kind']}/{item.manifest['metadata']['name']}" for item in items)


def test_namespace_limited_editor(fleet: Fleet) -> None:
    team = fleet.client("team-editor")
    try:
        _apply(team, _config_map("ours", "team-a"))
        with pytest.raises(ClientError, match="may not reach namespace team-b") as raised:
            _apply(team, _config_map("theirs", "team-b"))
        assert raised.value.code == grpc.StatusCode.PERMISSION_DENIED
        with pytest.raises(ClientError, match="may not write cluster-scoped objects"):
            _apply(team, {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "x"}})
        with pytest.raises(ClientError, match="may not reach every namespace"):
            _list(team)
        assert "ConfigMap/ours" in _list(team, "team-a")
        # Cluster-scoped objects are read: the fleet is everybody's to see.
        team.list_objects(kinds.MEMBER_CLUSTER)
    finally:
        team.close()
    _apply(fleet.admin, _config_map("theirs", "team-b"))
    viewer = fleet.client("team-viewer")
    try:
        with pytest.raises(ClientError, match="may not reach namespace team-b"):
            viewer.get_template("v1", "ConfigMap", "theirs", "team-b")
    finally:
        viewer.close()


def test_viewers_and_operators_do_not_read_secrets(fleet: Fleet) -> None:
    _apply(fleet.admin, _secret("db", "vault", "s3cr3t-value"))
    _apply(fleet.admin, _config_map("settings", "vault"))
    for identity in (VIEWER, OPERATOR):
        client = fleet.client(identity)
        try:
            with pytest.raises(ClientError, match="may not read Secrets") as raised:
                client.get_template("v1", "Secret", "db", "vault")
            assert raised.value.code == grpc.StatusCode.PERMISSION_DENIED
            with pytest.raises(ClientError, match="may not read Secrets"):
                _list(client, "vault", kind="Secret")
            # Listing every kind shows everything else.
            assert _list(client, "vault") == ["ConfigMap/settings"]
        finally:
            client.close()
    editor = fleet.client(EDITOR)
    try:
        secret = editor.get_template("v1", "Secret", "db", "vault")
        assert secret.manifest["metadata"]["name"] == "db"
        assert _list(editor, "vault") == ["ConfigMap/settings", "Secret/db"]
    finally:
        editor.close()


def test_deleted_users_token_stops_working(fleet: Fleet) -> None:
    _, token = fleet.admin.create_user("short-lived", VIEWER)
    client = Client(fleet.config(token))
    try:
        assert client.version().version
        assert fleet.admin.delete_user("short-lived")
        with pytest.raises(ClientError) as raised:
            client.version()
        assert raised.value.code == grpc.StatusCode.UNAUTHENTICATED
        assert "short-lived" not in [user.name for user in fleet.admin.list_users()]
    finally:
        client.close()


def test_rotating_a_users_token_replaces_it(fleet: Fleet) -> None:
    _, first = fleet.admin.create_user("rotated", VIEWER)
    with pytest.raises(ClientError, match="already exists") as raised:
        fleet.admin.create_user("rotated", VIEWER)
    assert raised.value.code == grpc.StatusCode.ALREADY_EXISTS
    user, second = fleet.admin.create_user("rotated", EDITOR, rotate=True)
    assert user.role == EDITOR and second != first
    old, new = (
        Client(fleet.config(first)),
        Client(fleet.config(second)),
    )
    try:
        with pytest.raises(ClientError) as refused:
            old.version()
        assert refused.value.code == grpc.StatusCode.UNAUTHENTICATED
        _apply(new, _config_map("by-rotated", "default"))
    finally:
        old.close()
        new.close()


@pytest.mark.parametrize(
    ("user", "field"),
    [
        (access_pb2.User(name="Bad Name", role="viewer"), "user.name"),
        (access_pb2.User(name="x", role="root"), "user.role"),
        (access_pb2.User(name="x", role="operator", namespaces=["a"]), "user.namespaces"),
        (
            access_pb2.User(name="x", role="viewer", namespaces=["Not_A_Label"]),
            "user.namespaces[0]",
        ),
    ],
)
def test_bad_users_are_refused_naming_the_field(
    fleet: Fleet, user: access_pb2.User, field: str
) -> None:
    with pytest.raises(ClientError) as raised:
        fleet.admin.call(fleet.admin.users.Create, access_pb2.UserServiceCreateRequest(user=user))
    assert raised.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert str(raised.value).startswith(f"INVALID_ARGUMENT: {field}: "), str(raised.value)


def test_audit_log(fleet: Fleet) -> None:
    started = datetime.datetime.now(datetime.UTC)
    editor, viewer = fleet.client(EDITOR), fleet.client(VIEWER)
    anonymous = Client(fleet.config(""))
    try:
        _apply(editor, _config_map("audited", "team-a"))
        with pytest.raises(ClientError):
            _apply(viewer, _config_map("refused", "team-a"))
        with pytest.raises(ClientError):
            _apply(anonymous, _config_map("anonymous", "team-a"))
        _apply(fleet.admin, _secret("audited-secret", "team-a", "value"))
        editor.get_template("v1", "Secret", "audited-secret", "team-a")
        # Reads of anything but Secrets are not audited.
        viewer.get_template("v1", "ConfigMap", "audited", "team-a")
    finally:
        for client in (editor, viewer, anonymous):
            client.close()
    events = fleet.admin.audit_events(started)
    seen = [(e.identity, e.verb, e.kind, e.namespace, e.name, e.code) for e in events]
    assert ("editor-user", "Apply", "ConfigMap", "team-a", "audited", "OK") in seen
    assert any(
        who == "viewer-user" and verb == "Apply" and code == "PERMISSION_DENIED"
        for who, verb, _, _, _, code in seen
    ), seen
    assert any(who == "" and code == "UNAUTHENTICATED" for who, *_, code in seen), seen
    assert ("admin", "Apply", "Secret", "team-a", "audited-secret", "OK") in seen
    assert ("editor-user", "Get", "Secret", "team-a", "audited-secret", "OK") in seen
    assert not [s for s in seen if s[1] == "Get" and s[2] == "ConfigMap"], seen
    for event in events:
        assert event.time.ToDatetime(datetime.UTC) >= started - datetime.timedelta(seconds=1)
        assert event.method.startswith("/archipel.") and event.peer and event.replica
    # Only the admin reads the audit log.
    viewer = fleet.client(VIEWER)
    try:
        with pytest.raises(ClientError) as raised:
            viewer.audit_events(None)
        assert raised.value.code == grpc.StatusCode.PERMISSION_DENIED
    finally:
        viewer.close()


def test_audit_log_file_is_private(fleet: Fleet) -> None:
    log = fleet.plane.audit_log
    assert log.exists()
    assert log.stat().st_mode & 0o777 == 0o600


def test_cli_users_and_audit(
    fleet: Fleet, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    admin = tmp_path / "admin.yaml"
    fleet.plane.write_cli_config(admin)
    viewer = tmp_path / "viewer.yaml"
    create = ["user", "create", "cli-viewer", "--role", "viewer", "-o", str(viewer)]
    assert cli.main(["--config", str(admin), *create]) == 0
    assert viewer.stat().st_mode & 0o777 == 0o600
    # The printed config is all the new user needs.
    assert cli.main(["--config", str(viewer), "version"]) == 0
    manifest = tmp_path / "cm.yaml"
    manifest.write_text(yaml.safe_dump(_config_map("from-cli-viewer", "default")))
    capsys.readouterr()
    assert cli.main(["--config", str(viewer), "apply", "-f", str(manifest)]) == 1
    error = capsys.readouterr().err
    assert len(error.strip().splitlines()) == 1
    assert "cli-viewer (viewer) may not change templates" in error

    assert cli.main(["--config", str(admin), "user", "list"]) == 0
    listed = capsys.readouterr().out
    assert any(line.split()[:3] == ["cli-viewer", "viewer", "*"] for line in listed.splitlines())

    assert cli.main(["--config", str(admin), "audit", "--since", "1h"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["TIME", "IDENTITY", "VERB", "OBJECT", "CODE"]
    assert any(
        "cli-viewer" in line
        and "ConfigMap/default/from-cli-viewer" in line
        and line.endswith("PERMISSION_DENIED")
        for line in lines
    ), lines
    assert cli.main(["--config", str(admin), "audit", "--since", "soon"]) == 1
    assert "--since: 'soon' is not a duration" in capsys.readouterr().err

    assert cli.main(["--config", str(admin), "user", "delete", "cli-viewer"]) == 0
    assert cli.main(["--config", str(viewer), "version"]) == 1
    assert cli.main(["--config", str(admin), "user", "delete", "cli-viewer"]) == 1
    assert "user cli-viewer not found" in capsys.readouterr().err


def test_audit_since_must_be_a_valid_timestamp(fleet: Fleet) -> None:
    request = access_pb2.AuditServiceListRequest()
    request.since.seconds, request.since.nanos = 1, -5
    with pytest.raises(ClientError) as raised:
        fleet.admin.call(access_pb2_grpc.AuditServiceStub(fleet.admin.channel).List, request)
    assert raised.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert str(raised.value).startswith("INVALID_ARGUMENT: since: "), str(raised.value)


def test_a_watch_the_client_cancels_is_audited_and_harms_nothing(fleet: Fleet) -> None:
    """A Watch that may include Secrets is audited when it ends. One the client cancels
    is over before the audit record is written: the record must not touch the call's
    context then (gRPC had freed it; asking it for the peer crashed the process)."""
    _apply(fleet.admin, _config_map("watched", "watched"))
    started = datetime.datetime.now(datetime.UTC)
    editor = fleet.client(EDITOR)
    try:
        stream = editor.templates.Watch(
            service_pb2.ResourceTemplateServiceWatchRequest(namespace="watched"),
            metadata=editor.metadata,
            timeout=30,
        )
        next(iter(stream))  # the first event: the Watch is being served
        stream.cancel()
        # The control plane is still there, and says so in the audit log.
        events = fleet.admin.audit_events(started)
    finally:
        editor.close()
    watches = [e for e in events if e.verb == "Watch" and e.identity == "editor-user"]
    assert [e.code for e in watches] == ["CANCELLED"], watches
    assert watches[0].peer
    assert fleet.plane.process.running
