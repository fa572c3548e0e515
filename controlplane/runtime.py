"""Running controllers: workers that take keys from a queue and reconcile them.

A reconcile is idempotent and level-triggered; it returns nothing, or a
:class:`Result` asking to be run again later. A :class:`Conflict` (another writer won
the race) requeues quickly; any other error is logged and retried with backoff. The
loop survives ordinary errors, so one bad object never stops a controller.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import Awaitable, Callable

from archipel.core.errors import AlreadyExists, Conflict, NotFound, Unavailable
from archipel.workqueue import WorkQueue
from controlplane import metrics

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class Result:
    requeue_after: float = 0.0


Reconcile = Callable[[str], Awaitable[Result | None]]


class Controller:
    def __init__(self, name: str, reconcile: Reconcile, *, workers: int = 4) -> None:
        self.name = name
        self.reconcile = reconcile
        self.workers = workers
        self.queue = WorkQueue(name, on_depth=metrics.QUEUE_DEPTH.labels(name).set)
        self._seconds = metrics.RECONCILE_SECONDS.labels(name)
        self._errors = metrics.RECONCILE_ERRORS.labels(name)
        self._conflicts = metrics.RECONCILE_CONFLICTS.labels(name)

    def enqueue(self, key: str) -> None:
        self.queue.add(key)

    async def _worker(self) -> None:
        while True:
            key = await self.queue.get()
            started = time.perf_counter()
            try:
                result = await self.reconcile(key)
            except (Conflict, NotFound, AlreadyExists) as error:
                # Someone else wrote first, or the object vanished or appeared under
                # us: the cache will catch up, and the next pass sees the newest state.
                self._conflicts.inc()
                log.debug("%s %s: %s; requeued", self.name, key, error)
                self.queue.add_rate_limited(key)
            except Unavailable as error:
                self._errors.inc()
                delay = self.queue.add_rate_limited(key)
                log.warning("%s %s: %s; retry in %.2fs", self.name, key, error, delay)
            except asyncio.CancelledError:
                raise
            except Exception:
                self._errors.inc()
                delay = self.queue.add_rate_limited(key)
                log.exception("%s %s failed; retry in %.2fs", self.name, key, delay)
            else:
                self.queue.forget(key)
                if result is not None and result.requeue_after > 0:
                    self.queue.add_after(key, result.requeue_after)
            finally:
                self._seconds.observe(time.perf_counter() - started)
                self.queue.done(key)

    async def run(self) -> None:
        async with asyncio.TaskGroup() as group:
            for index in range(self.workers):
                group.create_task(self._worker(), name=f"{self.name}-{index}")
