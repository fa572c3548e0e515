"""What this member holds, kept in the member itself so it survives agent restarts.

One ConfigMap per work in ``archipel-system`` records the work's uid and generation,
the objects it applied, and per object two sha256 hashes: of the manifest applied and
of the live object right after the apply, restricted to the applied fields (its
*projection*, the baseline drift is judged against). On (re)connect the agent reads
the ledger and tells the control plane what it holds; when a work shrinks or goes,
the ledger says which objects to delete. A DaemonSet pod loses its filesystem, but not
its cluster, which is why the ledger lives there.

The ledger holds identities and hashes, never contents: a ConfigMap is limited to
1 MiB, less than the largest template Archipel accepts, and a copy of a Secret's data
in ``archipel-system`` would leak it. The contents (manifests and projections) are
kept in memory only, for works received in this process's lifetime; after a restart
the agent has hashes only until the control plane sends the work again (see
:mod:`agent.main` for how it asks, and :mod:`agent.works` for how it checks the live
objects against the hashes instead of applying again).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Callable
from typing import Any

import kubernetes
from kubernetes.client.exceptions import ApiException

from agent.kube import Kube
from archipel.core.names import LEDGER_LABEL, SYSTEM_NAMESPACE

# The ConfigMap keys of the current format; the old one also had "manifests" and
# "projections", the contents themselves.
_MANIFEST_HASHES = "manifestHashes"
_PROJECTION_HASHES = "projectionHashes"
# Objects an apply in progress may create: written before the apply, so that an agent
# killed between creating an object and recording it leaves a ledger that still names
# it. Present only while some are pending, so a settled entry's data is unchanged.
_PENDING = "pendingObjects"


def _always() -> None:
    """No fence: an agent that does not elect may always write."""


def digest(value: Any) -> str:
    """The sha256 (hex) of a JSON-like value, the same for equal values.

    Keys are sorted so that equal dicts built in different orders (the control plane's
    Struct, the API server's answer) hash alike.
    """
    text = json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()


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
    """One held work: the objects it applied, and hashes of what was applied and how
    each object looked right after.

    ``manifests`` and ``projections`` are the contents behind the hashes, in memory
    only: ``None`` for a work known from the ledger alone (held since before this
    process started), until the control plane sends it again.
    """

    work: str
    uid: str
    generation: int
    objects: list[ObjectRef]
    manifest_hashes: list[str] = dataclasses.field(default_factory=list)
    projection_hashes: list[str] = dataclasses.field(default_factory=list)
    manifests: list[dict[str, Any]] | None = None
    projections: list[Any] | None = None
    preserve_on_delete: bool = False
    # Objects an apply may have created but has not confirmed (written ahead of it).
    # Unlike ``objects``, they are not known to be this work's: one may be an object
    # someone else holds that the apply refused, so they are deleted only after the
    # live object is read and found to carry this work's annotation.
    pending: list[ObjectRef] = dataclasses.field(default_factory=list)
    # Read from a ConfigMap of the old format, which held contents: rewrite it.
    legacy: bool = False

    @classmethod
    def applied(
        cls,
        *,
        work: str,
        uid: str,
        generation: int,
        objects: list[ObjectRef],
        manifests: list[dict[str, Any]],
        projections: list[Any],
    ) -> Entry:
        """An entry for objects just applied (or checked), contents and hashes both."""
        return cls(
            work=work,
            uid=uid,
            generation=generation,
            objects=objects,
            manifest_hashes=[digest(m) for m in manifests],
            projection_hashes=[digest(p) for p in projections],
            manifests=manifests,
            projections=projections,
        )

    @property
    def has_contents(self) -> bool:
        return self.manifests is not None and self.projections is not None


def _config_map_name(work: str) -> str:
    return "work-" + hashlib.sha256(work.encode()).hexdigest()[:20]


def entry_of(data: dict[str, str]) -> Entry:
    """An entry from a ledger ConfigMap's data, either format.

    An entry of the old format (contents included) gets its hashes computed from the
    contents, which are then dropped: the agent treats it like any entry read after a
    restart, and the next record rewrites it without them. Raises KeyError, ValueError
    or TypeError when the data is damaged.
    """
    objects = [ObjectRef(*ref) for ref in json.loads(data["objects"])]
    entry = Entry(
        work=data["work"],
        uid=data["uid"],
        generation=int(data["generation"]),
        objects=objects,
    )
    entry.pending = [ObjectRef(*ref) for ref in json.loads(data.get(_PENDING, "[]"))]
    if _MANIFEST_HASHES in data:
        entry.manifest_hashes = [str(h) for h in json.loads(data[_MANIFEST_HASHES])]
        entry.projection_hashes = [str(h) for h in json.loads(data[_PROJECTION_HASHES])]
    else:
        entry.manifest_hashes = [digest(m) for m in json.loads(data.get("manifests", "[]"))]
        entry.projection_hashes = [digest(p) for p in json.loads(data.get("projections", "[]"))]
        entry.legacy = True
    if len(entry.manifest_hashes) != len(objects) or len(entry.projection_hashes) != len(objects):
        # Hashes that do not line up with the objects cannot vouch for any of them;
        # empty ones make every object be checked and applied again.
        entry.manifest_hashes = [""] * len(objects)
        entry.projection_hashes = [""] * len(objects)
    return entry


def config_map_data(entry: Entry) -> dict[str, str]:
    """What the ledger ConfigMap of ``entry`` holds: identities and hashes only."""
    data = {
        "work": entry.work,
        "uid": entry.uid,
        "generation": str(entry.generation),
        "objects": json.dumps([ref.as_list() for ref in entry.objects]),
        _MANIFEST_HASHES: json.dumps(entry.manifest_hashes),
        _PROJECTION_HASHES: json.dumps(entry.projection_hashes),
    }
    if entry.pending:
        data[_PENDING] = json.dumps([ref.as_list() for ref in entry.pending])
    return data


class Ledger:
    def __init__(self, kube: Kube, *, namespace: str = SYSTEM_NAMESPACE) -> None:
        self.kube = kube
        # The agent's own namespace (where its chart installs it); archipel-system
        # when it runs outside the member.
        self.namespace = namespace
        self.entries: dict[str, Entry] = {}
        # Raises NotLeader once this agent may no longer write to the member (its lease
        # may have expired, agent/election.py); checked in the thread, before each write.
        self.fence: Callable[[], None] = _always

    def _core(self) -> kubernetes.client.CoreV1Api:
        return kubernetes.client.CoreV1Api(self.kube.api_client)

    def _load(self) -> dict[str, Entry]:
        self.kube.ensure_namespace(self.namespace)
        items = (
            self._core()
            .list_namespaced_config_map(self.namespace, label_selector=f"{LEDGER_LABEL}=true")
            .items
        )
        entries = {}
        for item in items:
            try:
                entry = entry_of(item.data or {})
            except (KeyError, ValueError, TypeError):
                continue  # a damaged entry is treated as not held: the work is resent
            entries[entry.work] = entry
        return entries

    async def load(self) -> None:
        self.entries = await self.kube.call(self._load)

    def _write(self, entry: Entry, exists: bool) -> None:
        self.fence()
        body = {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {
                "name": _config_map_name(entry.work),
                "namespace": self.namespace,
                "labels": {LEDGER_LABEL: "true"},
            },
            "data": config_map_data(entry),
        }
        # Replaced whole: keys no longer written go (the old format's "manifests" and
        # "projections", and "pendingObjects" once settled).
        self.kube.store_config_map(body, exists=exists)

    async def record(self, entry: Entry) -> None:
        """Hold ``entry``, writing it to the member unless it is written there already
        (a check after a restart that found every object as it was changes nothing)."""
        held = self.entries.get(entry.work)
        if held is None or held.legacy or config_map_data(held) != config_map_data(entry):
            await self.kube.call(self._write, entry, held is not None)
        entry.legacy = False
        self.entries[entry.work] = entry

    def _delete(self, work: str) -> None:
        self.fence()
        try:
            self._core().delete_namespaced_config_map(_config_map_name(work), self.namespace)
        except ApiException as error:
            if error.status != 404:
                raise

    async def forget(self, work: str) -> None:
        await self.kube.call(self._delete, work)
        self.entries.pop(work, None)
