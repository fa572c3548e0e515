"""In-memory caches of stored objects, kept current by etcd watches.

Controllers read from these caches and never from etcd, so a reconcile costs no
round trip; they write through the store, guarded by resourceVersion, and a stale
cache only ever costs a conflict and a retry. Each informer lists its prefix, then
watches from the list's revision; when etcd has compacted that revision away it lists
again and reports the difference, so no change is ever missed.

Cached objects are shared: callers copy (``kind.copy``) before changing one.
"""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict
from collections.abc import Callable, Iterable
from typing import Generic, TypeVar

from controlplane.errors import Unavailable
from controlplane.etcd import Compacted, Event
from controlplane.kinds import Kind
from controlplane.store import Store

T = TypeVar("T")
Handler = Callable[[str, T | None, T | None], None]
log = logging.getLogger(__name__)


class Informer(Generic[T]):
    """A cache of one kind under one key prefix."""

    def __init__(self, store: Store, kind: Kind[T], *, prefix: str | None = None) -> None:
        self.store = store
        self.kind = kind
        self.prefix = prefix if prefix is not None else kind.prefix()
        self._cache: dict[str, T] = {}
        self._handlers: list[Handler[T]] = []
        self._indexers: dict[str, Callable[[T], Iterable[str]]] = {}
        self._indices: dict[str, defaultdict[str, set[str]]] = {}
        self.synced = asyncio.Event()
        self.revision = 0

    def add_handler(self, handler: Handler[T]) -> None:
        """Call ``handler(key, old, new)`` on every change; it must only enqueue keys."""
        self._handlers.append(handler)

    def add_index(self, name: str, index: Callable[[T], Iterable[str]]) -> None:
        self._indexers[name] = index
        self._indices[name] = defaultdict(set)

    def get(self, key: str) -> T | None:
        return self._cache.get(key)

    def list_keys(self, prefix: str = "") -> list[str]:
        return [k for k in self._cache if k.startswith(prefix)]

    def objects(self, prefix: str = "") -> list[T]:
        if not prefix:
            return list(self._cache.values())
        return [obj for key, obj in self._cache.items() if key.startswith(prefix)]

    def by_index(self, name: str, value: str) -> list[T]:
        keys = self._indices[name].get(value, ())
        return [self._cache[k] for k in keys if k in self._cache]

    def index_keys(self, name: str, value: str) -> set[str]:
        return set(self._indices[name].get(value, ()))

    def __len__(self) -> int:
        return len(self._cache)

    def _set(self, key: str, new: T | None) -> None:
        old = self._cache.get(key)
        for name, index in self._indexers.items():
            if old is not None:
                for value in index(old):
                    self._indices[name][value].discard(key)
            if new is not None:
                for value in index(new):
                    self._indices[name][value].add(key)
        if new is None:
            self._cache.pop(key, None)
        else:
            self._cache[key] = new
        for handler in self._handlers:
            handler(key, old, new)

    async def _relist(self) -> None:
        seen: set[str] = set()
        continue_token = ""
        revision = 0
        while True:
            items, continue_token, at = await self.store.list(
                self.kind, self.prefix, limit=1000, continue_token=continue_token
            )
            revision = revision or at
            for obj in items:
                key = self.kind.key_of(obj)
                seen.add(key)
                old = self._cache.get(key)
                if (
                    old is None
                    or self.kind.meta(old).resource_version != self.kind.meta(obj).resource_version
                ):
                    self._set(key, obj)
            if not continue_token:
                break
        for key in [k for k in self._cache if k not in seen]:
            self._set(key, None)
        self.revision = revision

    def _apply(self, events: list[Event]) -> None:
        for event in events:
            if event.type == "DELETE":
                if event.key in self._cache:
                    self._set(event.key, None)
            else:
                obj = self.kind.decode(event.value)
                self.kind.meta(obj).resource_version = str(event.mod_revision)
                self._set(event.key, obj)
            self.revision = max(self.revision, event.mod_revision)

    async def run(self) -> None:
        delay = 0.1
        while True:
            try:
                await self._relist()
                self.synced.set()
                delay = 0.1
                async for events in self.store.etcd.watch(
                    self.prefix, start_revision=self.revision + 1
                ):
                    self._apply(events)
            except Compacted as compacted:
                log.info("%s informer: %s; relisting", self.kind.name, compacted)
            except Unavailable as error:
                log.warning("%s informer: %s; retrying in %.1fs", self.kind.name, error, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
