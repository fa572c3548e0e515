"""A crash of any long-lived task is loud: logged, NOT_SERVING first, then exit 1.

The crash is injected into an informer handler of a real control plane on a real
etcd (a handler that raises is a bug; a stored object that cannot be read is
quarantined instead, see test_hostile_storage).
"""

from __future__ import annotations

import asyncio
import dataclasses
import uuid
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from archipel.core import kinds
from archipel.fleet.controlplane import open_aio_channel
from archipel.fleet.etcd import EtcdServer
from archipel.v1alpha1 import agent_pb2, agent_pb2_grpc, cluster_pb2
from controlplane import metrics
from controlplane.context import Settings
from controlplane.server import ControlPlane, serve

pytestmark = pytest.mark.servers


def _settings(etcd_server: EtcdServer, tmp_path: Path) -> Settings:
    return Settings(
        etcd_endpoints=[etcd_server.endpoint],
        etcd_prefix=f"/supervision-{uuid.uuid4().hex[:8]}/",
        listen="127.0.0.1:0",
        admin_token_file=tmp_path / "admin-token",
        pki_dir=tmp_path / "pki",
    )


def _record(plane: ControlPlane) -> list[str]:
    """What the plane does on its way down, in order: NOT_SERVING, then stop."""
    happened: list[str] = []
    set_health = plane.health.set

    async def recording_set(service: str, status: Any) -> None:
        if status == health_pb2.HealthCheckResponse.NOT_SERVING:
            happened.append("not-serving")
        await set_health(service, status)

    plane.health.set = recording_set
    stop = plane.stop

    async def recording_stop() -> None:
        happened.append("stop")
        await stop()

    plane.stop = recording_stop  # type: ignore[method-assign]
    return happened


async def _serving(plane: ControlPlane, running: asyncio.Task[int]) -> None:
    while plane.server is None:
        assert not running.done(), running
        await asyncio.sleep(0.05)


async def test_a_crash_in_an_informer_handler_stops_the_process(
    etcd_server: EtcdServer, tmp_path: Path
) -> None:
    settings = _settings(etcd_server, tmp_path)
    plane = ControlPlane(settings)

    def crash(key: str, old: Any, new: Any) -> None:
        if new is not None and new["metadata"]["name"] == "boom":
            raise RuntimeError("injected")

    plane.context.templates.add_handler(crash)
    happened = _record(plane)
    running = asyncio.create_task(serve(settings, plane))
    await _serving(plane, running)
    template = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "boom", "namespace": "default"},
        "data": {"a": "b"},
    }
    await plane.store.create(kinds.RESOURCE_TEMPLATE, template)
    assert await asyncio.wait_for(running, timeout=30) == 1
    assert happened[0] == "not-serving" and "stop" in happened
    assert happened.index("stop") > happened.index("not-serving")


async def test_a_grpc_server_that_ends_on_its_own_stops_the_process(
    etcd_server: EtcdServer, tmp_path: Path
) -> None:
    settings = _settings(etcd_server, tmp_path)
    plane = ControlPlane(settings)
    happened = _record(plane)
    running = asyncio.create_task(serve(settings, plane))
    await _serving(plane, running)
    assert plane.server is not None
    await plane.server.stop(0)  # not through plane.stop: as if it died under us
    assert await asyncio.wait_for(running, timeout=30) == 1
    assert happened[0] == "not-serving"
    assert happened.index("stop") > happened.index("not-serving")


async def test_a_session_that_fails_ends_alone_and_loudly(
    etcd_server: EtcdServer, tmp_path: Path
) -> None:
    """A bug met while reading one agent's stream ends that stream with INTERNAL; the
    control plane and every other agent carry on."""
    settings = _settings(etcd_server, tmp_path)
    plane = ControlPlane(settings)
    running = asyncio.create_task(serve(settings, plane))
    await _serving(plane, running)
    cluster = cluster_pb2.MemberCluster()
    cluster.metadata.name = "m1"
    _, token = await plane.clusters.join(cluster, rotate=False)
    await plane.context.clusters.wait_for_revision(
        int(
            (
                await plane.store.must_get(kinds.MEMBER_CLUSTER, "memberclusters/_/m1")
            ).metadata.resource_version
        )
    )

    def broken(cluster: str, report: agent_pb2.WorkStatusReport) -> None:
        raise RuntimeError("injected")

    plane.work_status.report = broken  # type: ignore[method-assign]
    crashes = metrics.SESSION_CRASHES._value.get()
    outbox: asyncio.Queue[agent_pb2.AgentMessage] = asyncio.Queue()
    outbox.put_nowait(agent_pb2.AgentMessage(hello=agent_pb2.Hello(cluster="m1")))

    async def outgoing() -> Any:
        while True:
            yield await outbox.get()

    async with open_aio_channel(
        f"127.0.0.1:{plane.port}", tmp_path / "pki" / "ca" / "ca.crt"
    ) as channel:
        call = agent_pb2_grpc.AgentServiceStub(channel).Connect(
            outgoing(), metadata=[("authorization", f"Bearer {token}")]
        )
        with pytest.raises(grpc.aio.AioRpcError) as ended:
            async for message in call:
                if message.HasField("welcome"):
                    outbox.put_nowait(
                        agent_pb2.AgentMessage(status=agent_pb2.WorkStatusReport(name="w"))
                    )
        assert ended.value.code() == grpc.StatusCode.INTERNAL
        assert "injected" in (ended.value.details() or "")
        checked = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest())
        assert checked.status == health_pb2.HealthCheckResponse.SERVING
    assert metrics.SESSION_CRASHES._value.get() == crashes + 1
    assert not running.done()
    running.cancel()
    await plane.stop()


async def test_probes_get_the_health_service_on_a_plaintext_port_of_its_own(
    etcd_server: EtcdServer, tmp_path: Path
) -> None:
    """The kubelet's gRPC probes cannot speak TLS: the health service, and only it, is
    also served in plaintext, and says what the main port says."""
    settings = dataclasses.replace(_settings(etcd_server, tmp_path), health_listen="127.0.0.1:0")
    plane = ControlPlane(settings)
    running = asyncio.create_task(serve(settings, plane))
    await _serving(plane, running)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{plane.health_port}") as channel:
        probe = health_pb2_grpc.HealthStub(channel)
        checked = await probe.Check(health_pb2.HealthCheckRequest())
        assert checked.status == health_pb2.HealthCheckResponse.SERVING
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await agent_pb2_grpc.AgentServiceStub(channel).Connect(iter(())).read()
        assert refused.value.code() == grpc.StatusCode.UNIMPLEMENTED
        await plane.mark_not_serving()
        checked = await probe.Check(health_pb2.HealthCheckRequest())
        assert checked.status == health_pb2.HealthCheckResponse.NOT_SERVING
    running.cancel()
    await plane.stop()
