"""Two control-plane replicas on one etcd, one admin token: a template applied through
one replica reaches the member; the replica the agent is connected to is killed
(``kill -9``), a change applied through the other one reaches the member too, the
agent having failed over to it. Real processes on a real member cluster."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from kubernetes import client as k8s
from kubernetes.client.exceptions import ApiException

from archipel.client import Client
from archipel.fleet.controlplane import AgentProcess, ControlPlaneProcess, ControlPlaneReplicas
from archipel.fleet.members import Fleet, Member
from tests.e2e.conftest import configmap, policy, wait_for

pytestmark = pytest.mark.members(count=1, profile="api")


@pytest.fixture
def replicas(members: Fleet, tmp_path: Path) -> Iterator[ControlPlaneReplicas]:
    assert members.etcd is not None
    started = ControlPlaneReplicas(
        2,
        etcd_endpoint=members.etcd.endpoint,
        etcd_prefix=f"/replicas-{uuid.uuid4().hex[:8]}/",
        directory=tmp_path / "cp",
        heartbeat_interval=1,
        cluster_grace_period=4,
    )
    started.start()
    yield started
    started.stop()


def _data(member: Member, namespace: str, name: str) -> dict[str, str] | None:
    try:
        found = k8s.CoreV1Api(member.api_client()).read_namespaced_config_map(name, namespace)
    except ApiException as error:
        if error.status == 404:
            return None
        raise
    data: dict[str, str] = found.data or {}
    return data


def _connected_to(
    agent: AgentProcess, replicas: ControlPlaneReplicas
) -> ControlPlaneProcess | None:
    """The replica the agent's log last says it connected to."""
    lines = [line for line in agent.process.log_tail(200).splitlines() if " connected to " in line]
    if not lines:
        return None
    return next((r for r in replicas.replicas if f"connected to {r.address} " in lines[-1]), None)


def _apply(plane: ControlPlaneProcess, *documents: dict[str, object]) -> None:
    # One replica's own address only: the write must go through that replica.
    api = Client(plane.config())
    try:
        for document in documents:
            api.apply_document(document)
    finally:
        api.close()


def test_a_change_reaches_the_member_after_the_agents_replica_is_killed(
    members: Fleet, replicas: ControlPlaneReplicas
) -> None:
    member = next(iter(members))
    namespace = f"e2e-{uuid.uuid4().hex[:6]}"
    assert replicas[0].admin_token == replicas[1].admin_token
    agent = replicas.agent(0, member=member, token_file=replicas.join(member), heartbeat_interval=1)
    assert agent.process.argv[3] == f"--server={replicas[0].address},{replicas[1].address}"
    agent.start()
    try:
        first = replicas[0]
        _apply(
            first,
            configmap(namespace, "settings", {"version": "1"}),
            policy(
                namespace,
                "settings",
                cluster_names=[member.name],
                kind="ConfigMap",
                api_version="v1",
            ),
        )
        wait_for(
            "version 1 in the member",
            lambda: (_data(member, namespace, "settings") or {}).get("version") == "1",
        )

        connected = wait_for("the agent's replica", lambda: _connected_to(agent, replicas))
        other = next(r for r in replicas.replicas if r is not connected)
        connected.process.kill()
        _apply(other, configmap(namespace, "settings", {"version": "2"}))
        wait_for(
            "version 2 in the member",
            lambda: (_data(member, namespace, "settings") or {}).get("version") == "2",
        )
        assert _connected_to(agent, replicas) is other
    finally:
        agent.stop()
