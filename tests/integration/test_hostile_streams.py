"""A real control plane on a real etcd against hostile stored objects and agent streams.

The agents here are the agent protocol spoken directly (tests/integration/agents.py),
so a test can send what no real agent would: a backlog too large for one message, a
hello claiming more works than any cluster has, a huge heartbeat. Stored objects are
planted in etcd by hand, as a buggy version or an operator with etcdctl could.
"""

from __future__ import annotations

import asyncio
import urllib.request
import uuid
from typing import Any

import grpc
import pytest
from google.protobuf import json_format

from archipel import structs
from archipel.core import kinds
from archipel.fleet.controlplane import ControlPlaneProcess
from archipel.fleet.etcd import EtcdServer
from archipel.v1alpha1 import (
    agent_pb2,
    override_pb2,
    service_pb2,
    work_pb2,
)
from controlplane.etcd import Etcd, Put
from tests.integration import agents
from tests.integration.agents import Api, RawAgent, eventually

pytestmark = pytest.mark.servers
NAMESPACE = "hostile"


def config_map(name: str, *, data: dict[str, Any] | None = None) -> dict[str, Any]:
    return agents.config_map(name, namespace=NAMESPACE, data=data)


async def test_a_backlog_larger_than_a_message_reaches_a_reconnecting_agent(api: Api) -> None:
    # 20 works of about 0.9 MiB wait for an agent that is not there: 18 MiB in all.
    # Before, the first batch took them all, went over the 16 MiB message limit, and
    # the stream failed the same way on every reconnect.
    token = await api.join("backlog")
    await api.propagate_config_maps("backlog", namespace=NAMESPACE)
    chunk = "x" * (100 * 1024)
    names = [f"big-{index}" for index in range(20)]
    for name in names:
        await api.apply(config_map(name, data={f"k{i}": chunk for i in range(9)}))

    async def all_works() -> bool:
        for name in names:
            if await api.work("backlog", f"{NAMESPACE}.{name}-configmap") is None:
                return False
        return True

    await eventually("the 20 works", all_works)
    agent = RawAgent(api.plane, "backlog", token)
    running = asyncio.create_task(agent.run(agent_pb2.Hello(cluster="backlog")))
    try:
        await asyncio.wait_for(agent.synced.wait(), timeout=60)
        assert {f"{NAMESPACE}.{name}-configmap" for name in names} <= set(agent.works)
        assert max(agent.message_sizes) < 16 * 1024 * 1024
        assert len([size for size in agent.message_sizes if size > 1024 * 1024]) > 1
    finally:
        running.cancel()
        await asyncio.gather(running, return_exceptions=True)
        await agent.close()


async def test_one_stream_cannot_claim_unbounded_work(api: Api) -> None:
    token = await api.join("greedy")
    agent = RawAgent(api.plane, "greedy", token)
    try:
        # More held works than any agent may hold: refused before anything is sent.
        hello = agent_pb2.Hello(cluster="greedy")
        for index in range(100_001):
            hello.held_works.add(name=f"w{index}", uid="u", generation=1)
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await asyncio.wait_for(agent.run(hello), timeout=60)
        assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "hello.heldWorks" in (refused.value.details() or "")

        # Within the bound, works the control plane does not know are deleted, in
        # bounded batches, and the stream is synced. This hello is larger than the
        # control plane's 4 MiB receive limit: it goes in parts.
        await agent.close()
        agent = RawAgent(api.plane, "greedy", token)  # a new outbox for a new stream
        hello = agent_pb2.Hello(cluster="greedy")
        for index in range(60_000):
            hello.held_works.add(
                name=f"some-namespace.a-rather-long-workload-name-{index}-deployment",
                uid=str(uuid.uuid4()),
                generation=1,
            )
        assert hello.ByteSize() > 4 * 1024 * 1024
        running = asyncio.create_task(agent.run(hello))
        await asyncio.wait_for(agent.synced.wait(), timeout=120)
        assert len(agent.deletes) == 60_000

        # A heartbeat past its limit ends the stream with the reason.
        huge = agent_pb2.Heartbeat(kubernetes_version="v1.35.4")
        for index in range(40_000):
            huge.api_enablements.add(group_version=f"group-{index}.widgets.example.com/v1")
        assert huge.ByteSize() > 1024 * 1024
        agent.outbox.put_nowait(agent_pb2.AgentMessage(heartbeat=huge))
        with pytest.raises(grpc.aio.AioRpcError) as ended:
            await asyncio.wait_for(running, timeout=30)
        assert ended.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "heartbeat" in (ended.value.details() or "")
    finally:
        await agent.close()


def _metric(plane: ControlPlaneProcess, name: str) -> float:
    text = urllib.request.urlopen(f"http://127.0.0.1:{plane.metrics_port}/metrics").read()
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.decode().splitlines()
        if line.startswith(name + "{") or line.startswith(name + " ")
    )


async def test_undecodable_objects_in_etcd_neither_stop_nor_block_the_control_plane(
    api: Api, etcd_server: EtcdServer
) -> None:
    plane = api.plane
    await api.join("target")
    await api.propagate_config_maps("target", namespace=NAMESPACE)
    await api.apply(config_map("settings"))
    work_name = f"{NAMESPACE}.settings-configmap"
    first = await eventually("the work", lambda: api.work("target", work_name))

    # Stop, then plant what cannot be decoded: over the work, and a template and a
    # binding of their own. Before, the works informer died on the first, nothing
    # propagated any more, and the control plane could not start again.
    plane.stop()
    etcd = Etcd([etcd_server.endpoint], prefix=plane_prefix(plane))
    await etcd.connect()
    try:
        work_key = kinds.PROPAGATION_WORK.key(kinds.execution_namespace("target"), work_name)
        current = await etcd.get(work_key)
        assert current is not None
        planted = [
            Put(work_key, b"\xff\xfe not a work", current.mod_revision),
            Put(f"templates/core/ConfigMap/{NAMESPACE}/junk", b"{not json", 0),
            Put(f"propagationbindings/{NAMESPACE}/junk-configmap", b"\x0a\x05ab", 0),
        ]
        assert await etcd.commit(planted) is not None
    finally:
        await etcd.close()
    plane.start(timeout=60)

    # The work is rewritten from its template, and the binding says it was.
    async def rewritten() -> work_pb2.PropagationWork | None:
        try:
            found = await api.work("target", work_name)
        except grpc.aio.AioRpcError:
            return None
        return found if found is not None and found.metadata.uid != first.metadata.uid else None

    await eventually("the work rewritten", rewritten)
    binding = await api.bindings.Get(
        service_pb2.GetRequest(namespace=NAMESPACE, name="settings-configmap"),
        metadata=api.metadata,
    )
    assert "WorksReadable" in {c.type for c in binding.status.conditions}

    # The undecodable template answers DATA_LOSS, is left out of lists, and deletes.
    junk = service_pb2.TemplateGetRequest(
        api_version="v1", kind="ConfigMap", namespace=NAMESPACE, name="junk"
    )
    with pytest.raises(grpc.aio.AioRpcError) as lost:
        await api.templates.Get(junk, metadata=api.metadata)
    assert lost.value.code() == grpc.StatusCode.DATA_LOSS
    listed = await api.templates.List(
        service_pb2.TemplateListRequest(api_version="v1", kind="ConfigMap"),
        metadata=api.metadata,
    )
    assert [structs.from_struct(t.manifest)["metadata"]["name"] for t in listed.items] == [
        "settings"
    ]
    await api.templates.Delete(
        service_pb2.TemplateDeleteRequest(
            api_version="v1", kind="ConfigMap", namespace=NAMESPACE, name="junk"
        ),
        metadata=api.metadata,
    )
    with pytest.raises(grpc.aio.AioRpcError) as gone:
        await api.templates.Get(junk, metadata=api.metadata)
    assert gone.value.code() == grpc.StatusCode.NOT_FOUND

    # Propagation goes on, and what was skipped is counted.
    await api.apply(config_map("after"))
    await eventually("a new work", lambda: api.work("target", f"{NAMESPACE}.after-configmap"))
    assert _metric(plane, "archipel_corrupt_objects_total") >= 3


async def test_a_work_nested_past_the_limit_is_never_written(api: Api) -> None:
    # The template is within the depth limit and so is the override's value; the work
    # they make together is not, so the binding says why and no work is written.
    await api.join("deep")
    await api.propagate_config_maps("deep", namespace=NAMESPACE)
    nested: dict[str, Any] = {"leaf": "x"}
    for _ in range(20):
        nested = {"n": nested}
    # Beneath the template's deepest object, not beside it.
    deepest = "/spec/inner" + "/n" * 20 + "/more"
    override = {
        "metadata": {"name": "deepen", "namespace": NAMESPACE},
        "spec": {
            "resourceSelectors": [{"apiVersion": "v1", "kind": "ConfigMap", "name": "deep"}],
            "overrideRules": [
                {
                    "overriders": {
                        "plaintext": [{"path": deepest, "operator": "add", "value": nested}]
                    }
                }
            ],
        },
    }
    await api.overrides.Apply(
        json_format.ParseDict(override, override_pb2.OverridePolicy()), metadata=api.metadata
    )
    manifest = config_map("deep")
    manifest["spec"] = {"inner": nested}
    await api.apply(manifest)

    async def refused() -> str:
        try:
            binding = await api.bindings.Get(
                service_pb2.GetRequest(namespace=NAMESPACE, name="deep-configmap"),
                metadata=api.metadata,
            )
        except grpc.aio.AioRpcError:
            return ""
        for condition in binding.status.conditions:
            if condition.type == "OverridesApplied" and condition.status == "False":
                return str(condition.message)
        return ""

    message = await eventually("the binding's OverridesApplied=False", refused)
    assert "nested deeper than" in message
    assert await api.work("deep", f"{NAMESPACE}.deep-configmap") is None


def plane_prefix(plane: ControlPlaneProcess) -> str:
    for argument in plane.process.argv:
        if argument.startswith("--etcd-prefix="):
            return argument.split("=", 1)[1]
    raise AssertionError("the control plane has no --etcd-prefix")
