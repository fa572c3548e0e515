"""In-memory caches of stored objects, kept current by etcd watches.

Controllers read from these caches and never from etcd, so a reconcile costs no
round trip; they write through the store, guarded by resourceVersion, and a stale
cache only ever costs a conflict and a retry. Each informer lists its prefix, then
watches from the list's revision; when etcd has compacted that revision away it lists
again and reports the difference, so no change is ever missed.

Cached objects are shared: callers copy (``kind.copy``) before changing one.

A stored value that cannot be decoded is quarantined, never fatal: the informer logs
and counts it, keeps the key's last good object (if it had one) without telling the
handlers anything, and reports the key to its quarantine handlers, so the object's
owner can say so and rewrite it. Nothing is deleted because it could not be read.
"""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict
from collections.abc import Callable, Iterable
from typing import Generic, TypeVar

from tenacity import AsyncRetrying, retry_if_exception_type, stop_never, wait_exponential

from archipel.core.errors import Corrupt, Unavailable
from archipel.core.kinds import Kind
from controlplane import metrics
from controlplane.etcd import Compacted, Event
from controlplane.store import Store, decode

T = TypeVar("T")
Handler = Callable[[str, T | None, T | None], None]
# (key, reason) when a key is quarantined, (key, None) when it leaves the quarantine.
QuarantineHandler = Callable[[str, str | None], None]
log = logging.getLogger(__name__)
# While etcd is unavailable: 0.1 s, doubling up to 5 s. Anything else is a bug and ends
# the informer (its supervisor reports it). Tests swap in a copy with a fake sleep.
BACKOFF = AsyncRetrying(
    wait=wait_exponential(multiplier=0.1, max=5.0),
    stop=stop_never,
    retry=retry_if_exception_type(Unavailable),
    reraise=True,
)


class Informer(Generic[T]):
    """A cache of one kind under one key prefix."""

    def __init__(self, store: Store, kind: Kind[T], *, prefix: str | None = None) -> None:
        self.store = store
        self.kind = kind
        self.prefix = prefix if prefix is not None else kind.prefix()
        self._cache: dict[str, T] = {}
        self._handlers: list[Handler[T]] = []
        self._quarantine_handlers: list[QuarantineHandler] = []
        # key -> (mod_revision, reason) of stored values that cannot be decoded.
        self.quarantined: dict[str, tuple[int, str]] = {}
        self._quarantine_gauge = metrics.QUARANTINED_OBJECTS.labels(kind.name)
        self._indexers: dict[str, Callable[[T], Iterable[str]]] = {}
        self._indices: dict[str, defaultdict[str, set[str]]] = {}
        self.synced = asyncio.Event()
        self.revision = 0
        # (revision, future) of callers waiting for the cache to reach a revision.
        self._waiters: list[tuple[int, asyncio.Future[None]]] = []

    def add_handler(self, handler: Handler[T]) -> None:
        """Call ``handler(key, old, new)`` on every change; it must only enqueue keys."""
        self._handlers.append(handler)

    async def wait_for_revision(self, revision: int, *, seconds: float = 10.0) -> None:
        """Return once the cache has seen every change up to ``revision`` (a revision of
        a key under this informer's prefix, such as one the caller just wrote).

        Controllers wait here instead of sleeping and hoping the cache caught up. If
        the watch does not deliver in ``seconds`` (etcd is away), :class:`Unavailable`
        lets the controller's queue retry with backoff.
        """
        if self.revision >= revision:
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append((revision, future))
        try:
            await asyncio.wait_for(future, seconds)
        except TimeoutError as error:
            raise Unavailable(
                f"{self.kind.name} cache still at revision {self.revision}, not {revision}"
            ) from error
        finally:
            self._waiters = [w for w in self._waiters if w[1] is not future]

    def _wake(self) -> None:
        if not self._waiters:
            return
        for revision, future in self._waiters:
            if revision <= self.revision and not future.done():
                future.set_result(None)

    def add_quarantine_handler(self, handler: QuarantineHandler) -> None:
        """Call ``handler(key, reason)`` when a key is quarantined, ``(key, None)`` when
        it is readable again or deleted; it must only enqueue keys."""
        self._quarantine_handlers.append(handler)

    def _quarantine(self, error: Corrupt, mod_revision: int) -> None:
        if self.quarantined.get(error.key, (0, ""))[0] == mod_revision:
            return
        log.error("%s informer: %s (revision %d); quarantined", self.kind.name, error, mod_revision)
        metrics.CORRUPT_OBJECTS.labels(self.kind.name).inc()
        self.quarantined[error.key] = (mod_revision, error.reason)
        self._quarantine_gauge.set(len(self.quarantined))
        for handler in self._quarantine_handlers:
            handler(error.key, error.reason)

    def _release(self, key: str) -> None:
        if self.quarantined.pop(key, None) is not None:
            log.info("%s informer: %s left the quarantine", self.kind.name, key)
            self._quarantine_gauge.set(len(self.quarantined))
            for handler in self._quarantine_handlers:
                handler(key, None)

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
        new_values: dict[str, list[str]] = {}
        if new is not None:
            try:
                new_values = {name: list(index(new)) for name, index in self._indexers.items()}
            except Exception as error:
                # Decodable but not the shape every object of the kind has.
                revision = int(self.kind.meta(new).resource_version or 0)
                self._quarantine(Corrupt(key, f"cannot be indexed: {error!r}"[:300]), revision)
                return
        for name, index in self._indexers.items():
            if old is not None:
                for value in index(old):
                    self._indices[name][value].discard(key)
            for value in new_values.get(name, ()):
                self._indices[name][value].add(key)
        if new is None:
            self._cache.pop(key, None)
        else:
            self._cache[key] = new
        # Handlers only enqueue keys. One that raises is a bug, not bad data (what does
        # not decode or index is quarantined above): it ends the informer, and the
        # supervisor makes that loud.
        for handler in self._handlers:
            handler(key, old, new)

    async def _relist(self) -> None:
        seen: set[str] = set()
        corrupt: set[str] = set()
        continue_token = ""
        revision = 0

        def quarantine(error: Corrupt, mod_revision: int) -> None:
            corrupt.add(error.key)
            self._quarantine(error, mod_revision)

        while True:
            items, continue_token, at = await self.store.list(
                self.kind,
                self.prefix,
                limit=1000,
                continue_token=continue_token,
                on_corrupt=quarantine,
            )
            revision = revision or at
            for obj in items:
                key = self.kind.key_of(obj)
                seen.add(key)
                self._release(key)
                old = self._cache.get(key)
                if (
                    old is None
                    or self.kind.meta(old).resource_version != self.kind.meta(obj).resource_version
                ):
                    self._set(key, obj)
            if not continue_token:
                break
        # A quarantined key still exists: its last good object is kept, never "deleted".
        for key in [k for k in self._cache if k not in seen and k not in corrupt]:
            self._set(key, None)
        for key in [k for k in self.quarantined if k not in corrupt]:
            self._release(key)
        self.revision = revision
        self._wake()

    def _apply(self, events: list[Event]) -> None:
        for event in events:
            if event.type == "DELETE":
                self._release(event.key)
                if event.key in self._cache:
                    self._set(event.key, None)
            else:
                try:
                    obj = decode(self.kind, event.key, event.value, event.mod_revision)
                except Corrupt as error:
                    self._quarantine(error, event.mod_revision)
                else:
                    self._release(event.key)
                    self._set(event.key, obj)
            self.revision = max(self.revision, event.mod_revision)
        self._wake()

    async def run(self) -> None:
        """Keep the cache current: relist, watch from the list's revision, and again.

        A compacted revision is relisted at once. While etcd is unavailable, attempts
        back off (see ``BACKOFF``), counted from the last successful relist: a watch
        that breaks after hours is retried after the shortest delay, not the longest.
        """
        relisted = False
        while True:
            # One pass runs from a good relist to the next: the watch that follows the
            # last one, then relists until one succeeds. Its attempts share one backoff,
            # so a watch that breaks retries after the shortest delay.
            retrying = BACKOFF.copy(
                before_sleep=lambda state: log.warning(
                    "%s informer: %s; retrying in %.1fs",
                    self.kind.name,
                    state.outcome.exception() if state.outcome else "",
                    state.upcoming_sleep,
                )
            )
            async for attempt in retrying:
                with attempt:
                    if relisted:
                        relisted = False
                        try:
                            async for events in self.store.etcd.watch(
                                self.prefix, start_revision=self.revision + 1
                            ):
                                self._apply(events)
                        except Compacted as compacted:
                            log.info("%s informer: %s; relisting", self.kind.name, compacted)
                    await self._relist()
            relisted = True
            self.synced.set()
