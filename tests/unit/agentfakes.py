"""Fakes for the agent's pure-logic tests: a member API server, builders, and a way to
run a WorkManager's queue to the end without workers, timers or threads.

A :class:`FakeKube` stands in for kube-apiserver, so the tests see exactly what the
agent writes and how often it applies. WorkManagers are built with the ``watch`` seam:
no watch thread starts, the kinds that would be watched are recorded in
``FakeKube.watched``, and a test delivers watch events itself through
``WorkManager.on_event``, the entry point the watch threads use.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any, TypeVar

from agent.ledger import Ledger, entry_of
from agent.works import WorkManager
from archipel import structs
from archipel.core.names import SYSTEM_NAMESPACE
from archipel.v1alpha1 import agent_pb2, work_pb2

R = TypeVar("R")
SECRET = "s3cr3t-" + "x" * 64


class FakeKube:
    """Objects by (apiVersion, kind, namespace, name); applies replace and count."""

    def __init__(self) -> None:
        self.objects: dict[tuple[str, str, str, str], dict[str, Any]] = {}
        self.applied: list[dict[str, Any]] = []
        self.watched: list[tuple[str, str]] = []
        self.version = 0

    async def call(self, function: Callable[..., R], *args: Any, **kwargs: Any) -> R:
        return function(*args, **kwargs)

    @staticmethod
    def key(manifest: dict[str, Any]) -> tuple[str, str, str, str]:
        metadata = manifest["metadata"]
        return (
            manifest["apiVersion"],
            manifest["kind"],
            metadata.get("namespace", ""),
            metadata["name"],
        )

    def get(self, api_version: str, kind: str, namespace: str, name: str) -> Any:
        found = self.objects.get((api_version, kind, namespace, name))
        return copy.deepcopy(found) if found is not None else None

    def put(self, manifest: dict[str, Any]) -> dict[str, Any]:
        """Store ``manifest`` as the API server would: with a new resourceVersion."""
        self.version += 1
        stored = copy.deepcopy(manifest)
        previous = self.objects.get(self.key(manifest))
        if previous is not None and "deletionTimestamp" in previous["metadata"]:
            # No write clears a deletion under way.
            stored["metadata"]["deletionTimestamp"] = previous["metadata"]["deletionTimestamp"]
        stored["metadata"]["resourceVersion"] = str(self.version)
        stored["metadata"]["uid"] = "uid-" + stored["metadata"]["name"]
        self.objects[self.key(manifest)] = stored
        return copy.deepcopy(stored)

    def apply(self, manifest: dict[str, Any]) -> dict[str, Any]:
        self.applied.append(copy.deepcopy(manifest))
        return self.put(manifest)

    def delete(self, api_version: str, kind: str, namespace: str, name: str) -> bool:
        return self.objects.pop((api_version, kind, namespace, name), None) is not None

    def store_config_map(self, body: dict[str, Any], *, exists: bool) -> None:
        self.apply(body)

    def delete_owned(
        self, api_version: str, kind: str, namespace: str, name: str, *, annotation: str, value: str
    ) -> bool:
        found = self.objects.get((api_version, kind, namespace, name))
        if found is None or (found["metadata"].get("annotations") or {}).get(annotation) != value:
            return False
        return self.delete(api_version, kind, namespace, name)

    def ensure_namespace(self, name: str, *, labels: dict[str, str] | None = None) -> bool:
        return False

    def start_watch(self, api_version: str, kind: str) -> None:
        """The WorkManager's ``watch`` seam: record the kind, start nothing."""
        self.watched.append((api_version, kind))

    def ledger_maps(self) -> list[dict[str, Any]]:
        return [o for k, o in self.objects.items() if k[2] == SYSTEM_NAMESPACE]

    def applied_in(self, namespace: str) -> list[dict[str, Any]]:
        return [m for m in self.applied if m["metadata"].get("namespace") == namespace]


class MemberLedger(Ledger):
    """The real ledger on a FakeKube. Its ConfigMaps are written with ``kube.store_config_map``,
    which the fake has; forgetting one goes through the kubernetes client's CoreV1Api,
    which it has not, so ``forget`` removes the map from the fake's objects instead."""

    def __init__(self, kube: FakeKube) -> None:
        super().__init__(kube)  # type: ignore[arg-type]
        self.member = kube

    async def forget(self, work: str) -> None:
        for key, stored in list(self.member.objects.items()):
            if key[2] == self.namespace and stored["data"]["work"] == work:
                del self.member.objects[key]
        self.entries.pop(work, None)


def configmap(name: str, data: dict[str, str]) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": name, "namespace": "app"},
        "data": data,
    }


def secret(name: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": name, "namespace": "app"},
        "stringData": {"password": SECRET},
    }


def work(
    *manifests: dict[str, Any],
    generation: int = 1,
    name: str = "w1",
    conflict_resolution: str = "",
    preserve_resources_on_deletion: bool = False,
) -> work_pb2.PropagationWork:
    built = work_pb2.PropagationWork()
    built.metadata.name = name
    built.metadata.uid = "uid-" + name
    built.metadata.generation = generation
    built.spec.conflict_resolution = conflict_resolution
    built.spec.preserve_resources_on_deletion = preserve_resources_on_deletion
    for manifest in manifests:
        built.spec.workload.manifests.append(structs.to_struct(manifest))
    return built


def manager(
    kube: FakeKube, ledger: Ledger | None = None
) -> tuple[WorkManager, list[agent_pb2.AgentMessage]]:
    """A WorkManager on ``kube`` that starts no watch, and the messages it sends."""
    sent: list[agent_pb2.AgentMessage] = []
    works = WorkManager(
        kube,  # type: ignore[arg-type]
        ledger or MemberLedger(kube),
        send=sent.append,
        watch=kube.start_watch,
    )
    return works, sent


def restarted(kube: FakeKube) -> WorkManager:
    """A new agent process on the same member: the ledger as read back from it."""
    ledger = MemberLedger(kube)
    for stored in kube.ledger_maps():
        entry = entry_of(stored["data"])
        ledger.entries[entry.work] = entry
    works, _ = manager(kube, ledger)
    works.restore()
    return works


async def applied_once(kube: FakeKube, *manifests: dict[str, Any]) -> WorkManager:
    works, _ = manager(kube)
    works.receive(work(*manifests))
    await works.reconcile("w1")
    return works


async def settle(works: WorkManager, *, limit: int = 100) -> dict[str, Exception]:
    """Reconcile queued keys, one at a time as a single worker would, until the queue
    is idle; return the keys whose reconcile failed, with their errors.

    A failed key is not retried (the agent's workers would retry it after a backoff),
    so the queue is idle once every key has been handled once more than it was added:
    a test asserts on what happened, not on what has not happened yet.
    """
    failures: dict[str, Exception] = {}
    for _ in range(limit):
        if works.queue.idle():
            return failures
        key = await works.queue.get()
        try:
            await works.reconcile(key)
        except Exception as error:
            failures[key] = error
        else:
            failures.pop(key, None)
            works.queue.forget(key)
        finally:
            works.queue.done(key)
    raise AssertionError(f"the queue is still busy after {limit} reconciles")


def statuses(sent: list[agent_pb2.AgentMessage], name: str) -> list[agent_pb2.WorkStatusReport]:
    """The status reports sent for work ``name``, oldest first."""
    return [m.status for m in sent if m.HasField("status") and m.status.name == name]


def deletions(sent: list[agent_pb2.AgentMessage]) -> list[agent_pb2.WorkDeleted]:
    return [m.deleted for m in sent if m.HasField("deleted")]
