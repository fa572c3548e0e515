"""Real `api`-profile members: the kubernetes client works against each, and they are isolated."""

from __future__ import annotations

import queue
import threading
import uuid
from collections.abc import Iterator

import pytest
from kubernetes import client, config, watch
from kubernetes.client.exceptions import ApiException
from kubernetes.dynamic import DynamicClient

from archipel.fleet.members import Fleet, Member

pytestmark = pytest.mark.members(count=2, profile="api")


@pytest.fixture
def namespace(members: Fleet) -> Iterator[str]:
    """The same fresh namespace name in every member, deleted afterwards."""
    name = f"t-{uuid.uuid4().hex[:8]}"
    for member in members:
        client.CoreV1Api(member.api_client()).create_namespace(
            client.V1Namespace(metadata=client.V1ObjectMeta(name=name))
        )
    yield name
    for member in members:
        try:
            client.CoreV1Api(member.api_client()).delete_namespace(name)
        except ApiException as error:
            if error.status != 404:
                raise


def _watch_config_maps(
    member: Member, namespace: str, since: str, events: queue.Queue[tuple[str, str]]
) -> None:
    core = client.CoreV1Api(member.api_client())
    stream = watch.Watch()
    for event in stream.stream(
        core.list_namespaced_config_map,
        namespace,
        resource_version=since,
        field_selector="metadata.name=settings",
        timeout_seconds=30,
    ):
        events.put((event["type"], event["object"].metadata.name))
        if event["type"] == "DELETED":
            stream.stop()


def test_create_apply_watch_and_delete_in_each_member(members: Fleet, namespace: str) -> None:
    for member in members:
        api_client = member.api_client()
        core = client.CoreV1Api(api_client)
        events: queue.Queue[tuple[str, str]] = queue.Queue()
        # Watching from the list's resourceVersion sees every later event, however
        # late the thread starts.
        since = core.list_namespaced_config_map(namespace).metadata.resource_version
        watcher = threading.Thread(
            target=_watch_config_maps, args=(member, namespace, since, events), daemon=True
        )
        watcher.start()

        created = core.create_namespaced_config_map(
            namespace,
            client.V1ConfigMap(metadata=client.V1ObjectMeta(name="settings"), data={"a": "1"}),
        )
        assert created.metadata.uid

        dynamic = DynamicClient(api_client)
        config_maps = dynamic.resources.get(api_version="v1", kind="ConfigMap")
        applied = dynamic.server_side_apply(
            config_maps,
            body={
                "apiVersion": "v1",
                "kind": "ConfigMap",
                "metadata": {"name": "settings", "namespace": namespace},
                "data": {"b": "2"},
            },
            field_manager="archipel-test",
        )
        assert applied.data["b"] == "2"
        managers = {entry.manager for entry in applied.metadata.managedFields}
        assert "archipel-test" in managers

        core.delete_namespaced_config_map("settings", namespace)
        seen = [events.get(timeout=30) for _ in range(3)]
        assert [kind for kind, _ in seen] == ["ADDED", "MODIFIED", "DELETED"]
        assert {name for _, name in seen} == {"settings"}
        watcher.join(timeout=10)


def test_namespace_deletion_completes(members: Fleet) -> None:
    """The api profile runs the namespace controller, so Terminating ends."""
    member = next(iter(members))
    core = client.CoreV1Api(member.api_client())
    name = f"gone-{uuid.uuid4().hex[:8]}"
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=name)))
    core.create_namespaced_config_map(
        name, client.V1ConfigMap(metadata=client.V1ObjectMeta(name="inside"))
    )
    core.delete_namespace(name)
    stream = watch.Watch()
    deleted = False
    for event in stream.stream(
        core.list_namespace, field_selector=f"metadata.name={name}", timeout_seconds=60
    ):
        if event["type"] == "DELETED":
            deleted = True
            stream.stop()
    assert deleted, f"namespace {name} still exists after 60s"


def test_members_do_not_share_objects(members: Fleet, namespace: str) -> None:
    first, second = list(members)[:2]
    client.CoreV1Api(first.api_client()).create_namespaced_config_map(
        namespace, client.V1ConfigMap(metadata=client.V1ObjectMeta(name="only-in-first"))
    )
    with pytest.raises(ApiException) as missing:
        client.CoreV1Api(second.api_client()).read_namespaced_config_map("only-in-first", namespace)
    assert missing.value.status == 404
    assert first.etcd_prefix != second.etcd_prefix


def test_members_do_not_share_credentials(members: Fleet) -> None:
    """One member's admin certificate is not accepted by another member."""
    first, second = list(members)[:2]
    configuration = client.Configuration()
    config.load_kube_config(str(first.kubeconfig), client_configuration=configuration)
    configuration.host = second.server
    configuration.ssl_ca_cert = str(second.ca_cert)
    with pytest.raises(ApiException) as rejected:
        client.CoreV1Api(client.ApiClient(configuration)).list_namespace()
    assert rejected.value.status == 401


def test_rbac_is_enforced(members: Fleet, namespace: str) -> None:
    member = next(iter(members))
    user = f"alice-{uuid.uuid4().hex[:6]}"
    alice = client.CoreV1Api(config.new_client_from_config(str(member.user_kubeconfig(user))))
    with pytest.raises(ApiException) as forbidden:
        alice.list_namespaced_config_map(namespace)
    assert forbidden.value.status == 403

    rbac = client.RbacAuthorizationV1Api(member.api_client())
    rbac.create_namespaced_role(
        namespace,
        client.V1Role(
            metadata=client.V1ObjectMeta(name="read-config-maps"),
            rules=[client.V1PolicyRule(api_groups=[""], resources=["configmaps"], verbs=["list"])],
        ),
    )
    rbac.create_namespaced_role_binding(
        namespace,
        client.V1RoleBinding(
            metadata=client.V1ObjectMeta(name="alice-reads"),
            role_ref=client.V1RoleRef(
                api_group="rbac.authorization.k8s.io", kind="Role", name="read-config-maps"
            ),
            subjects=[
                client.RbacV1Subject(api_group="rbac.authorization.k8s.io", kind="User", name=user)
            ],
        ),
    )
    assert alice.list_namespaced_config_map(namespace).items == []


def test_version_reports_the_built_release(members: Fleet) -> None:
    member = next(iter(members))
    info = client.VersionApi(member.api_client()).get_code()
    assert info.git_version.startswith("v1.")
    assert info.minor.isdigit() and int(info.minor) >= 30
