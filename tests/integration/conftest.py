"""Fixtures shared by the integration tests (a real etcd, from tests/conftest.py)."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from archipel.fleet.controlplane import ControlPlaneProcess
from archipel.fleet.etcd import EtcdServer
from controlplane.etcd import Etcd
from controlplane.store import Store
from tests.integration.agents import Api


@pytest.fixture
async def store(etcd_server: EtcdServer) -> AsyncIterator[Store]:
    """A store on the session's etcd, under a prefix of its own."""
    etcd = Etcd([etcd_server.endpoint], prefix=f"/test-{uuid.uuid4().hex[:8]}/")
    await etcd.connect()
    yield Store(etcd)
    await etcd.close()


@pytest.fixture
def plane(etcd_server: EtcdServer, tmp_path: Path) -> Iterator[ControlPlaneProcess]:
    """A control plane process of the test's own, on the session's etcd."""
    process = ControlPlaneProcess(
        etcd_endpoint=etcd_server.endpoint,
        etcd_prefix=f"/plane-{uuid.uuid4().hex[:8]}/",
        directory=tmp_path / "cp",
    )
    process.start()
    yield process
    process.stop()


@pytest.fixture
async def api(plane: ControlPlaneProcess) -> AsyncIterator[Api]:
    """The admin API of ``plane``."""
    client = Api(plane)
    yield client
    await client.close()
