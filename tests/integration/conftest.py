"""Fixtures shared by the integration tests (a real etcd, from tests/conftest.py)."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import pytest

from archipel.fleet.etcd import EtcdServer
from controlplane.etcd import Etcd
from controlplane.store import Store


@pytest.fixture
async def store(etcd_server: EtcdServer) -> AsyncIterator[Store]:
    """A store on the session's etcd, under a prefix of its own."""
    etcd = Etcd([etcd_server.endpoint], prefix=f"/test-{uuid.uuid4().hex[:8]}/")
    await etcd.connect()
    yield Store(etcd)
    await etcd.close()
