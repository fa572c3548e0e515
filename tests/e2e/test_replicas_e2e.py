"""Two control-plane replicas on one etcd, one admin token. Real processes on a real
member cluster.

* A template applied through one replica reaches the member; the replica the agent is
  connected to is killed (``kill -9``), a change applied through the other one reaches
  the member too, the agent having failed over to it.
* The replicas share the controllers' shards; one frozen (SIGSTOP) loses its shards
  to the other once its lease expires, and, woken, finds them gone and writes nothing
  with them, then gets its share back.
* A rolling restart (SIGTERM, start, one replica after the other) costs the agent one
  reconnect per restart of its replica, and its resume re-delivers nothing.

The takeover times are printed (``-s``), held only to generous bounds.
"""

from __future__ import annotations

import re
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from kubernetes import client as k8s
from kubernetes.client.exceptions import ApiException

from archipel.client import Client
from archipel.core import kinds
from archipel.fleet.controlplane import AgentProcess, ControlPlaneProcess, ControlPlaneReplicas
from archipel.fleet.members import Fleet, Member
from tests.e2e.conftest import configmap, policy, wait_for

pytestmark = pytest.mark.members(count=1, profile="api")
SHARDS = 32
LEASE_SECONDS = 2


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
        extra_args=[f"--shards={SHARDS}", f"--shard-lease-seconds={LEASE_SECONDS}"],
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


def _change_arrives(
    plane: ControlPlaneProcess, member: Member, namespace: str, version: str, when: str = ""
) -> None:
    """Apply version ``version`` of the settings through ``plane``; wait for the member."""
    _apply(plane, configmap(namespace, "settings", {"version": version}))
    wait_for(
        f"version {version} in the member{when}",
        lambda: (_data(member, namespace, "settings") or {}).get("version") == version,
    )


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
        killed = time.monotonic()
        _change_arrives(other, member, namespace, "2")
        # The dead replica's shards wait for its lease to expire; the agent reconnects.
        print(
            f"a change applied after kill -9 of the agent's replica reached the member "
            f"{time.monotonic() - killed:.1f}s after the kill (lease {LEASE_SECONDS}s)"
        )
        assert _connected_to(agent, replicas) is other
    finally:
        agent.stop()


def _shards_held(plane: ControlPlaneProcess) -> int:
    url = f"http://127.0.0.1:{plane.metrics_port}/metrics"
    with urllib.request.urlopen(url, timeout=5) as response:
        text = response.read().decode()
    found = re.search(r"^archipel_shards_held (\S+)$", text, re.MULTILINE)
    return int(float(found.group(1))) if found else 0


def _shared(replicas: ControlPlaneReplicas) -> bool:
    held = [_shards_held(r) for r in replicas.replicas]
    return sum(held) == SHARDS and all(held)


def _setup(
    members: Fleet, replicas: ControlPlaneReplicas, namespace: str
) -> tuple[Member, AgentProcess]:
    member = next(iter(members))
    agent = replicas.agent(0, member=member, token_file=replicas.join(member), heartbeat_interval=1)
    agent.start()
    _apply(
        replicas[0],
        configmap(namespace, "settings", {"version": "1"}),
        policy(
            namespace, "settings", cluster_names=[member.name], kind="ConfigMap", api_version="v1"
        ),
    )
    wait_for(
        "version 1 in the member",
        lambda: (_data(member, namespace, "settings") or {}).get("version") == "1",
    )
    return member, agent


def test_replicas_share_the_shards_and_a_frozen_one_loses_its_share(
    members: Fleet, replicas: ControlPlaneReplicas
) -> None:
    namespace = f"e2e-{uuid.uuid4().hex[:6]}"
    member, agent = _setup(members, replicas, namespace)
    try:
        wait_for("the shards to be shared", lambda: _shared(replicas))
        api = Client(replicas[1].config())
        try:
            # Written by the replica holding the stream, read through either.
            wait_for(
                "the cluster's agent to show connected",
                lambda: api.get_object(kinds.MEMBER_CLUSTER, member.name).status.agent.connected,
            )
        finally:
            api.close()
        frozen, other = replicas[0], replicas[1]
        frozen.process.pause()
        paused = time.monotonic()
        try:
            wait_for("the other replica to take every shard", lambda: _shards_held(other) == SHARDS)
            took = time.monotonic() - paused
            print(f"shards of a frozen replica taken over in {took:.1f}s (lease {LEASE_SECONDS}s)")
            assert took < 5 * LEASE_SECONDS
            _change_arrives(other, member, namespace, "2", ", with one replica frozen")
        finally:
            frozen.process.resume()
        wait_for(
            "the woken replica to find its lease gone",
            lambda: "its lease expired; its shards are gone" in frozen.process.log_tail(400),
        )
        wait_for("the shards to be shared again", lambda: _shared(replicas))
        _change_arrives(frozen, member, namespace, "3")
    finally:
        agent.stop()


IN_SYNC = re.compile(r"in sync: (\d+) sent, (\d+) deleted, (\d+) unchanged")


def test_a_rolling_restart_redelivers_nothing(
    members: Fleet, replicas: ControlPlaneReplicas
) -> None:
    namespace = f"e2e-{uuid.uuid4().hex[:6]}"
    member, agent = _setup(members, replicas, namespace)
    try:
        wait_for("the shards to be shared", lambda: _shared(replicas))
        offset = len(IN_SYNC.findall(agent.process.log_tail(1000)))
        for replica in replicas.replicas:
            restarted = time.monotonic()
            replica.restart()
            wait_for("the shards to be shared after the restart", lambda: _shared(replicas))
            print(
                f"{replica.process.name} restarted, shards shared again in "
                f"{time.monotonic() - restarted:.1f}s"
            )
        wait_for(
            "the agent's resume on another replica",
            lambda: len(IN_SYNC.findall(agent.process.log_tail(1000))) > offset,
        )
        resumes = IN_SYNC.findall(agent.process.log_tail(1000))[offset:]
        # One resume for the restart of the agent's replica (the other's restart does
        # not touch its stream), and none of them sent a work the agent held.
        assert 1 <= len(resumes) <= 2, resumes
        assert all(sent == "0" and deleted == "0" for sent, deleted, _ in resumes), resumes
        _change_arrives(replicas[1], member, namespace, "2", " after the rolling restart")
    finally:
        agent.stop()
