"""What one reconcile wants written, as data.

A controller observes its caches and returns a :class:`Plan`; it never writes. The
runtime (:mod:`controlplane.runtime`) commits the plan with
:meth:`controlplane.store.Store.commit`: every write guarded by the resourceVersion
the controller observed, all in one etcd transaction, so a reconcile either lands
whole or, when anything it read has changed since, not at all (a conflict, and the key
is reconciled again from the newer state). Because a plan is plain data, each
controller's decisions are tested as tables, without etcd.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, Generic, TypeVar

from archipel.core.kinds import Kind

T = TypeVar("T")


@dataclasses.dataclass(frozen=True)
class Create(Generic[T]):
    kind: Kind[T]
    obj: T
    replacing: int = 0
    """The mod_revision of an undecodable value stored at the key, which the create
    writes over (controllers rewrite what they derive when it was corrupted)."""


@dataclasses.dataclass(frozen=True)
class Update(Generic[T]):
    kind: Kind[T]
    obj: T
    current: T
    """The object as observed: the write holds only if it is still stored as this."""


@dataclasses.dataclass(frozen=True)
class Delete(Generic[T]):
    kind: Kind[T]
    current: T
    marked: T | None = None
    """What stays stored while finalizers remain (``current`` with a flag set or a
    finalizer let go); None: ``current`` as it is. Without finalizers the key goes."""


@dataclasses.dataclass(frozen=True)
class Purge:
    """Remove a value that cannot be decoded, as stored at ``mod_revision``."""

    key: str
    mod_revision: int


Write = Create[Any] | Update[Any] | Delete[Any] | Purge


def key_of(write: Write) -> str:
    if isinstance(write, Purge):
        return write.key
    obj = write.obj if isinstance(write, Create | Update) else write.current
    return write.kind.key_of(obj)


@dataclasses.dataclass
class Plan:
    """The writes of one reconcile, and what to do once they landed."""

    writes: list[Write] = dataclasses.field(default_factory=list)
    requeue_after: float = 0.0
    """Reconcile the key again after this many seconds (0: only on a change); for
    decisions that depend on time passing, such as a heartbeat's grace period."""
    committed: list[Callable[[], None]] = dataclasses.field(default_factory=list)
    """In-memory bookkeeping to run once the writes are in etcd, never before."""

    def create(self, kind: Kind[T], obj: T, *, replacing: int = 0) -> None:
        self.writes.append(Create(kind, obj, replacing))

    def update(self, kind: Kind[T], obj: T, *, current: T) -> None:
        self.writes.append(Update(kind, obj, current))

    def delete(self, kind: Kind[T], current: T, *, marked: T | None = None) -> None:
        self.writes.append(Delete(kind, current, marked))

    def purge(self, key: str, mod_revision: int) -> None:
        self.writes.append(Purge(key, mod_revision))

    def keys(self) -> list[str]:
        return [key_of(write) for write in self.writes]

    def __len__(self) -> int:
        return len(self.writes)
