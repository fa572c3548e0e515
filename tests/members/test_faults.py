"""Fault injection on a member of its own: clients see the API server go and come back."""

from __future__ import annotations

import os
import queue
import threading
import uuid

import pytest
import urllib3
from kubernetes import client, watch
from kubernetes.client.exceptions import ApiException

from archipel.fleet.members import Fleet

pytestmark = pytest.mark.members(count=1, profile="api", isolated=True)


def _quick_client(fleet: Fleet) -> client.CoreV1Api:
    """A client that fails fast instead of retrying, so an outage is visible."""
    api_client = next(iter(fleet)).api_client()
    api_client.configuration.retries = False
    api_client.rest_client.pool_manager.connection_pool_kw["retries"] = False
    return client.CoreV1Api(api_client)


def test_client_sees_stop_and_restart(members: Fleet) -> None:
    member = next(iter(members))
    core = _quick_client(members)
    name = f"before-{uuid.uuid4().hex[:6]}"
    core.create_namespaced_config_map(
        "default", client.V1ConfigMap(metadata=client.V1ObjectMeta(name=name))
    )

    ended: queue.Queue[str] = queue.Queue()

    def watch_until_it_breaks() -> None:
        try:
            for _ in watch.Watch().stream(
                core.list_namespaced_config_map, "default", timeout_seconds=120
            ):
                pass
            ended.put("closed")
        except Exception as error:  # the client's view of the outage, whatever its type
            ended.put(type(error).__name__)

    watcher = threading.Thread(target=watch_until_it_breaks, daemon=True)
    watcher.start()

    member.stop_apiserver()
    try:
        assert member.state() == "stopped"
        # A busy machine may stop the server before the watch has connected: then the
        # client sees the outage as a refused connection.
        seen = ended.get(timeout=30)
        assert seen in {"closed", "ProtocolError", "MaxRetryError", "NewConnectionError"}
        with pytest.raises(urllib3.exceptions.HTTPError):
            core.list_namespaced_config_map("default", _request_timeout=2)
    finally:
        # The module's other tests share this member.
        member.start_apiserver()
    assert member.state() == "running"
    names = {cm.metadata.name for cm in core.list_namespaced_config_map("default").items}
    assert name in names, "data written before the restart must survive it"


def test_client_times_out_while_paused(members: Fleet) -> None:
    member = next(iter(members))
    core = _quick_client(members)
    member.pause_apiserver()
    try:
        assert member.state() == "paused"
        with pytest.raises(urllib3.exceptions.HTTPError):
            core.list_namespace(_request_timeout=1)
    finally:
        member.resume_apiserver()
    member.wait_apiserver(timeout=30)
    assert core.list_namespace(_request_timeout=10).items


def test_kill_takes_the_whole_member_down(members: Fleet) -> None:
    member = next(iter(members))
    pids = [p.pid for p in member.processes()]
    member.kill()
    assert all(not p.running for p in member.processes())
    for pid in pids:
        assert pid is not None
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
    with pytest.raises((urllib3.exceptions.HTTPError, ApiException)):
        _quick_client(members).list_namespace(_request_timeout=2)
