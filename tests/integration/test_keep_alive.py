"""An idle agent stream still hears from the control plane: the welcome promises a
message at least every keep_alive_seconds, and a KeepAlive keeps that promise when
there is nothing else to say. An agent that hears nothing for three times as long
moves to another replica (a frozen one keeps its connection open but silent; the
e2e test of replicas freezes one)."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from archipel.fleet.controlplane import ControlPlaneProcess
from archipel.fleet.etcd import EtcdServer
from archipel.v1alpha1 import agent_pb2
from tests.integration.agents import Api, RawAgent

pytestmark = pytest.mark.servers
CLUSTER = "quiet"


@pytest.fixture
async def api(etcd_server: EtcdServer, tmp_path: Path) -> AsyncIterator[Api]:
    plane = ControlPlaneProcess(
        etcd_endpoint=etcd_server.endpoint,
        etcd_prefix=f"/keepalive-{uuid.uuid4().hex[:8]}/",
        directory=tmp_path / "cp",
        heartbeat_interval=1,
    )
    plane.start()
    client = Api(plane)
    try:
        yield client
    finally:
        await client.close()
        plane.stop()


def _kinds(agent: RawAgent) -> list[str | None]:
    return [message.WhichOneof("message") for message in agent.received]


async def test_an_idle_stream_hears_keep_alives(api: Api) -> None:
    token = await api.join(CLUSTER)
    agent = RawAgent(api.plane, CLUSTER, token)
    agent.start(agent_pb2.Hello(cluster=CLUSTER))
    try:
        await agent.wait("the welcome", lambda: "welcome" in _kinds(agent))
        assert agent.received[0].welcome.keep_alive_seconds == 1
        await agent.wait(
            "two keep-alives on the idle stream",
            lambda: _kinds(agent).count("keep_alive") >= 2,
            seconds=15,
        )
    finally:
        await agent.close()
