"""Backoff through tenacity, and client errors that keep their status code.

The informer backs off while etcd is unavailable and relists; the CLI's client retries
an unreachable server a few times and nothing else; a lookup before an Apply takes only
"not found" for "absent" and lets every other answer reach the user. Every sleep is
recorded, never slept.
"""

from __future__ import annotations

import asyncio
import types
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import grpc
import pytest

from agent.kube import KubeError
from agent.works import WorkManager
from archipel import client as client_module
from archipel import structs
from archipel.cli import main as cli
from archipel.client import Client, ClientError, Config
from archipel.core import kinds, scopes
from archipel.core.errors import Unavailable
from archipel.v1alpha1 import cluster_pb2, work_pb2
from controlplane import informers
from controlplane.etcd import Compacted, Event
from controlplane.informers import Informer

# Nothing listens here; no test below reaches the network.
NOWHERE = "127.0.0.1:9"


# -- the informer ----------------------------------------------------------------------


class _FakeEtcd:
    """Watches that fail as scripted, then one that stays open."""

    def __init__(self, failures: list[Exception]) -> None:
        self.failures = failures
        self.watches = 0
        self.open = asyncio.Event()

    async def watch(self, prefix: str, *, start_revision: int) -> AsyncIterator[list[Event]]:
        self.watches += 1
        if self.failures:
            raise self.failures.pop(0)
        self.open.set()
        await asyncio.Event().wait()  # open until cancelled
        yield []  # never reached; makes this an async generator


class _FakeStore:
    """Listings that fail with Unavailable ``outages[i]`` times before the i-th good one."""

    def __init__(self, outages: list[int], watch_failures: list[Exception]) -> None:
        self.outages = outages
        self.lists = 0
        self.etcd = _FakeEtcd(watch_failures)

    async def list(self, kind: Any, prefix: str, **_: Any) -> tuple[list[Any], str, int]:
        self.lists += 1
        if self.outages and self.outages[0] > 0:
            self.outages[0] -= 1
            raise Unavailable("etcd: connection refused")
        if self.outages:
            self.outages.pop(0)
        cluster = cluster_pb2.MemberCluster()
        cluster.metadata.name = "member1"
        cluster.metadata.resource_version = str(10 + self.lists)
        return [cluster], "", 10 + self.lists


def _recording_sleep(slept: list[float]) -> Callable[[float], Awaitable[None]]:
    async def sleep(seconds: float) -> None:
        slept.append(seconds)

    return sleep


def _informer(store: _FakeStore) -> Informer[cluster_pb2.MemberCluster]:
    return Informer(store, kinds.MEMBER_CLUSTER)  # type: ignore[arg-type]


async def test_informer_backs_off_on_unavailable_and_relists(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    slept: list[float] = []
    monkeypatch.setattr(informers, "BACKOFF", informers.BACKOFF.copy(sleep=_recording_sleep(slept)))
    # Two failed listings, then a good one; its watch breaks (Unavailable); the next
    # listing is good, its watch finds its revision compacted; the last watch holds.
    store = _FakeStore(
        outages=[2, 0, 0],
        watch_failures=[Unavailable("etcd: gone"), Compacted(compact_revision=12)],
    )
    informer = _informer(store)
    task = asyncio.create_task(informer.run())
    try:
        await asyncio.wait_for(store.etcd.open.wait(), timeout=5)
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    assert informer.synced.is_set()
    assert [c.metadata.name for c in informer.objects()] == ["member1"]
    assert (store.lists, store.etcd.watches) == (5, 3)
    # 0.1 s doubling while etcd is away; the count starts again after a good relist,
    # and a compacted revision is relisted at once.
    assert slept == pytest.approx([0.1, 0.2, 0.1])
    retries = [r for r in caplog.records if "retrying in" in r.getMessage()]
    assert [r.levelname for r in retries] == ["WARNING"] * 3
    assert "retrying in 0.2s" in retries[1].getMessage()


async def test_informer_ends_on_anything_but_unavailable(monkeypatch: pytest.MonkeyPatch) -> None:
    slept: list[float] = []
    monkeypatch.setattr(informers, "BACKOFF", informers.BACKOFF.copy(sleep=_recording_sleep(slept)))
    store = _FakeStore(outages=[0], watch_failures=[RuntimeError("a bug")])
    with pytest.raises(RuntimeError, match="a bug"):
        await asyncio.wait_for(_informer(store).run(), timeout=5)
    assert slept == []


# -- the CLI's client ------------------------------------------------------------------


class _RpcError(grpc.RpcError):
    def __init__(self, code: grpc.StatusCode) -> None:
        self._code = code

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return f"the server says {self._code.name.lower()}"


class _Method:
    """A unary method that fails with ``codes`` in turn, then answers."""

    def __init__(self, codes: list[grpc.StatusCode], answer: Any = "answer") -> None:
        self.codes = codes
        self.answer = answer
        self.calls = 0

    def __call__(self, request: Any, *, metadata: Any, timeout: float) -> Any:
        self.calls += 1
        if self.codes:
            raise _RpcError(self.codes.pop(0))
        return self.answer


@pytest.fixture
def slept(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    recorded: list[float] = []
    monkeypatch.setattr(
        client_module,
        "CONNECTION_RETRIES",
        client_module.CONNECTION_RETRIES.copy(sleep=recorded.append),
    )
    return recorded


@pytest.fixture
def client() -> Iterator[Client]:
    made = Client(Config(server=NOWHERE, token="t"))
    yield made
    made.close()


def test_call_retries_an_unreachable_server(client: Client, slept: list[float]) -> None:
    method = _Method([grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.UNAVAILABLE])
    assert client.call(method, object()) == "answer"
    assert method.calls == 3
    # Exponential, with up to 0.2 s of jitter on each wait.
    assert len(slept) == 2
    assert 0.2 <= slept[0] <= 0.4
    assert 0.4 <= slept[1] <= 0.6


def test_call_gives_up_on_an_unreachable_server(client: Client, slept: list[float]) -> None:
    method = _Method([grpc.StatusCode.UNAVAILABLE] * 10)
    with pytest.raises(ClientError, match="cannot reach the control plane") as raised:
        client.call(method, object())
    assert raised.value.code == grpc.StatusCode.UNAVAILABLE
    assert 1 < method.calls < 10  # a few tries, not forever
    assert len(slept) == method.calls - 1


@pytest.mark.parametrize(
    "code",
    [
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.NOT_FOUND,
        grpc.StatusCode.PERMISSION_DENIED,
        grpc.StatusCode.DEADLINE_EXCEEDED,
    ],
)
def test_call_does_not_retry_answers(
    code: grpc.StatusCode, client: Client, slept: list[float]
) -> None:
    method = _Method([code])
    with pytest.raises(ClientError, match=code.name) as raised:
        client.call(method, object())
    assert raised.value.code == code
    assert method.calls == 1
    assert slept == []


# -- lookups before an Apply, and archipel render --------------------------------------

TEMPLATE = {
    "apiVersion": "v1",
    "kind": "ConfigMap",
    "metadata": {"name": "web", "namespace": "shop"},
    "data": {"a": "b"},
}
POLICY = {
    "apiVersion": "policy.archipel.io/v1alpha1",
    "kind": "PropagationPolicy",
    "metadata": {"name": "web", "namespace": "shop"},
    "spec": {"resourceSelectors": [{"apiVersion": "v1", "kind": "ConfigMap", "name": "web"}]},
}


class _Stub:
    """Get fails with ``code``; Apply answers with what it was given."""

    def __init__(self, code: grpc.StatusCode) -> None:
        self.Get = _Method([code])
        self.applied: list[Any] = []

    def Apply(self, request: Any, *, metadata: Any, timeout: float) -> Any:
        self.applied.append(request)
        if isinstance(request, work_pb2.ResourceTemplate):
            manifest = structs.from_struct(request.manifest)
            manifest["metadata"]["resourceVersion"] = "7"
            return work_pb2.ResourceTemplate(manifest=structs.to_struct(manifest))
        return request


def test_template_apply_reports_a_refused_lookup(client: Client, slept: list[float]) -> None:
    stub = _Stub(grpc.StatusCode.PERMISSION_DENIED)
    client.templates = stub  # type: ignore[assignment]
    with pytest.raises(ClientError, match="PERMISSION_DENIED") as raised:
        client.apply_document(TEMPLATE)
    assert raised.value.code == grpc.StatusCode.PERMISSION_DENIED
    assert stub.applied == []  # nothing written under a false "created"


def test_template_apply_of_an_absent_template_says_created(
    client: Client, slept: list[float]
) -> None:
    stub = _Stub(grpc.StatusCode.NOT_FOUND)
    client.templates = stub  # type: ignore[assignment]
    assert client.apply_document(TEMPLATE) == ("configmap/web", "created")
    assert len(stub.applied) == 1


@pytest.mark.parametrize(
    ("code", "outcome"),
    [
        (grpc.StatusCode.NOT_FOUND, ("propagationpolicy/web", "created")),
        (grpc.StatusCode.PERMISSION_DENIED, None),
        (grpc.StatusCode.INTERNAL, None),
    ],
)
def test_api_kind_apply_tells_absent_from_refused(
    code: grpc.StatusCode,
    outcome: tuple[str, str] | None,
    client: Client,
    slept: list[float],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    stub = _Stub(code)
    monkeypatch.setattr(client_module.Client, "stub", lambda self, api_kind: stub)
    if outcome is not None:
        assert client.apply_document(POLICY) == outcome
        return
    with pytest.raises(ClientError, match=code.name) as raised:
        client.apply_document(POLICY)
    assert raised.value.code == code
    assert stub.applied == []


def test_render_reports_a_refused_work_lookup(
    slept: list[float], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Only a missing work means "render what it would hold"; a refusal is an error."""
    binding = work_pb2.PropagationBinding()
    binding.metadata.name = "web-configmap"
    monkeypatch.setattr(client_module.Client, "binding_of", lambda self, *args: binding)
    monkeypatch.setattr(
        client_module.Client, "template_scope", lambda self, *args: scopes.builtin_scope(*args)
    )
    stub = _Stub(grpc.StatusCode.PERMISSION_DENIED)
    monkeypatch.setattr(client_module.Client, "stub", lambda self, api_kind: stub)
    monkeypatch.setattr(
        client_module.Config, "load", classmethod(lambda cls, path=None: Config(NOWHERE, "t"))
    )
    assert cli.main(["render", "configmap/web", "-n", "shop", "--cluster", "member1"]) == 1
    assert "PERMISSION_DENIED" in capsys.readouterr().err
    assert stub.Get.calls == 1


# -- the agent's watches ---------------------------------------------------------------


class _Stop:
    """The manager's stop event, with waits recorded instead of slept."""

    def __init__(self, *, set_on_wait: bool = False) -> None:
        self.flag = False
        self.waits: list[float] = []
        self.set_on_wait = set_on_wait

    def is_set(self) -> bool:
        return self.flag

    def set(self) -> None:
        self.flag = True

    def wait(self, timeout: float | None = None) -> bool:
        self.waits.append(timeout or 0.0)
        self.flag = self.flag or self.set_on_wait
        return self.flag


class _Listed:
    def __init__(self) -> None:
        self.items: list[Any] = []
        self.metadata = types.SimpleNamespace(resourceVersion="5")


class _FakeKube:
    """The API server is down twice, then lists; its first watch breaks, the second
    ends normally after the agent was told to stop."""

    def __init__(self, stop: _Stop) -> None:
        self.stop = stop
        self.outages = 2
        self.lists = 0
        self.watched_from: list[str | None] = []
        self.dynamic = self

    def resource(self, api_version: str, kind: str) -> Any:
        if self.outages:
            self.outages -= 1
            raise KubeError("connection refused")
        return self

    def get(self, *, label_selector: str) -> _Listed:
        self.lists += 1
        return _Listed()

    def watch(self, resource: Any, *, resource_version: str | None, **_: Any) -> Iterator[Any]:
        self.watched_from.append(resource_version)
        if len(self.watched_from) == 1:
            raise KubeError("watch broke")
        self.stop.set()
        return iter([])


def test_agent_watch_backs_off_and_starts_over_with_a_fresh_list() -> None:
    stop = _Stop()
    kube = _FakeKube(stop)
    manager = WorkManager(kube, None, send=lambda message: None)  # type: ignore[arg-type]
    manager._stop = stop  # type: ignore[assignment]
    manager._watch_loop("apps/v1", "Deployment")
    assert stop.waits == pytest.approx([0.5, 1.0, 2.0])
    assert kube.lists == 2  # after the broken watch, a fresh list
    assert kube.watched_from == ["5", "5"]


def test_agent_watch_stops_while_backing_off() -> None:
    stop = _Stop(set_on_wait=True)
    kube = _FakeKube(stop)
    manager = WorkManager(kube, None, send=lambda message: None)  # type: ignore[arg-type]
    manager._stop = stop  # type: ignore[assignment]
    manager._watch_loop("apps/v1", "Deployment")
    assert stop.waits == [0.5]
    assert kube.outages == 1  # no attempt after the stop
