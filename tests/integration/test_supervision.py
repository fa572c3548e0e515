"""A crash of any long-lived task is loud: logged, NOT_SERVING first, then exit 1.

The crash is injected into an informer handler of a real control plane on a real
etcd (a handler that raises is a bug; a stored object that cannot be read is
quarantined instead, see test_hostile_storage).
"""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path
from typing import Any

import pytest
from grpc_health.v1 import health_pb2

from archipel.core import kinds
from archipel.testing.etcd import EtcdServer
from controlplane.context import Settings
from controlplane.server import ControlPlane, serve

pytestmark = pytest.mark.servers


async def test_a_crash_in_an_informer_handler_stops_the_process(
    etcd_server: EtcdServer, tmp_path: Path
) -> None:
    settings = Settings(
        etcd_endpoints=[etcd_server.endpoint],
        etcd_prefix=f"/supervision-{uuid.uuid4().hex[:8]}/",
        listen="127.0.0.1:0",
        admin_token_file=tmp_path / "admin-token",
    )
    plane = ControlPlane(settings)
    happened: list[str] = []

    def crash(key: str, old: Any, new: Any) -> None:
        if new is not None and new["metadata"]["name"] == "boom":
            raise RuntimeError("injected")

    plane.context.templates.add_handler(crash)
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
    running = asyncio.create_task(serve(settings, plane))
    while plane.server is None:
        assert not running.done(), running
        await asyncio.sleep(0.05)
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
