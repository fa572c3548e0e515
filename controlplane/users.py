"""Users: people and programs that call the API with a bearer token and a role.

A user's record lives in etcd under ``access/users/<name>``; its token
(``user:<name>.<secret>``) is shown once, at creation, and only the secret's SHA-256
is kept (the secret is 32 random bytes, so a fast hash is as good as a slow one).
Every replica answers from a cache that a watch keeps current, so checking a token
costs no etcd round trip; a token the cache does not know yet (created a moment ago
on another replica) is looked up in etcd before it is refused.
"""

from __future__ import annotations

import asyncio
import datetime
import hashlib
import json
import logging
import secrets
from typing import Any

from google.protobuf import json_format

from archipel.core.errors import AlreadyExists, Invalid, Unauthenticated
from archipel.core.roles import Identity, check_user_name, parse_role
from archipel.core.validation import check_dns_label
from archipel.v1alpha2 import access_pb2
from controlplane.etcd import Compacted, Delete, Etcd, Put

log = logging.getLogger("archipel.users")

PREFIX = "access/users/"
TOKEN_PREFIX = "user:"


def _hash(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


class _Record:
    """A stored user: the API's User, and its token's hash."""

    def __init__(self, user: access_pb2.User, token_sha256: str) -> None:
        self.user = user
        self.token_sha256 = token_sha256
        self.identity = Identity(user.name, parse_role(user.role), frozenset(user.namespaces))

    def encode(self) -> bytes:
        return json.dumps(
            {"user": json_format.MessageToDict(self.user), "tokenSha256": self.token_sha256}
        ).encode()

    @classmethod
    def decode(cls, data: bytes) -> _Record:
        raw: dict[str, Any] = json.loads(data)
        user = json_format.ParseDict(raw["user"], access_pb2.User())
        return cls(user, str(raw["tokenSha256"]))


def check_user(user: access_pb2.User) -> Identity:
    """The identity ``user`` describes, or :class:`Invalid` naming the field."""
    check_user_name(user.name, "user.name")
    role = parse_role(user.role, "user.role")
    for index, namespace in enumerate(user.namespaces):
        check_dns_label(namespace, f"user.namespaces[{index}]")
    try:
        return Identity(user.name, role, frozenset(user.namespaces))
    except Invalid as error:
        raise Invalid("user.namespaces", error.problem) from None


class UserDirectory:
    def __init__(self, etcd: Etcd) -> None:
        self.etcd = etcd
        self._users: dict[str, _Record] = {}
        self.synced = asyncio.Event()

    # -- the cache ---------------------------------------------------------------------

    async def run(self) -> None:
        """Keep the cache current: list, then watch from the list's revision (again
        from a new list when etcd has compacted the history away)."""
        while True:
            revision = await self._list()
            self.synced.set()
            try:
                async for events in self.etcd.watch(PREFIX, start_revision=revision + 1):
                    for event in events:
                        name = event.key.removeprefix(PREFIX)
                        if event.type == "DELETE":
                            self._users.pop(name, None)
                        else:
                            self._remember(name, event.value)
            except Compacted:
                continue

    async def _list(self) -> int:
        users: dict[str, _Record] = {}
        start, revision = "", 0
        while True:
            items, at, more = await self.etcd.range(
                PREFIX, start_after=start, limit=500, revision=revision
            )
            revision = revision or at
            for item in items:
                record = self._decode(item.key, item.value)
                if record is not None:
                    users[item.key.removeprefix(PREFIX)] = record
            if not more or not items:
                break
            start = items[-1].key
        self._users = users
        return revision

    @staticmethod
    def _decode(key: str, value: bytes) -> _Record | None:
        try:
            return _Record.decode(value)
        except (ValueError, KeyError, TypeError, json_format.ParseError, Invalid) as error:
            # A record written by hand or by a buggy version must not lock everyone
            # out: that user cannot log in, the rest can.
            log.error("stored user %s cannot be read (%s); delete it to recover", key, error)
            return None

    def _remember(self, name: str, value: bytes) -> None:
        record = self._decode(PREFIX + name, value)
        if record is None:
            self._users.pop(name, None)
        else:
            self._users[name] = record

    # -- tokens --------------------------------------------------------------------------

    @staticmethod
    def is_user_token(token: str) -> bool:
        return token.startswith(TOKEN_PREFIX)

    async def authenticate(self, token: str) -> Identity:
        name, _, secret = token.removeprefix(TOKEN_PREFIX).partition(".")
        if not name or not secret:
            raise Unauthenticated("malformed user token: expected user:<name>.<secret>")
        record = self._users.get(name)
        if record is None or not secrets.compare_digest(record.token_sha256, _hash(secret)):
            # Perhaps created or rotated a moment ago on another replica.
            stored = await self.etcd.get(PREFIX + name)
            record = self._decode(stored.key, stored.value) if stored else None
            if record is None or not secrets.compare_digest(record.token_sha256, _hash(secret)):
                raise Unauthenticated(f"invalid token for user {name}")
        return record.identity

    # -- the API -------------------------------------------------------------------------

    async def create(self, user: access_pb2.User, *, rotate: bool) -> tuple[access_pb2.User, str]:
        check_user(user)
        key = PREFIX + user.name
        current = await self.etcd.get(key)
        if current is not None and not rotate:
            raise AlreadyExists(
                f"user {user.name} already exists; pass rotate to issue a new token"
            )
        stored = access_pb2.User()
        stored.CopyFrom(user)
        stored.token_issued.FromDatetime(datetime.datetime.now(datetime.UTC))
        secret = secrets.token_urlsafe(32)
        record = _Record(stored, _hash(secret))
        revision = await self.etcd.commit(
            [Put(key, record.encode(), current.mod_revision if current else 0)]
        )
        if revision is None:
            raise AlreadyExists(f"user {user.name}: a token was issued concurrently; try again")
        self._users[user.name] = record
        return stored, f"{TOKEN_PREFIX}{user.name}.{secret}"

    def list(self) -> list[access_pb2.User]:
        return [self._users[name].user for name in sorted(self._users)]

    async def delete(self, name: str) -> bool:
        check_user_name(name)
        current = await self.etcd.get(PREFIX + name)
        if current is None:
            return False
        # Gone from this replica's cache now; the others see the delete in milliseconds.
        self._users.pop(name, None)
        revision = await self.etcd.commit([Delete(PREFIX + name, current.mod_revision)])
        return revision is not None
