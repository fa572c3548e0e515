"""A keyed work queue, and the workers that reconcile its keys.

One key at a time, many keys in parallel, retries with backoff. The control plane's
controllers and the agent's works both run on it.

Events only name keys; a key added again while it waits is stored once, and a key
added while a worker holds it is handed out again once that worker is done, so the
reconcile that follows always sees the newest state. Keys leave in the order they
came, unless the queue is given a priority: then higher priorities leave first (in the
order they came among equals), as Karmada's scheduler queue orders bindings.
"""

from __future__ import annotations

import asyncio
import itertools
import random
import time
from collections.abc import Awaitable, Callable


class WorkQueue:
    def __init__(
        self,
        name: str,
        *,
        base_delay: float = 0.01,
        max_delay: float = 30.0,
        on_depth: Callable[[int], None] | None = None,
        priority: Callable[[str], int] | None = None,
    ) -> None:
        self.name = name
        self.base_delay = base_delay
        self.max_delay = max_delay
        # (-priority, arrival, key): the arrival count keeps equals first come, first out.
        self._ready: asyncio.PriorityQueue[tuple[int, int, str]] = asyncio.PriorityQueue()
        self._arrivals = itertools.count()
        self._priority: Callable[[str], int] = priority or (lambda key: 0)
        self._waiting: set[str] = set()
        self._processing: set[str] = set()
        self._dirty: set[str] = set()
        self._failures: dict[str, int] = {}
        self._timers: dict[str, asyncio.TimerHandle] = {}
        self._on_depth: Callable[[int], None] = on_depth or (lambda depth: None)

    def add(self, key: str) -> None:
        if key in self._processing:
            self._dirty.add(key)
            return
        if key in self._waiting:
            return
        self._waiting.add(key)
        self._ready.put_nowait((-self._priority(key), next(self._arrivals), key))
        self._on_depth(len(self._waiting))

    def add_after(self, key: str, delay: float) -> None:
        if delay <= 0:
            self.add(key)
            return
        timer = self._timers.get(key)
        loop = asyncio.get_running_loop()
        when = loop.time() + delay
        if timer is not None:
            if timer.when() <= when:
                return
            timer.cancel()
        self._timers[key] = loop.call_at(when, self._fire, key)

    def _fire(self, key: str) -> None:
        self._timers.pop(key, None)
        self.add(key)

    def add_rate_limited(self, key: str) -> float:
        """Requeue after a failure, backing off exponentially per key (with jitter)."""
        failures = self._failures.get(key, 0)
        self._failures[key] = failures + 1
        delay: float = min(self.base_delay * 2.0**failures, self.max_delay)
        delay *= random.uniform(0.8, 1.2)  # jitter: retries of many keys spread out
        self.add_after(key, delay)
        return delay

    def forget(self, key: str) -> None:
        self._failures.pop(key, None)

    async def get(self) -> str:
        _, _, key = await self._ready.get()
        self._waiting.discard(key)
        self._processing.add(key)
        self._on_depth(len(self._waiting))
        return key

    def done(self, key: str) -> None:
        self._processing.discard(key)
        if key in self._dirty:
            self._dirty.discard(key)
            self.add(key)

    def __len__(self) -> int:
        return len(self._waiting)

    def idle(self) -> bool:
        return not self._waiting and not self._processing and not self._timers


Reconcile = Callable[[str], Awaitable[float | None]]
"""Bring one key to its desired state; returns seconds until it must be looked at
again (time-driven decisions only), or None."""
OnFailure = Callable[[str, Exception, float], None]
"""Told of each failed reconcile: the key, the error and the retry delay."""


class Reconciler:
    """Workers that take keys from a :class:`WorkQueue` and reconcile them.

    The control plane's controllers and the agent's works run on it. A reconcile is
    idempotent and level-triggered; a failure is handed to ``on_failure`` (which logs
    and counts it as its side sees fit) and the key is retried with per-key backoff, so
    one bad object never stops the loop. Only cancellation ends it.
    """

    def __init__(
        self,
        name: str,
        reconcile: Reconcile,
        *,
        workers: int,
        on_failure: OnFailure,
        queue: WorkQueue | None = None,
        on_duration: Callable[[float], None] | None = None,
    ) -> None:
        self.name = name
        self.reconcile = reconcile
        self.workers = workers
        self.queue = queue if queue is not None else WorkQueue(name)
        self._on_failure = on_failure
        self._on_duration: Callable[[float], None] = on_duration or (lambda seconds: None)

    def enqueue(self, key: str) -> None:
        self.queue.add(key)

    async def _worker(self) -> None:
        while True:
            key = await self.queue.get()
            started = time.perf_counter()
            try:
                requeue_after = await self.reconcile(key)
            except asyncio.CancelledError:
                raise
            except Exception as error:
                self._on_failure(key, error, self.queue.add_rate_limited(key))
            else:
                self.queue.forget(key)
                if requeue_after:
                    self.queue.add_after(key, requeue_after)
            finally:
                self._on_duration(time.perf_counter() - started)
                self.queue.done(key)

    async def run(self) -> None:
        async with asyncio.TaskGroup() as group:
            for index in range(self.workers):
                group.create_task(self._worker(), name=f"{self.name}-{index}")
