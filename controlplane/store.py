"""Typed object storage on etcd, with Kubernetes' object semantics.

* ``resourceVersion`` is the etcd ``mod_revision`` of the object's key; every write
  is one transaction guarded by it, so a lost race is a :class:`Conflict`, never a
  silent overwrite.
* ``uid`` and ``creationTimestamp`` are set on create; ``generation`` starts at 1 and
  grows only when the spec changes.
* Deleting an object that still has finalizers only stamps ``deletionTimestamp``;
  the write that removes the last finalizer removes the object.
"""

from __future__ import annotations

import base64
import dataclasses
import datetime
import logging
import re
import uuid
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from archipel import limits
from archipel.core.errors import (
    AlreadyExists,
    Conflict,
    Corrupt,
    Expired,
    Invalid,
    NotFound,
)
from archipel.core.kinds import Kind
from controlplane import metrics, plan
from controlplane.etcd import (
    MAX_TXN_BYTES,
    MAX_TXN_OPS,
    Etcd,
    Guard,
    KeyValue,
    Put,
    RevisionOutOfRange,
    Unreadable,
    write_size,
)
from controlplane.etcd import Delete as EtcdDelete

T = TypeVar("T")
log = logging.getLogger(__name__)
OnCorrupt = Callable[[Corrupt, int], None]


def decode(kind: Kind[T], key: str, value: bytes, mod_revision: int) -> T:
    """A stored value as an object of ``kind``, or :class:`Corrupt` whatever went wrong.

    Anything may sit in etcd (a hand-written key, a value from a buggy version), and
    decoders fail in many ways (DecodeError, JSONDecodeError, UnicodeDecodeError,
    RecursionError, a JSON value that is not an object): one object that cannot be
    read must never take a cache, a listing or a start-up down with it. A value that
    could not be decrypted (:class:`~controlplane.etcd.Unreadable`: no configured key
    for it, or it fails authentication) is corrupt the same way, never read as
    plaintext.
    """
    if isinstance(value, Unreadable):
        raise Corrupt(key, value.reason)
    try:
        obj = kind.decode(value)
        meta = kind.meta(obj)
        own_key = kind.key_of(obj)
    except Exception as error:
        raise Corrupt(key, f"{type(error).__name__}: {str(error)[:200]}") from error
    if own_key != key:
        # A value copied under another key would otherwise be cached twice, or with
        # an identity its key does not have.
        raise Corrupt(key, f"the object's own identity is {own_key}")
    meta.resource_version = str(mod_revision)
    return obj


def report_corrupt(error: Corrupt, mod_revision: int) -> None:
    """Listings skip an undecodable object; it is logged and counted, never fatal."""
    metrics.CORRUPT_OBJECTS.labels(error.key.split("/", 1)[0]).inc()
    log.error("%s (at revision %d); skipped", error, mod_revision)


# How many objects the first read of a page asks etcd for; later reads are sized by
# what the first weighed, up to _MAX_CHUNK.
_FIRST_CHUNK = 100
_MAX_CHUNK = 2000
_REVISION = re.compile(r"^[1-9][0-9]{0,18}$")


def _parse_token(token: str, prefix: str) -> tuple[str, int]:
    """A continue token -> (the last key listed, the listing's revision).

    Tokens are ``base64(<revision>:<last key>)``; whatever a caller sends instead is
    :class:`Invalid` naming ``continue``, never a crash or an etcd error.
    """
    if not token:
        return "", 0
    try:
        raw = base64.urlsafe_b64decode(token.encode("ascii")).decode()
    except ValueError as error:  # binascii.Error and the Unicode errors are ValueErrors
        raise Invalid("continue", "not a token from a previous page") from error
    revision_text, colon, start_after = raw.partition(":")
    if not colon or not _REVISION.match(revision_text):
        raise Invalid("continue", "not a token from a previous page")
    revision = int(revision_text)
    if revision > 2**63 - 1:
        raise Invalid("continue", "token names a revision out of range")
    if not start_after.startswith(prefix):
        raise Invalid("continue", "token belongs to another listing")
    return start_after, revision


async def _range(
    etcd: Etcd, prefix: str, *, start_after: str, limit: int, revision: int
) -> tuple[list[KeyValue], int, bool]:
    """One read of a listing; a revision etcd refuses is the continue token's fault
    (only a continue token names a revision)."""
    try:
        return await etcd.range(prefix, start_after=start_after, limit=limit, revision=revision)
    except RevisionOutOfRange as error:
        if revision > await etcd.current_revision():
            raise Invalid("continue", "token names a revision this etcd has not reached") from error
        raise Expired(
            f"continue: token expired (revision {revision} was compacted); list again"
        ) from error


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC).replace(microsecond=0)


class Store:
    """Reads and guarded writes of typed objects."""

    def __init__(self, etcd: Etcd) -> None:
        self.etcd = etcd

    # -- reads -------------------------------------------------------------------------

    async def get(self, kind: Kind[T], key: str) -> T | None:
        kv = await self.etcd.get(key)
        if kv is None:
            return None
        return decode(kind, key, kv.value, kv.mod_revision)

    async def must_get(self, kind: Kind[T], key: str) -> T:
        obj = await self.get(kind, key)
        if obj is None:
            # Templates are named by their own kind: "Deployment demo/web not found".
            label = key.split("/")[2] if key.startswith("templates/") else kind.name
            raise NotFound(f"{label} {_display(key)} not found")
        return obj

    async def list(
        self,
        kind: Kind[T],
        prefix: str,
        *,
        limit: int = 0,
        continue_token: str = "",
        on_corrupt: OnCorrupt = report_corrupt,
        max_bytes: int = limits.MAX_LIST_PAGE_BYTES,
        weigh: Callable[[T], int] | None = None,
        keep: Callable[[T], bool] | None = None,
    ) -> tuple[list[T], str, int]:
        """Objects under ``prefix``; returns (items, continue token, revision).

        A continued list reads at the revision of its first page, so pages are
        consistent with each other as Kubernetes' are. Objects that cannot be decoded
        are left out and handed to ``on_corrupt``.

        A page holds at most ``limit`` objects (0: any number) and stops growing once
        its objects weigh ``max_bytes`` (their stored size, or what ``weigh`` says they
        cost the caller), so an answer always fits a gRPC message; it always holds at
        least one object, and a continue token whenever more remain.

        With ``keep``, only the objects it keeps are listed, and ``limit`` counts only
        them, as a Kubernetes List with a label selector does: a page is short only
        because the listing ended or the page is full in bytes.
        """
        start_after, revision = _parse_token(continue_token, prefix)
        items: list[T] = []
        used = 0
        at_revision = revision
        chunk = min(limit or _FIRST_CHUNK, _FIRST_CHUNK)
        while True:
            kvs, current_revision, more = await _range(
                self.etcd, prefix, start_after=start_after, limit=chunk, revision=at_revision
            )
            # etcd reports its current revision; the listing is at the first page's.
            at_revision = at_revision or current_revision
            full = False
            for index, kv in enumerate(kvs):
                try:
                    obj = decode(kind, kv.key, kv.value, kv.mod_revision)
                except Corrupt as error:
                    on_corrupt(error, kv.mod_revision)
                    start_after = kv.key
                    continue
                if keep is not None and not keep(obj):
                    start_after = kv.key
                    continue
                size = weigh(obj) if weigh is not None else len(kv.value)
                if items and used + size > max_bytes:
                    full = True
                    break
                items.append(obj)
                used += size
                start_after = kv.key
                if limit and len(items) >= limit:
                    full = more or index < len(kvs) - 1
                    more = full
                    break
            if full or not more:
                break
            # Size the next read by what this one weighed, so a page of large objects
            # does not pull hundreds of them out of etcd only to drop most.
            average = used // len(items) if items else 1
            chunk = max(1, min((max_bytes - used) // max(average, 1) + 1, _MAX_CHUNK))
            if limit:
                chunk = min(chunk, limit - len(items))
        token = ""
        if full:
            token = base64.urlsafe_b64encode(f"{at_revision}:{start_after}".encode()).decode()
        return items, token, at_revision

    # -- writes ------------------------------------------------------------------------

    async def commit(self, writes: Sequence[plan.Write], *, guards: Sequence[Guard] = ()) -> int:
        """Apply a reconcile's writes together; returns the revision they landed at.

        Each write is guarded by the resourceVersion its caller observed (a create by
        the key being free), and all go to etcd in one transaction, so either every
        write lands or, when any guard fails, none does and :class:`Conflict` says to
        look again. Only a plan beyond etcd's limits on one transaction (operations or
        bytes) is split, in order, into as few transactions as those limits allow;
        each part is still all or nothing, and a reconcile that lost a race part-way
        finds its own earlier parts done when it looks again.

        ``guards`` hold every part: a controller passes its shard's claim, so a replica
        that lost the shard (paused, partitioned, its lease expired) writes nothing,
        and the write fails as a :class:`Conflict`.
        """
        prepared = [p for p in map(self._prepare, writes) if p is not None]
        if len({p.op.key for p in prepared}) != len(prepared):
            raise ValueError("a plan writes one key twice")
        revision = 0
        for chunk in _chunks(prepared):
            landed = await self.etcd.commit_grouped([*(p.op for p in chunk), *guards])
            if landed is None:
                for p in chunk:
                    p.undo()
                keys = ", ".join(_display(p.op.key) for p in chunk[:3])
                more = f" and {len(chunk) - 3} more" if len(chunk) > 3 else ""
                raise Conflict(f"{keys}{more} changed since they were read; read them again")
            for p in chunk:
                p.done(landed)
            revision = landed
        return revision

    def _prepare(self, write: plan.Write) -> _Prepared | None:
        """The guarded etcd operation of one write (None: nothing to write)."""
        if isinstance(write, plan.Purge):
            return _Prepared(EtcdDelete(write.key, write.mod_revision))
        if isinstance(write, plan.Create):
            return self._prepare_create(write.kind, write.obj, write.replacing)
        if isinstance(write, plan.Update):
            return self._prepare_update(write.kind, write.obj, write.current)
        return self._prepare_delete(write.kind, write.current, write.marked)

    @staticmethod
    def _prepare_create(kind: Kind[T], obj: T, replacing: int) -> _Prepared:
        meta = kind.meta(obj)
        meta.uid = str(uuid.uuid4())
        meta.generation = 1
        meta.set_creation_timestamp(_now())
        meta.resource_version = ""
        return _Prepared(Put(kind.key_of(obj), kind.encode(obj), replacing), on_done=_stamp(meta))

    @staticmethod
    def _prepare_update(kind: Kind[T], obj: T, current: T) -> _Prepared:
        meta = kind.meta(obj)
        key = kind.key_of(obj)
        stored = kind.meta(current)
        if meta.resource_version != stored.resource_version:
            raise Conflict(
                f"{kind.name} {_display(key)} was modified (resourceVersion "
                f"{stored.resource_version}, not {meta.resource_version}); read it again"
            )
        expected = int(stored.resource_version)
        # Identity and history are the store's, whatever the caller sent.
        meta.uid = stored.uid
        if stored.creation_timestamp is not None:
            meta.set_creation_timestamp(stored.creation_timestamp)
        meta.generation = stored.generation
        if kind.spec_fingerprint(obj) != kind.spec_fingerprint(current):
            meta.generation = stored.generation + 1
        if stored.deletion_timestamp is not None:
            meta.set_deletion_timestamp(stored.deletion_timestamp)
            if not meta.finalizers:
                # The last finalizer let go of a deleting object: it goes.
                return _Prepared(EtcdDelete(key, expected))
        meta.resource_version = ""
        return _Prepared(
            Put(key, kind.encode(obj), expected),
            on_done=_stamp(meta),
            on_undo=lambda: setattr(meta, "resource_version", str(expected)),
        )

    @staticmethod
    def _prepare_delete(kind: Kind[T], current: T, marked: T | None) -> _Prepared | None:
        key = kind.key_of(current)
        expected = int(kind.meta(current).resource_version)
        kept = marked if marked is not None else kind.copy(current)
        meta = kind.meta(kept)
        if not meta.finalizers:
            return _Prepared(EtcdDelete(key, expected))
        if kind.meta(current).deletion_timestamp is not None:
            if marked is None or marked == current:
                return None  # already marked, and nothing else to record
        else:
            meta.set_deletion_timestamp(_now())
        meta.resource_version = ""
        return _Prepared(Put(key, kind.encode(kept), expected), on_done=_stamp(meta))

    async def create(self, kind: Kind[T], obj: T, *, replacing: int = 0) -> T:
        """Create ``obj``; with ``replacing``, over the undecodable value stored at that
        mod_revision (controllers rewrite what they derive when it was corrupted)."""
        try:
            await self.commit([plan.Create(kind, obj, replacing)])
        except Conflict:
            key = kind.key_of(obj)
            raise AlreadyExists(f"{kind.name} {_display(key)} already exists") from None
        return obj

    async def update(self, kind: Kind[T], obj: T, *, current: T | None = None) -> T:
        """Write ``obj`` if the stored object is still at ``obj``'s resourceVersion.

        ``current`` (the object as stored, if the caller has it) saves a read when
        deciding whether the spec changed. An update that leaves a deleting object
        without finalizers deletes it.
        """
        meta = kind.meta(obj)
        key = kind.key_of(obj)
        if not meta.resource_version:
            raise Invalid("metadata.resourceVersion", "required for an update")
        if current is None or kind.meta(current).resource_version != meta.resource_version:
            current = await self.get(kind, key)
        if current is None:
            raise NotFound(f"{kind.name} {_display(key)} not found")
        await self.commit([plan.Update(kind, obj, current)])
        return obj

    async def delete(self, kind: Kind[T], key: str, *, resource_version: str = "") -> bool:
        """Delete, or mark for deletion while finalizers remain; True when gone.

        An object that cannot be decoded is deleted outright: its finalizers cannot be
        read, and deleting it is the way out of the quarantine.
        """
        gone, _ = await self.delete_at(kind, key, resource_version=resource_version)
        return gone

    async def delete_at(
        self, kind: Kind[T], key: str, *, resource_version: str = ""
    ) -> tuple[bool, int]:
        """:meth:`delete`, and the revision the deletion (or the mark) landed at, for a
        caller that waits for a cache to see it."""
        try:
            current = await self.must_get(kind, key)
        except Corrupt:
            kv = await self.etcd.get(key)
            if kv is None:
                raise NotFound(f"{kind.name} {_display(key)} not found") from None
            if resource_version and str(kv.mod_revision) != resource_version:
                raise Conflict(
                    f"{kind.name} {_display(key)} is at resourceVersion {kv.mod_revision}, "
                    f"not {resource_version}"
                ) from None
            revision = await self.commit([plan.Purge(key, kv.mod_revision)])
            log.warning("deleted undecodable object %s", key)
            return True, revision
        meta = kind.meta(current)
        if resource_version and meta.resource_version != resource_version:
            raise Conflict(
                f"{kind.name} {_display(key)} is at resourceVersion {meta.resource_version}, "
                f"not {resource_version}"
            )
        revision = await self.commit([plan.Delete(kind, current)])
        return not meta.finalizers, revision

    async def remove_finalizer(self, kind: Kind[T], obj: T, finalizer: str) -> T:
        meta = kind.meta(obj)
        if finalizer in meta.finalizers:
            meta.set_finalizers([f for f in meta.finalizers if f != finalizer])
            return await self.update(kind, obj)
        return obj

    async def put_raw(self, key: str, value: bytes, *, expect_mod_revision: int) -> int | None:
        """A guarded write of a value that is not an API object (credentials, leases)."""
        return await self.etcd.commit_grouped([Put(key, value, expect_mod_revision)])

    async def delete_raw(self, key: str) -> None:
        kv = await self.etcd.get(key)
        if kv is not None:
            await self.etcd.commit_grouped([EtcdDelete(key, kv.mod_revision)])


@dataclasses.dataclass
class _Prepared:
    """One guarded etcd operation, and how its object learns the outcome."""

    op: Put | EtcdDelete
    on_done: Callable[[int], None] = lambda revision: None
    on_undo: Callable[[], None] = lambda: None

    def done(self, revision: int) -> None:
        self.on_done(revision)

    def undo(self) -> None:
        self.on_undo()


def _stamp(meta: Any) -> Callable[[int], None]:
    def stamp(revision: int) -> None:
        meta.resource_version = str(revision)

    return stamp


def _chunks(prepared: list[_Prepared]) -> list[list[_Prepared]]:
    """Consecutive parts of a plan, each within etcd's limits on one transaction."""
    chunks: list[list[_Prepared]] = []
    size = 0
    for p in prepared:
        weight = write_size(p.op)
        if not chunks or len(chunks[-1]) >= MAX_TXN_OPS or size + weight > MAX_TXN_BYTES:
            chunks.append([])
            size = 0
        chunks[-1].append(p)
        size += weight
    return chunks


def _display(key: str) -> str:
    """``memberclusters/_/a`` -> ``a``; ``propagationpolicies/ns/p`` -> ``ns/p``."""
    parts = key.split("/")
    namespace, name = parts[-2], parts[-1]
    return name if namespace == "_" else f"{namespace}/{name}"
