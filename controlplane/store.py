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
import datetime
import uuid
from typing import TypeVar

from controlplane.errors import AlreadyExists, Conflict, Invalid, NotFound
from controlplane.etcd import Delete, Etcd, Put
from controlplane.kinds import Kind

T = TypeVar("T")


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
        obj = kind.decode(kv.value)
        kind.meta(obj).resource_version = str(kv.mod_revision)
        return obj

    async def must_get(self, kind: Kind[T], key: str) -> T:
        obj = await self.get(kind, key)
        if obj is None:
            # Templates are named by their own kind: "Deployment demo/web not found".
            label = key.split("/")[2] if key.startswith("templates/") else kind.name
            raise NotFound(f"{label} {_display(key)} not found")
        return obj

    async def list(
        self, kind: Kind[T], prefix: str, *, limit: int = 0, continue_token: str = ""
    ) -> tuple[list[T], str, int]:
        """Objects under ``prefix``; returns (items, continue token, revision).

        A continued list reads at the revision of its first page, so pages are
        consistent with each other as Kubernetes' are.
        """
        start_after, revision = "", 0
        if continue_token:
            try:
                raw = base64.urlsafe_b64decode(continue_token.encode()).decode()
                revision_text, start_after = raw.split(":", 1)
                revision = int(revision_text)
            except (ValueError, UnicodeDecodeError) as error:
                raise Invalid("continue", "not a token from a previous page") from error
            if not start_after.startswith(prefix):
                raise Invalid("continue", "token belongs to another listing")
        kvs, current_revision, more = await self.etcd.range(
            prefix, start_after=start_after, limit=limit, revision=revision
        )
        # etcd reports its current revision; the listing is at the first page's.
        at_revision = revision or current_revision
        items = []
        for kv in kvs:
            obj = kind.decode(kv.value)
            kind.meta(obj).resource_version = str(kv.mod_revision)
            items.append(obj)
        token = ""
        if more and kvs:
            token = base64.urlsafe_b64encode(f"{at_revision}:{kvs[-1].key}".encode()).decode()
        return items, token, at_revision

    # -- writes ------------------------------------------------------------------------

    async def create(self, kind: Kind[T], obj: T) -> T:
        meta = kind.meta(obj)
        meta.uid = str(uuid.uuid4())
        meta.generation = 1
        meta.set_creation_timestamp(_now())
        meta.resource_version = ""
        key = kind.key_of(obj)
        revision = await self.etcd.commit_grouped([Put(key, kind.encode(obj), 0)])
        if revision is None:
            raise AlreadyExists(f"{kind.name} {_display(key)} already exists")
        meta.resource_version = str(revision)
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
        expected = int(meta.resource_version)
        if current is None or kind.meta(current).resource_version != meta.resource_version:
            current = await self.get(kind, key)
        if current is None:
            raise NotFound(f"{kind.name} {_display(key)} not found")
        stored = kind.meta(current)
        if stored.resource_version != meta.resource_version:
            raise Conflict(
                f"{kind.name} {_display(key)} was modified (resourceVersion "
                f"{stored.resource_version}, not {meta.resource_version}); read it again"
            )
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
                revision = await self.etcd.commit_grouped([Delete(key, expected)])
                if revision is None:
                    raise Conflict(f"{kind.name} {_display(key)} was modified; read it again")
                return obj
        meta.resource_version = ""
        revision = await self.etcd.commit_grouped([Put(key, kind.encode(obj), expected)])
        if revision is None:
            meta.resource_version = str(expected)
            raise Conflict(f"{kind.name} {_display(key)} was modified; read it again")
        meta.resource_version = str(revision)
        return obj

    async def delete(self, kind: Kind[T], key: str, *, resource_version: str = "") -> bool:
        """Delete, or mark for deletion while finalizers remain; True when gone."""
        current = await self.must_get(kind, key)
        meta = kind.meta(current)
        if resource_version and meta.resource_version != resource_version:
            raise Conflict(
                f"{kind.name} {_display(key)} is at resourceVersion {meta.resource_version}, "
                f"not {resource_version}"
            )
        expected = int(meta.resource_version)
        if meta.finalizers:
            if meta.deletion_timestamp is None:
                meta.set_deletion_timestamp(_now())
                meta.resource_version = ""
                revision = await self.etcd.commit_grouped(
                    [Put(key, kind.encode(current), expected)]
                )
                if revision is None:
                    raise Conflict(f"{kind.name} {_display(key)} was modified; try again")
            return False
        if await self.etcd.commit_grouped([Delete(key, expected)]) is None:
            raise Conflict(f"{kind.name} {_display(key)} was modified; try again")
        return True

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
            await self.etcd.commit_grouped([Delete(key, kv.mod_revision)])


def _display(key: str) -> str:
    """``memberclusters/_/a`` -> ``a``; ``propagationpolicies/ns/p`` -> ``ns/p``."""
    parts = key.split("/")
    namespace, name = parts[-2], parts[-1]
    return name if namespace == "_" else f"{namespace}/{name}"
