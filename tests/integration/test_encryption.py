"""Secrets encrypted at rest, on a real etcd, read back from etcd directly.

A Secret applied through the API is nowhere in etcd in clear (its template, its
binding, its work: the whole prefix is scanned with a plain etcd client), yet the API
answers it and the agent receives the real data. A key rotation runs as the
documentation says: a new first key, a restart, old values still read,
``archipel admin reencrypt`` moves everything to the new key (etcd then names only
it), and once the old key is removed everything still reads. What no key decrypts is
a corrupt object: DATA_LOSS, skipped by listings and caches, never plaintext.
"""

from __future__ import annotations

import asyncio
import base64
import json
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from contextlib import closing
from pathlib import Path
from typing import Any

import etcd3aio
import grpc
import pytest
import yaml
from etcd3aio.kv import prefix_range_end
from google.protobuf import json_format
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from archipel import structs
from archipel.client import Client, ClientError, api_kind_by_name
from archipel.core import kinds
from archipel.core.errors import Corrupt
from archipel.fleet.controlplane import (
    ControlPlaneProcess,
    encryption_config_text,
    write_encryption_config,
)
from archipel.fleet.etcd import EtcdServer
from archipel.v1alpha1 import agent_pb2, policy_pb2, service_pb2
from archipel.v1alpha2 import storage_pb2, storage_pb2_grpc
from controlplane import encryption, plan
from controlplane.etcd import Etcd, Put
from controlplane.informers import Informer
from controlplane.store import Store
from tests.integration.agents import Api, RawAgent, eventually

pytestmark = pytest.mark.servers

NAMESPACE = "vault"
CLUSTER = "enc-member"
KEY1 = ("key1", bytes(range(32)))
KEY2 = ("key2", bytes(range(64, 96)))
ENCRYPTED = b"k8s:enc:aesgcm:v1:"


def secret(name: str, value: str, *, string_value: str = "") -> dict[str, Any]:
    manifest: dict[str, Any] = {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": name, "namespace": NAMESPACE},
        "type": "Opaque",
        "data": {"password": base64.b64encode(value.encode()).decode()},
    }
    if string_value:
        manifest["stringData"] = {"token": string_value}
    return manifest


def secrets_policy(cluster: str) -> policy_pb2.PropagationPolicy:
    return json_format.ParseDict(
        {
            "metadata": {"name": f"secrets-to-{cluster}", "namespace": NAMESPACE},
            "spec": {
                "resourceSelectors": [{"apiVersion": "v1", "kind": "Secret"}],
                "placement": {
                    "clusterAffinity": {"clusterNames": [cluster]},
                    # No agent may have said the cluster is ready: schedule there anyway.
                    "clusterTolerations": [{"operator": "Exists"}],
                },
            },
        },
        policy_pb2.PropagationPolicy(),
    )


async def raw_values(endpoint: str, prefix: str) -> dict[str, bytes]:
    """Every key under ``prefix`` and its value, exactly as etcd holds it: a plain etcd
    client, none of Archipel's code in between."""
    client = etcd3aio.Etcd3Client([endpoint.removeprefix("http://")])
    await client.connect()
    try:
        assert client.kv is not None
        start = prefix.encode()
        response = await client.kv.get(start, range_end=prefix_range_end(start))
        return {kv.key.decode()[len(prefix) :]: kv.value for kv in response.kvs}
    finally:
        await client.close()


def raw(plane: ControlPlaneProcess, etcd: EtcdServer) -> dict[str, bytes]:
    return asyncio.run(raw_values(etcd.endpoint, plane.etcd_prefix))


def key_names(values: dict[str, bytes]) -> set[str]:
    """The aesgcm key names etcd's values are stored under."""
    return {
        value[len(ENCRYPTED) :].split(b":", 1)[0].decode()
        for value in values.values()
        if value.startswith(ENCRYPTED)
    }


def secret_keys(name: str) -> tuple[str, str, str]:
    """Where a Secret's template, its binding and its work for CLUSTER are stored."""
    binding = f"{name}-secret"
    return (
        kinds.template_key("v1", "Secret", NAMESPACE, name),
        kinds.PROPAGATION_BINDING.key(NAMESPACE, binding),
        kinds.PROPAGATION_WORK.key(kinds.execution_namespace(CLUSTER), f"{NAMESPACE}.{binding}"),
    )


def assert_nowhere_in_clear(values: dict[str, bytes], *texts: str) -> None:
    """None of ``texts`` is in any value, in clear or base64 (a Secret's data)."""
    for text in texts:
        forms = (text.encode(), base64.b64encode(text.encode()))
        for key, value in values.items():
            for form in forms:
                assert form not in value, f"{form!r} is in clear in etcd, at {key}"


# -- applied through the API, read from etcd directly ----------------------------------------


async def test_etcd_holds_no_plaintext_of_a_secret_and_the_agent_gets_the_real_data(
    api: Api, etcd_server: EtcdServer
) -> None:
    canary = f"canary-{uuid.uuid4().hex}"
    string_canary = f"string-canary-{uuid.uuid4().hex}"
    config_canary = f"config-canary-{uuid.uuid4().hex}"
    manifest = secret("db", canary, string_value=string_canary)
    token = await api.join(CLUSTER)
    agent = RawAgent(api.plane, CLUSTER, token)
    agent.start(agent_pb2.Hello(cluster=CLUSTER))
    template_key, binding_key, work_key = secret_keys("db")
    work_name = work_key.rsplit("/", 1)[1]
    try:
        await api.apply(manifest)
        # A ConfigMap is not configured (make up's default encrypts Secrets only).
        await api.apply(
            {
                "apiVersion": "v1",
                "kind": "ConfigMap",
                "metadata": {"name": "plain", "namespace": NAMESPACE},
                "data": {"greeting": config_canary},
            }
        )
        await api.policies.Apply(secrets_policy(CLUSTER), metadata=api.metadata)
        await agent.wait("the Secret's work", lambda: work_name in agent.works)

        # Decrypted on the way out: the agent applies the real data.
        (sent,) = agent.works[work_name].spec.workload.manifests
        assert structs.from_struct(sent)["data"] == manifest["data"]
        assert structs.from_struct(sent)["stringData"] == manifest["stringData"]
        # And through the API.
        got = await api.templates.Get(
            service_pb2.TemplateGetRequest(
                api_version="v1", kind="Secret", namespace=NAMESPACE, name="db"
            ),
            metadata=api.metadata,
        )
        assert structs.from_struct(got.manifest)["data"] == manifest["data"]
        stored_work = await api.work(CLUSTER, work_name)
        assert stored_work is not None
        assert (
            structs.from_struct(stored_work.spec.workload.manifests[0])["data"]
            == (manifest["data"])
        )

        values = await raw_values(etcd_server.endpoint, api.plane.etcd_prefix)
        assert_nowhere_in_clear(values, canary, string_canary)
        # The template, its binding (a digest of the data) and its work, each
        # encrypted; the ConfigMap in clear, as configured.
        for key in (template_key, binding_key, work_key):
            assert values[key].startswith(ENCRYPTED + b"key1:"), key
        config_map = kinds.template_key("v1", "ConfigMap", NAMESPACE, "plain")
        assert config_canary.encode() in values[config_map]
    finally:
        await agent.close()


def test_a_value_no_key_decrypts_is_corrupt_never_plaintext(
    plane: ControlPlaneProcess, etcd_server: EtcdServer, tmp_path: Path
) -> None:
    key = kinds.template_key("v1", "Secret", NAMESPACE, "lost")

    async def plant() -> None:
        client = etcd3aio.Etcd3Client([etcd_server.endpoint.removeprefix("http://")])
        await client.connect()
        try:
            assert client.kv is not None
            # Encrypted with a key this control plane does not have.
            await client.kv.put(
                (plane.etcd_prefix + key).encode(), ENCRYPTED + b"gone:" + bytes(60)
            )
        finally:
            await client.close()

    client = plane.client()
    try:
        client.apply_document(secret("kept", "kept-value"))
        asyncio.run(plant())
        with pytest.raises(ClientError) as raised:
            client.get_template("v1", "Secret", "lost", NAMESPACE)
        assert raised.value.code == grpc.StatusCode.DATA_LOSS
        assert "encrypted with aesgcm key 'gone', which is not configured" in str(raised.value)
        listed = client.list_templates("v1", "Secret", NAMESPACE)
        assert [structs.from_struct(t.manifest)["metadata"]["name"] for t in listed] == ["kept"]

        done = cli(plane, tmp_path, "admin", "reencrypt", "--dry-run")
        assert done.returncode == 1
        assert done.stderr.count("\n") == 1
        assert "1 objects no configured key decrypts were left" in done.stderr
        assert row(done.stdout, "secrets") == ["secrets", "0", "1", "1", "0"]
    finally:
        client.close()
    # Left as it was: nothing is ever read as plaintext, nor rewritten from garbage.
    assert raw(plane, etcd_server)[key] == ENCRYPTED + b"gone:" + bytes(60)


def test_the_storage_service_is_served_listed_healthy_and_admin_only(
    plane: ControlPlaneProcess,
) -> None:
    service = "archipel.v1alpha2.StorageAdminService"
    with plane.channel() as channel:
        reflection = reflection_pb2_grpc.ServerReflectionStub(channel)
        (answer,) = reflection.ServerReflectionInfo(
            iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=30
        )
        assert service in {s.name for s in answer.list_services_response.service}
        health = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service=service), timeout=30
        )
        assert health.status == health_pb2.HealthCheckResponse.SERVING
        reencrypt = storage_pb2_grpc.StorageAdminServiceStub(channel).Reencrypt
        with pytest.raises(grpc.RpcError) as refused:
            reencrypt(storage_pb2.ReencryptRequest(dry_run=True), timeout=30)
        assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
        with closing(plane.client()) as client:
            agent_token = client.join("storage-probe")[1]
        with pytest.raises(grpc.RpcError) as refused:
            reencrypt(
                storage_pb2.ReencryptRequest(dry_run=True),
                metadata=(("authorization", f"Bearer {agent_token}"),),
                timeout=30,
            )
        assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
        answered = reencrypt(
            storage_pb2.ReencryptRequest(dry_run=True),
            metadata=(("authorization", f"Bearer {plane.admin_token}"),),
            timeout=30,
        )
        assert "memberclusters.cluster.archipel.io" in {r.resource for r in answered.resources}


# -- rotation, as docs/encryption.md tells it ----------------------------------------------


def cli(plane: ControlPlaneProcess, tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    config = tmp_path / "archipel.yaml"
    plane.write_cli_config(config)
    return subprocess.run(
        [sys.executable, "-m", "archipel.cli.main", "--config", str(config), *args],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def row(table: str, resource: str) -> list[str]:
    """The cells of ``resource``'s row in ``archipel admin reencrypt``'s table."""
    (found,) = [line.split() for line in table.splitlines() if line.split()[:1] == [resource]]
    return found


@pytest.fixture
def rotating(etcd_server: EtcdServer, tmp_path: Path) -> Iterator[Callable[..., Any]]:
    """Starts control planes on one etcd prefix and directory, one at a time, each with
    the configuration it is given (None: no encryption), as restarts would."""
    prefix = f"/rotation-{uuid.uuid4().hex[:8]}/"
    config = tmp_path / "cp" / "encryption-config.yaml"
    running: list[ControlPlaneProcess] = []

    def start(keys: list[tuple[str, bytes]] | None) -> ControlPlaneProcess:
        for previous in running:
            previous.stop()
        if keys is not None:
            write_encryption_config(config, encryption_config_text(keys))
        plane = ControlPlaneProcess(
            etcd_endpoint=etcd_server.endpoint,
            etcd_prefix=prefix,
            directory=tmp_path / "cp",
            encrypt=keys is not None,
            encryption_config=config,
        )
        plane.start()
        running.append(plane)
        return plane

    yield start
    for plane in running:
        plane.stop()


def read_secret(client: Client, name: str) -> str:
    manifest = structs.from_struct(client.get_template("v1", "Secret", name, NAMESPACE).manifest)
    return base64.b64decode(manifest["data"]["password"]).decode()


def test_keys_rotate_and_reencrypt_leaves_only_the_new_key_in_etcd(
    rotating: Callable[..., ControlPlaneProcess], etcd_server: EtcdServer, tmp_path: Path
) -> None:
    values = {name: f"{name}-{uuid.uuid4().hex}" for name in ("early", "a", "b", "c")}

    # Written before encryption was configured: plaintext, as it was.
    plane = rotating(None)
    with closing(plane.client()) as client:
        client.join(CLUSTER)
        client.apply_document(secret("early", values["early"]))
        policy_kind = api_kind_by_name("PropagationPolicy")
        assert policy_kind is not None
        client.apply_object(policy_kind, secrets_policy(CLUSTER))
    early_template = secret_keys("early")[0]

    def works_written(plane: ControlPlaneProcess, *names: str) -> None:
        """Until the works of ``names`` are in etcd (the controllers write them)."""

        async def written() -> bool:
            stored = await raw_values(etcd_server.endpoint, plane.etcd_prefix)
            return all(secret_keys(name)[2] in stored for name in names)

        asyncio.run(eventually(f"the works of {', '.join(names)}", written))

    works_written(plane, "early")
    stored_early = json.loads(raw(plane, etcd_server)[early_template])
    assert base64.b64decode(stored_early["data"]["password"]).decode() == values["early"]

    # Turned on with key1: what is stored in clear still reads; new writes are key1's.
    plane = rotating([KEY1])
    with closing(plane.client()) as client:
        assert read_secret(client, "early") == values["early"]
        client.apply_document(secret("a", values["a"]))
        client.apply_document(secret("b", values["b"]))
    works_written(plane, "a", "b")
    stored = raw(plane, etcd_server)
    assert not stored[early_template].startswith(ENCRYPTED)
    assert key_names(stored) == {"key1"}

    # A new key, second: it decrypts, key1 still writes (every replica learns the new
    # key before any writes with it). Then first: key2 writes, key1 still reads.
    plane = rotating([KEY1, KEY2])
    plane = rotating([KEY2, KEY1])
    with closing(plane.client()) as client:
        for name in ("early", "a", "b"):
            assert read_secret(client, name) == values[name]
        client.apply_document(secret("c", values["c"]))
    works_written(plane, "c")
    assert key_names(raw(plane, etcd_server)) == {"key1", "key2"}

    done = cli(plane, tmp_path, "admin", "reencrypt")
    assert done.returncode == 0, done.stderr
    # early (plaintext) and a, b (key1) rewritten; c is key2's already.
    assert row(done.stdout, "secrets") == ["secrets", "3", "1", "0", "0"]
    assert row(done.stdout, "propagationworks.work.archipel.io")[1:3] == ["3", "1"]
    stored = raw(plane, etcd_server)
    assert key_names(stored) == {"key2"}
    for name in values:
        for key in secret_keys(name):
            assert stored[key].startswith(ENCRYPTED + b"key2:"), key
    assert_nowhere_in_clear(stored, *values.values())
    # Nothing left to do.
    again = cli(plane, tmp_path, "admin", "reencrypt")
    assert again.returncode == 0, again.stderr
    assert row(again.stdout, "secrets") == ["secrets", "0", "4", "0", "0"]

    # key1 removed: everything still reads, templates and works alike.
    plane = rotating([KEY2])
    with closing(plane.client()) as client:
        for name, value in values.items():
            assert read_secret(client, name) == value
            work = client.get_object(
                kinds.PROPAGATION_WORK,
                secret_keys(name)[2].rsplit("/", 1)[1],
                kinds.execution_namespace(CLUSTER),
            )
            manifest = structs.from_struct(work.spec.workload.manifests[0])
            assert base64.b64decode(manifest["data"]["password"]).decode() == value


def _sync(check: Callable[[], object]) -> Callable[[], Any]:
    """``check`` as the coroutine function ``eventually`` polls."""

    async def run() -> object:
        return check()

    return run


# -- the store, in process: grouped transactions, the informers' list and watch ---------------


async def test_every_way_into_and_out_of_etcd_goes_through_the_transformer(
    etcd_server: EtcdServer,
) -> None:
    config = encryption.parse_config(yaml.safe_load(encryption_config_text([KEY1])))
    etcd = Etcd(
        [etcd_server.endpoint],
        prefix=f"/store-{uuid.uuid4().hex[:8]}/",
        transformer=encryption.Encryption(config),
    )
    await etcd.connect()
    store = Store(etcd)
    kind = kinds.RESOURCE_TEMPLATE
    informer = Informer(store, kind)
    try:
        # One plan, several keys, one guarded transaction.
        await store.commit([plan.Create(kind, secret(f"s{i}", f"value-{i}")) for i in range(3)])
        task = asyncio.create_task(informer.run())
        await asyncio.wait_for(informer.synced.wait(), 30)
        # The informer's first list decrypted them.
        for i in range(3):
            cached = informer.get(kinds.template_key("v1", "Secret", NAMESPACE, f"s{i}"))
            assert cached is not None and cached["data"] == secret("x", f"value-{i}")["data"]
        # A grouped write (concurrent commits share a transaction), seen by the watch.
        await asyncio.gather(*(store.create(kind, secret(f"w{i}", f"late-{i}")) for i in range(5)))
        await eventually(
            "the watch to deliver w4",
            _sync(lambda: informer.get(kinds.template_key("v1", "Secret", NAMESPACE, "w4"))),
        )
        stored = await raw_values(etcd_server.endpoint, etcd.prefix)
        assert len(stored) == 8
        assert all(value.startswith(ENCRYPTED + b"key1:") for value in stored.values())
        assert_nowhere_in_clear(stored, *(f"value-{i}" for i in range(3)))

        # A value no key decrypts, arriving by the watch: quarantined, not cached as
        # plaintext.
        lost = kinds.template_key("v1", "Secret", NAMESPACE, "s0")
        current = await etcd.get(lost, raw=True)
        assert current is not None
        tampered = current.value[:-1] + bytes([current.value[-1] ^ 1])
        unconfigured = Etcd([etcd_server.endpoint], prefix=etcd.prefix)  # no transformer
        await unconfigured.connect()
        try:
            # A control plane without the configuration never takes ciphertext for an
            # object either.
            with pytest.raises(Corrupt, match="has no --encryption-provider-config"):
                await Store(unconfigured).get(kind, lost)
            assert await unconfigured.commit([Put(lost, tampered, current.mod_revision)])
        finally:
            await unconfigured.close()
        await eventually("the quarantine", _sync(lambda: lost in informer.quarantined))
        assert "fails authentication" in informer.quarantined[lost][1]
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    finally:
        await etcd.close()
