"""What this member holds, kept in the member itself so it survives agent restarts.

One ConfigMap per work in ``archipel-system`` records the work's uid and generation
and the objects it applied. On (re)connect the agent reads the ledger and tells the
control plane what it holds, so nothing unchanged is sent or applied again; when a
work shrinks or goes, the ledger says which objects to delete. A DaemonSet pod loses
its filesystem, but not its cluster, which is why the ledger lives there.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from typing import Any

import kubernetes
from kubernetes.client.exceptions import ApiException

from agent.kube import Kube

NAMESPACE = "archipel-system"
LEDGER_LABEL = "archipel.io/ledger"


@dataclasses.dataclass(frozen=True)
class ObjectRef:
    api_version: str
    kind: str
    namespace: str
    name: str

    @classmethod
    def of(cls, manifest: dict[str, Any]) -> ObjectRef:
        metadata = manifest.get("metadata", {})
        return cls(
            manifest["apiVersion"],
            manifest["kind"],
            metadata.get("namespace", ""),
            metadata["name"],
        )

    def as_list(self) -> list[str]:
        return [self.api_version, self.kind, self.namespace, self.name]


@dataclasses.dataclass
class Entry:
    """One held work: the objects it applied, what was applied, and how it looked after.

    ``projections[i]`` is the live object right after the apply, restricted to the
    fields of ``manifests[i]``: the baseline drift is judged against, even across
    agent restarts.
    """

    work: str
    uid: str
    generation: int
    objects: list[ObjectRef]
    manifests: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    projections: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    preserve_on_delete: bool = False


def _config_map_name(work: str) -> str:
    return "work-" + hashlib.sha256(work.encode()).hexdigest()[:20]


class Ledger:
    def __init__(self, kube: Kube) -> None:
        self.kube = kube
        self.entries: dict[str, Entry] = {}

    def _core(self) -> kubernetes.client.CoreV1Api:
        return kubernetes.client.CoreV1Api(self.kube.api_client)

    def _load(self) -> dict[str, Entry]:
        self.kube.ensure_namespace(NAMESPACE)
        items = (
            self._core()
            .list_namespaced_config_map(NAMESPACE, label_selector=f"{LEDGER_LABEL}=true")
            .items
        )
        entries = {}
        for item in items:
            data = item.data or {}
            try:
                entry = Entry(
                    work=data["work"],
                    uid=data["uid"],
                    generation=int(data["generation"]),
                    objects=[ObjectRef(*ref) for ref in json.loads(data["objects"])],
                    manifests=json.loads(data.get("manifests", "[]")),
                    projections=json.loads(data.get("projections", "[]")),
                )
            except (KeyError, ValueError, TypeError):
                continue  # a damaged entry is treated as not held: the work is resent
            entries[entry.work] = entry
        return entries

    async def load(self) -> None:
        self.entries = await self.kube.call(self._load)

    def _write(self, entry: Entry) -> None:
        body = {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {
                "name": _config_map_name(entry.work),
                "namespace": NAMESPACE,
                "labels": {LEDGER_LABEL: "true"},
            },
            "data": {
                "work": entry.work,
                "uid": entry.uid,
                "generation": str(entry.generation),
                "objects": json.dumps([ref.as_list() for ref in entry.objects]),
                "manifests": json.dumps(entry.manifests, separators=(",", ":")),
                "projections": json.dumps(entry.projections, separators=(",", ":")),
            },
        }
        self.kube.apply(body)

    async def record(self, entry: Entry) -> None:
        await self.kube.call(self._write, entry)
        self.entries[entry.work] = entry

    def _delete(self, work: str) -> None:
        try:
            self._core().delete_namespaced_config_map(_config_map_name(work), NAMESPACE)
        except ApiException as error:
            if error.status != 404:
                raise

    async def forget(self, work: str) -> None:
        await self.kube.call(self._delete, work)
        self.entries.pop(work, None)
