"""Users across control-plane replicas: a token issued by one replica works on every
other at once, and a deleted user is refused everywhere; each replica audits what it
served, and ``archipel audit`` reads them all."""

from __future__ import annotations

import dataclasses
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from archipel.client import Client, ClientError
from archipel.fleet.controlplane import ControlPlaneReplicas
from archipel.fleet.etcd import EtcdServer

pytestmark = pytest.mark.servers


@pytest.fixture
def replicas(etcd_server: EtcdServer, tmp_path: Path) -> Iterator[ControlPlaneReplicas]:
    plane = ControlPlaneReplicas(
        2,
        etcd_endpoint=etcd_server.endpoint,
        directory=tmp_path / "cp",
        etcd_prefix=f"/users-{uuid.uuid4().hex[:8]}/",
    )
    plane.start()
    yield plane
    plane.stop()


def _refused_within(client: Client, seconds: float) -> grpc.StatusCode | None:
    """Ask until the token is refused (its deletion has reached this replica's cache),
    for at most ``seconds``; the refusal's code."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            client.version()
        except ClientError as error:
            return error.code
    return None


def test_a_user_made_on_one_replica_is_known_to_the_other(
    replicas: ControlPlaneReplicas,
) -> None:
    first = replicas[0].client()
    try:
        _, token = first.create_user("roaming", "viewer")
        # Straight to the other replica, before its watch may have delivered the user.
        other = Client(dataclasses.replace(replicas[1].config(), token=token))
        try:
            assert other.version().version
            assert first.delete_user("roaming")
            assert _refused_within(other, 30) == grpc.StatusCode.UNAUTHENTICATED
        finally:
            other.close()
    finally:
        first.close()


def test_audit_reads_every_replica(replicas: ControlPlaneReplicas) -> None:
    both = replicas.client()
    try:
        for index in range(2):
            single = replicas[index].client()
            try:
                single.create_user(f"made-on-{index}", "viewer")
            finally:
                single.close()
        events = both.audit_events(None)
    finally:
        both.close()
    made = {(e.name, e.replica) for e in events if e.verb == "Create"}
    assert made == {("made-on-0", "replica-0"), ("made-on-1", "replica-1")}
