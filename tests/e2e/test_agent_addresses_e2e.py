"""An agent given several control-plane addresses, the first one down (nothing listens
there), connects to the next: a real agent process on a real member cluster."""

from __future__ import annotations

import functools
import time
from pathlib import Path

import pytest

from archipel.core import kinds
from archipel.fleet.controlplane import AgentProcess, ControlPlaneProcess
from archipel.fleet.members import Fleet
from tests.integration.test_control_plane_addresses import nowhere

pytestmark = pytest.mark.members(count=1, profile="api")


def _ready(plane: ControlPlaneProcess, name: str) -> bool:
    client = plane.client()
    try:
        cluster = client.get_object(kinds.MEMBER_CLUSTER, name)
    finally:
        client.close()
    return any(c.type == "Ready" and c.status == "True" for c in cluster.status.conditions)


def test_an_agent_given_a_dead_address_first_connects_to_the_next(
    members: Fleet, tmp_path: Path
) -> None:
    assert members.etcd is not None
    plane = ControlPlaneProcess(
        etcd_endpoint=members.etcd.endpoint,
        etcd_prefix=f"/addresses-{tmp_path.name}/",
        directory=tmp_path / "cp",
        heartbeat_interval=1,
    )
    plane.start()
    member = next(iter(members))
    agent = AgentProcess(
        control_plane=plane,
        member=member,
        token_file=plane.join(member),
        heartbeat_interval=1,
        servers=[nowhere(), plane.address],
    )
    try:
        agent.start()
        deadline = time.monotonic() + 60
        ready = functools.partial(_ready, plane, member.name)
        while not ready():
            agent.process.check_running()
            assert time.monotonic() < deadline, f"no Ready heartbeat:\n{agent.process.log_tail()}"
            time.sleep(0.2)
        # It tried the dead address first, then moved on to the one that answered.
        log = agent.process.log_path.read_text()
        assert f"reconnecting to {plane.address}" in log
        assert f"connected to {plane.address}" in log
    finally:
        agent.stop()
        plane.stop()
