"""A keyed work queue: one key at a time, many keys in parallel, retries with backoff.

The control plane's controllers and the agent both use it.

Events only name keys; a key added again while it waits is stored once, and a key
added while a worker holds it is handed out again once that worker is done, so the
reconcile that follows always sees the newest state.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable


class WorkQueue:
    def __init__(
        self,
        name: str,
        *,
        base_delay: float = 0.01,
        max_delay: float = 30.0,
        on_depth: Callable[[int], None] | None = None,
    ) -> None:
        self.name = name
        self.base_delay = base_delay
        self.max_delay = max_delay
        self._ready: asyncio.Queue[str] = asyncio.Queue()
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
        self._ready.put_nowait(key)
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
        key = await self._ready.get()
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
