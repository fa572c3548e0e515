"""Which control-plane replica runs which controller keys: shards held through etcd leases.

Every replica serves the API and agent streams, but a controller key is reconciled by
one replica at a time. Keys hash into a fixed number of shards (:func:`shard_of`);
each shard is held by one replica, recorded in etcd as ``replicas/shards/<n>`` with the
holder's id, attached to the holder's lease.

* **Membership.** A replica grants itself a lease, registers ``replicas/members/<id>``
  under it, and renews it every third of its TTL. A replica that dies stops renewing;
  when the lease expires etcd deletes its keys, member and shards alike.
* **Assignment.** Which replica should hold a shard is a pure function of the live
  members (:func:`assignment`, rendezvous hashing): every replica computes the same
  answer from the same members, and a replica joining or leaving moves only the shards
  it gains or loses, about 1/N of them.
* **Rebalancing.** Each replica watches ``replicas/``. It claims a free shard that is
  its own (a transaction that creates the key only if absent) and releases one it
  holds that is now another live member's (a delete guarded by its claim), which the
  other then claims. A shard whose holder died is free once the holder's lease expires.
* **Fencing.** A claim is identified by the shard key's mod_revision. Every controller
  write carries a :class:`~controlplane.etcd.Guard` on it in the same transaction
  (:meth:`Shards.guard`): a replica paused past its lease (SIGSTOP, a partition) that
  wakes up with a write in hand finds the claim gone or someone else's, and its
  transaction fails as a conflict. Locally, a replica also stops acting on its shards
  once it has not renewed its lease for its TTL, without waiting to hear from etcd.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import json
import logging
import os
import secrets
import socket
import time
from collections.abc import Callable, Iterable

from archipel.core.errors import Conflict, FailedPrecondition, Unavailable
from controlplane import fencing, metrics
from controlplane.etcd import Compacted, Delete, Etcd, Guard, Put

log = logging.getLogger(__name__)

PREFIX = "replicas/"
MEMBERS = PREFIX + "members/"
SHARDS = PREFIX + "shards/"
STREAMS = PREFIX + "streams/"
EPOCHS = PREFIX + "epochs/"
# The shard whose holder runs what concerns the whole fleet: clusters whose agent
# holds no stream to any replica (their heartbeats stopped).
FLEET_SHARD = 0
DEFAULT_SHARDS = 32
DEFAULT_LEASE_SECONDS = 10

ShardListener = Callable[[str], None]
"""Called whenever what this replica owns changes, with what: ``"shards"`` or
``"streams"`` (agent streams, held here or anywhere)."""
StreamLostListener = Callable[[str, str], None]
"""Called with (cluster, session) when another replica took that cluster's stream, or
this replica's claim on it went with its lease."""


def default_replica_id() -> str:
    """The host's name (a pod's name in Kubernetes) and a random suffix: a restarted
    replica is a new member, whatever the old one's lease still holds."""
    return f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(3)}"


def shard_of(key: str, count: int) -> int:
    """The shard of a controller key: stable across processes and versions (sha256,
    not Python's salted hash)."""
    digest = hashlib.sha256(key.encode()).digest()
    return int.from_bytes(digest[:8], "big") % count


def _weight(replica: str, shard: int) -> int:
    return int.from_bytes(hashlib.sha256(f"{replica}/{shard}".encode()).digest()[:8], "big")


def assignment(replicas: Iterable[str], count: int) -> dict[int, str]:
    """Which replica should hold each shard: the one with the highest rendezvous
    weight for it. Empty when there is no replica."""
    members = sorted(set(replicas))
    if not members:
        return {}
    return {
        shard: max(members, key=lambda replica: (_weight(replica, shard), replica))
        for shard in range(count)
    }


def shard_key(shard: int) -> str:
    return f"{SHARDS}{shard:04d}"


def stream_key(cluster: str) -> str:
    return STREAMS + cluster


@dataclasses.dataclass(frozen=True)
class Holder:
    replica: str
    """The claim: ``<replica>@<lease>`` (see Shards.claim)."""
    mod_revision: int


@dataclasses.dataclass(frozen=True)
class StreamClaim:
    """This replica holds ``cluster``'s agent stream, session ``session``, since the
    stream key's ``mod_revision``."""

    session: str
    mod_revision: int


class Shards:
    """This replica's membership and its shards, kept current by a watch on etcd."""

    def __init__(
        self,
        etcd: Etcd,
        *,
        replica: str,
        count: int = DEFAULT_SHARDS,
        lease_seconds: int = DEFAULT_LEASE_SECONDS,
        address: str = "",
    ) -> None:
        if count < 1:
            raise ValueError("--shards must be at least 1")
        if lease_seconds < 2:
            raise ValueError("--shard-lease-seconds must be at least 2")
        self.etcd = etcd
        self.replica = replica
        self.count = count
        self.lease_seconds = lease_seconds
        self.address = address
        self.lease = 0
        # What the watch says: live members, and who holds each shard at which revision.
        self.members: set[str] = set()
        self.holders: dict[int, Holder] = {}
        # The shards this replica holds and may act on: shard -> its claim's revision.
        self.held: dict[int, int] = {}
        # Clusters whose agent stream some replica holds (the watch's view), and those
        # this replica holds.
        self.streams: dict[str, str] = {}
        self.my_streams: dict[str, StreamClaim] = {}
        self._stream_lost: list[StreamLostListener] = []
        self._renewed_at = -float("inf")  # monotonic
        self._listeners: list[ShardListener] = []
        self._changed = asyncio.Event()
        self.ready = asyncio.Event()
        """Set once this replica has registered and settled its first claims."""

    # -- what controllers ask ----------------------------------------------------------

    def add_listener(self, listener: ShardListener) -> None:
        self._listeners.append(listener)

    def on_stream_lost(self, listener: StreamLostListener) -> None:
        self._stream_lost.append(listener)

    def shard(self, key: str) -> int:
        return shard_of(key, self.count)

    def owns(self, shard: int) -> bool:
        return shard in self.held and self._fresh()

    def guard(self, shard: int) -> Guard:
        """The condition that keeps a write to ``shard``'s claim; :class:`Conflict`
        when this replica does not hold it (any more)."""
        revision = self.held.get(shard)
        if revision is None or not self._fresh():
            raise Conflict(f"shard {shard} is not held by replica {self.replica}")
        return Guard(shard_key(shard), revision)

    def owns_key(self, key: str) -> list[Guard] | None:
        """A controller's ownership rule for keys hashed into shards: the guard to
        write under, or None when another replica has the key."""
        shard = self.shard(key)
        return [self.guard(shard)] if self.owns(shard) else None

    # -- agent streams -------------------------------------------------------------------

    def stream_guard(self, cluster: str) -> list[Guard] | None:
        """The guard for writes made from what ``cluster``'s agent reports (its work
        status, its heartbeats) when this replica holds its stream; None otherwise."""
        claim = self.my_streams.get(cluster)
        if claim is None or not self._fresh():
            return None
        return [Guard(stream_key(cluster), claim.mod_revision)]

    def owns_reports(self, cluster: str) -> list[Guard] | None:
        """The rule for writing what ``cluster``'s agent reported: the stream's holder,
        or, while no replica holds it (the agent left, before it comes back), whichever
        replica still has reports from it, as long as the stream stays unclaimed."""
        guard = self.stream_guard(cluster)
        if guard is not None or cluster in self.streams:
            return guard
        return [Guard(stream_key(cluster), 0)]

    def owns_cluster(self, cluster: str) -> list[Guard] | None:
        """The cluster controller's rule: the replica holding the cluster's agent
        stream has its heartbeats and runs it; one no replica holds a stream for (its
        agent is away) is the fleet shard's, whose holder turns it Unknown in time."""
        guard = self.stream_guard(cluster)
        if guard is not None:
            return guard
        if cluster in self.streams or not self.owns(FLEET_SHARD):
            return None
        # Written only while no stream is held: an agent reconnecting elsewhere wins.
        return [self.guard(FLEET_SHARD), Guard(stream_key(cluster), 0)]

    async def claim_stream(self, cluster: str, session: str, identity: str, epoch: int) -> None:
        """Record that this replica holds ``cluster``'s agent stream now, fenced by the
        agent's lease epoch across replicas and restarts: FailedPrecondition when a
        newer epoch was seen for the cluster. The previous holder, if any, sees its
        claim replaced and ends its stream."""
        leader = fencing.Leader(identity, epoch)
        for _ in range(8):
            current = await self.etcd.get(stream_key(cluster))
            seen = await self.etcd.get(EPOCHS + cluster)
            newest = fencing.Leader(**json.loads(seen.value)) if seen is not None else None
            refused = fencing.refusal(newest, leader)
            if refused is not None:
                metrics.AGENT_STREAMS_FENCED.inc()
                raise FailedPrecondition(refused)
            value = json.dumps(
                {"replica": self.replica, "session": session, "identity": identity, "epoch": epoch}
            ).encode()
            writes: list[Put | Delete | Guard] = [
                Put(
                    stream_key(cluster),
                    value,
                    current.mod_revision if current else 0,
                    lease=self.lease,
                )
            ]
            updated = fencing.newest(newest, leader)
            if updated is not None and updated != newest:
                writes.append(
                    Put(
                        EPOCHS + cluster,
                        json.dumps(dataclasses.asdict(updated)).encode(),
                        seen.mod_revision if seen is not None else 0,
                    )
                )
            elif seen is not None:
                writes.append(Guard(EPOCHS + cluster, seen.mod_revision))
            revision = await self.etcd.commit(writes)
            if revision is not None:
                self.my_streams[cluster] = StreamClaim(session, revision)
                self.streams[cluster] = self.replica
                self._notify("streams")
                return
        raise Unavailable(f"cluster {cluster}: the agent stream's claim kept conflicting")

    async def release_stream(self, cluster: str, session: str) -> None:
        """The session ended: let the stream go, unless another session holds it now."""
        claim = self.my_streams.get(cluster)
        if claim is None or claim.session != session:
            return
        del self.my_streams[cluster]
        if self.streams.get(cluster) == self.replica:
            # Not held anywhere now, without waiting for the watch to say so: the
            # cluster is the fleet shard's at once.
            del self.streams[cluster]
        self._notify("streams")
        try:
            await self.etcd.commit([Delete(stream_key(cluster), claim.mod_revision)])
        except Unavailable as error:
            log.warning("cluster %s: releasing the agent stream failed: %s", cluster, error)

    def _notify(self, what: str) -> None:
        for listener in self._listeners:
            listener(what)

    def _fresh(self) -> bool:
        """Whether the lease is surely still alive: renewed within its TTL."""
        return time.monotonic() - self._renewed_at < self.lease_seconds

    # -- running -----------------------------------------------------------------------

    async def run(self) -> None:
        """Register, renew, watch and rebalance, for as long as the process lives."""
        await self._register()
        await asyncio.gather(self._renew_loop(), self._watch_loop(), self._rebalance_loop())

    async def stop(self) -> None:
        """Leave: the lease goes, with every claim, so the others take over at once
        instead of after a TTL (a rolling restart then waits for no expiry)."""
        self._set_held({})
        if self.lease:
            try:
                await self.etcd.revoke_lease(self.lease)
            except Unavailable as error:
                log.warning("replica %s: revoking its lease failed: %s", self.replica, error)
            self.lease = 0

    @property
    def claim(self) -> str:
        """What this replica's claims say: its name and its lease. A replica restarted
        under the same name has a new lease, and never takes the claims its previous
        process made (that process may only be paused) for its own."""
        return f"{self.replica}@{self.lease:x}"

    async def _register(self) -> None:
        self.lease = await self.etcd.grant_lease(self.lease_seconds)
        self._renewed_at = time.monotonic()
        value = json.dumps(
            {"replica": self.replica, "lease": f"{self.lease:x}", "address": self.address}
        ).encode()
        key = MEMBERS + self.replica
        # A previous process of this name may still be registered, its lease not expired
        # yet: this one's registration replaces it.
        previous = await self.etcd.get(key)
        await self.etcd.commit(
            [Put(key, value, previous.mod_revision if previous else 0, lease=self.lease)]
        )
        self.members.add(self.replica)
        log.info(
            "replica %s joined (lease %x, %d s; %d shards)",
            self.replica,
            self.lease,
            self.lease_seconds,
            self.count,
        )
        self._changed.set()

    async def _renew_loop(self) -> None:
        interval = self.lease_seconds / 3
        while True:
            await asyncio.sleep(interval)
            started = time.monotonic()
            try:
                left = await self.etcd.keep_alive(self.lease)
            except Unavailable as error:
                log.warning("replica %s: renewing its lease failed: %s", self.replica, error)
                if not self._fresh():
                    self._set_held({})
                continue
            if left > 0:
                stale = not self._fresh()
                self._renewed_at = started
                if stale:
                    # Keys parked while the lease was not known to be alive are this
                    # replica's again.
                    self._notify("shards")
                    self._notify("streams")
                continue
            # Expired (the process was paused, or etcd unreachable, for longer than the
            # TTL): every claim went with it. Join again as a new lease.
            log.warning("replica %s: its lease expired; its shards are gone", self.replica)
            self._set_held({})
            await self._register()

    async def _watch_loop(self) -> None:
        while True:
            try:
                await self._watch()
            except Compacted:
                continue  # list again
            except Unavailable as error:
                log.warning("replica %s: watching the replicas failed: %s", self.replica, error)
                await asyncio.sleep(1.0)

    async def _watch(self) -> None:
        items, revision, _ = await self.etcd.range(PREFIX)
        members: set[str] = set()
        holders: dict[int, Holder] = {}
        self.streams = {}
        for item in items:
            self._observe(item.key, item.value, item.mod_revision, members, holders)
        self.members, self.holders = members, holders
        self._changed.set()
        async for events in self.etcd.watch(PREFIX, start_revision=revision + 1):
            for event in events:
                if event.type == "DELETE":
                    self._forget(event.key)
                else:
                    self._observe(
                        event.key, event.value, event.mod_revision, self.members, self.holders
                    )
            self._changed.set()

    def _observe(
        self,
        key: str,
        value: bytes,
        mod_revision: int,
        members: set[str],
        holders: dict[int, Holder],
    ) -> None:
        if key.startswith(MEMBERS):
            members.add(key[len(MEMBERS) :])
        elif key.startswith(SHARDS):
            holders[int(key[len(SHARDS) :])] = Holder(value.decode(), mod_revision)
        elif key.startswith(STREAMS):
            cluster = key[len(STREAMS) :]
            replica = str(json.loads(value).get("replica", ""))
            self.streams[cluster] = replica
            claim = self.my_streams.get(cluster)
            if claim is not None and mod_revision != claim.mod_revision:
                self._lose_stream(cluster, claim)
            self._notify("streams")

    def _lose_stream(self, cluster: str, claim: StreamClaim) -> None:
        del self.my_streams[cluster]
        log.info("cluster %s: the agent stream was taken over elsewhere", cluster)
        for listener in self._stream_lost:
            listener(cluster, claim.session)

    def _forget(self, key: str) -> None:
        if key.startswith(MEMBERS):
            self.members.discard(key[len(MEMBERS) :])
        elif key.startswith(STREAMS):
            cluster = key[len(STREAMS) :]
            self.streams.pop(cluster, None)
            claim = self.my_streams.get(cluster)
            if claim is not None:
                self._lose_stream(cluster, claim)
            self._notify("streams")
        elif key.startswith(SHARDS):
            shard = int(key[len(SHARDS) :])
            self.holders.pop(shard, None)
            if shard in self.held:
                held = dict(self.held)
                del held[shard]
                self._set_held(held)

    async def _rebalance_loop(self) -> None:
        while True:
            await self._changed.wait()
            self._changed.clear()
            try:
                await self._rebalance()
            except Unavailable as error:
                log.warning("replica %s: rebalancing failed: %s", self.replica, error)
                await asyncio.sleep(1.0)
                self._changed.set()

    async def _rebalance(self) -> None:
        if not self.lease or self.replica not in self.members:
            return  # the watch has not seen this replica's registration yet
        wanted = assignment(self.members, self.count)
        held = dict(self.held)
        for shard in range(self.count):
            holder = self.holders.get(shard)
            mine = wanted.get(shard) == self.replica
            if holder is None and mine:
                revision = await self.etcd.commit(
                    [Put(shard_key(shard), self.claim.encode(), 0, lease=self.lease)]
                )
                if revision is not None:
                    held[shard] = revision
            elif holder is not None and holder.replica == self.claim:
                if mine:
                    held[shard] = holder.mod_revision
                else:
                    # Another live replica's now: stop acting on it first, then let go.
                    held.pop(shard, None)
                    self._set_held(held)
                    await self.etcd.commit([Delete(shard_key(shard), holder.mod_revision)])
        self._set_held(held)
        metrics.SHARDS_HELD.set(len(self.held))
        if not self.ready.is_set() and all(
            shard in self.held for shard, replica in wanted.items() if replica == self.replica
        ):
            self.ready.set()

    def _set_held(self, held: dict[int, int]) -> None:
        gained = frozenset(held) - frozenset(self.held)
        lost = frozenset(self.held) - frozenset(held)
        self.held = held
        if gained or lost:
            log.info(
                "replica %s: shards gained %s, lost %s (holds %d of %d)",
                self.replica,
                sorted(gained) or "none",
                sorted(lost) or "none",
                len(held),
                self.count,
            )
            self._notify("shards")
