"""Running controllers: observe, plan, commit.

A controller's reconcile reads its caches and returns a :class:`~controlplane.plan.Plan`
(or None when all is as it should be); it never writes. The runtime commits the plan
as one guarded transaction (:meth:`Store.commit`). Before the same key is reconciled
again it waits until every cache holding a key it wrote has seen that revision, so the
next plan is made from a view that includes the last one, never from a timed requeue
that hopes so.

With several replicas (:mod:`controlplane.shards`), a controller reconciles only the
keys its ``owner`` rule gives this replica, and commits each plan together with the
rule's guards, so a replica that lost a key since it looked writes nothing. Keys it
does not own are parked, and queued again whenever what the replica owns changes.

A :class:`Conflict` (another writer won the race, or the cache was behind) requeues
quickly; any other error is logged and retried with backoff (:class:`Reconciler`). The
loop survives ordinary errors, so one bad object never stops a controller.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from archipel.core.errors import AlreadyExists, Conflict, NotFound, Unavailable
from archipel.workqueue import Reconciler, WorkQueue
from controlplane import metrics
from controlplane.etcd import Guard
from controlplane.informers import Informer
from controlplane.plan import Plan
from controlplane.store import Store

log = logging.getLogger(__name__)

PlanReconcile = Callable[[str], Awaitable[Plan | None]]
Owner = Callable[[str], "list[Guard] | None"]
"""Whether this replica runs a key now: the guards its writes must carry, or None."""


def everything(key: str) -> list[Guard] | None:
    """The rule of a control plane with no replicas: every key is its own."""
    return []


class Controller:
    def __init__(
        self,
        name: str,
        reconcile: PlanReconcile,
        *,
        store: Store,
        caches: Sequence[Informer[Any]],
        workers: int = 4,
        priority: Callable[[str], int] | None = None,
        owner: Owner = everything,
        follows: frozenset[str] = frozenset({"shards"}),
    ) -> None:
        self.name = name
        self.owner = owner
        # Which changes of ownership (controlplane/shards.py) can change what the owner
        # rule says: a look over the parked keys costs a hash each.
        self.follows = follows
        # Keys another replica runs, to queue again when this one's share changes.
        self._parked: set[str] = set()
        self.plan = reconcile
        self.store = store
        self.caches = list(caches)
        self.queue = WorkQueue(
            name, on_depth=metrics.QUEUE_DEPTH.labels(name).set, priority=priority
        )
        self.reconciler = Reconciler(
            name,
            self.reconcile,
            workers=workers,
            queue=self.queue,
            on_failure=self._failed,
            on_duration=metrics.RECONCILE_SECONDS.labels(name).observe,
        )
        # key -> (revision, caches) of a committed plan that its next reconcile must see.
        self._written: dict[str, tuple[int, list[Informer[Any]]]] = {}
        self._errors = metrics.RECONCILE_ERRORS.labels(name)
        self._conflicts = metrics.RECONCILE_CONFLICTS.labels(name)

    def enqueue(self, key: str) -> None:
        if self.owner(key) is None:
            # Another replica's: parked without a pass through the queue, which every
            # change to anything the key depends on would otherwise cost each replica.
            self._parked.add(key)
            return
        self.queue.add(key)

    def ownership_changed(self, what: str = "shards") -> None:
        """This replica gained or lost keys: queue the parked ones that are its own now."""
        if what not in self.follows:
            return
        parked, self._parked = self._parked, set()
        for key in parked:
            self.enqueue(key)

    async def reconcile(self, key: str) -> float | None:
        """Plan ``key`` and commit the plan; seconds until it is due again, or None."""
        written = self._written.get(key)
        if written is not None:
            revision, caches = written
            for cache in caches:
                await cache.wait_for_revision(revision)
            del self._written[key]
        guards = self.owner(key)
        if guards is None:
            self._parked.add(key)
            return None
        plan = await self.plan(key)
        if plan is None:
            return None
        if plan.writes:
            # Asked again after planning: a key lost meanwhile fails here, not in etcd.
            guards = self.owner(key)
            if guards is None:
                self._parked.add(key)
                return None
            revision = await self.store.commit(plan.writes, guards=guards)
            written_keys = plan.keys()
            caches = [c for c in self.caches if any(k.startswith(c.prefix) for k in written_keys)]
            if caches:
                self._written[key] = (revision, caches)
        for bookkeeping in plan.committed:
            bookkeeping()
        return plan.requeue_after or None

    def _failed(self, key: str, error: Exception, delay: float) -> None:
        if isinstance(error, Conflict | NotFound | AlreadyExists):
            # Someone else wrote first, or the object vanished or appeared under us:
            # the cache will catch up, and the next pass sees the newest state.
            self._conflicts.inc()
            log.debug("%s %s: %s; requeued", self.name, key, error)
        elif isinstance(error, Unavailable):
            self._errors.inc()
            log.warning("%s %s: %s; retry in %.2fs", self.name, key, error, delay)
        else:
            self._errors.inc()
            log.error("%s %s failed; retry in %.2fs", self.name, key, delay, exc_info=error)

    async def run(self) -> None:
        await self.reconciler.run()
