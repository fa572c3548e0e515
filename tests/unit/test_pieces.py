"""Small pure pieces: the keyed queue, Struct conversion, drift projection."""

from __future__ import annotations

import asyncio
from typing import Any

from agent import drift
from archipel import structs
from archipel.workqueue import WorkQueue


async def test_queue_deduplicates_and_requeues_dirty_keys() -> None:
    queue = WorkQueue("t")
    queue.add("a")
    queue.add("a")
    queue.add("b")
    assert len(queue) == 2
    key = await queue.get()
    assert key == "a"
    queue.add("a")  # changed while being processed
    assert len(queue) == 1
    queue.done("a")
    assert len(queue) == 2
    assert await queue.get() == "b"


async def test_queue_backs_off_per_key() -> None:
    queue = WorkQueue("t", base_delay=0.01, max_delay=0.04)
    delays = [queue.add_rate_limited("a") for _ in range(5)]
    assert delays[0] < delays[2]
    assert max(delays) <= 0.04 * 1.2
    queue.forget("a")
    assert queue.add_rate_limited("a") <= 0.01 * 1.2
    assert await asyncio.wait_for(queue.get(), timeout=1) == "a"


async def test_a_queue_with_a_priority_hands_out_higher_priorities_first() -> None:
    priorities = {"low": -5, "plain": 0, "high": 1000, "also-high": 1000}
    queue = WorkQueue("t", priority=priorities.__getitem__)
    for key in ("low", "plain", "high", "also-high"):
        queue.add(key)
    # Equal priorities keep the order they came in.
    assert [await queue.get() for _ in range(4)] == ["high", "also-high", "plain", "low"]


async def test_a_queue_without_a_priority_is_first_come_first_out() -> None:
    queue = WorkQueue("t")
    for key in ("c", "a", "b"):
        queue.add(key)
    assert [await queue.get() for _ in range(3)] == ["c", "a", "b"]


def test_struct_round_trip_keeps_integers() -> None:
    manifest = {"spec": {"replicas": 3, "ratio": 0.5, "items": [1, "x", None, True]}}
    assert structs.from_struct(structs.to_struct(manifest)) == manifest
    assert isinstance(structs.from_struct(structs.to_struct(manifest))["spec"]["replicas"], int)


def test_projection_ignores_what_was_not_applied() -> None:
    desired = {"spec": {"replicas": 2, "template": {"containers": [{"name": "a", "image": "x"}]}}}
    live: dict[str, Any] = {
        "spec": {
            "replicas": 2,
            "strategy": {"type": "RollingUpdate"},
            "template": {"containers": [{"name": "a", "image": "x", "imagePullPolicy": "Always"}]},
        },
        "status": {"readyReplicas": 1},
    }
    assert drift.project(desired, live) == desired
    edited = {**live, "spec": {**live["spec"], "replicas": 5}}
    assert drift.project(desired, edited) != desired


async def test_a_failed_session_helper_ends_the_agents_session_with_its_error() -> None:
    """The agent's heartbeats run beside its stream: when they fail, the stream is
    cancelled and the session ends with their error, which is not retried."""
    from agent.main import _end_session_on_failure

    class Call:
        cancelled = False

        def cancel(self) -> None:
            self.cancelled = True

    async def broken() -> None:
        raise RuntimeError("heartbeats broke")

    call, failures = Call(), []  # type: ignore[var-annotated]
    task = asyncio.create_task(broken(), name="heartbeats")
    task.add_done_callback(lambda done: _end_session_on_failure(call, failures, done))
    await asyncio.gather(task, return_exceptions=True)
    await asyncio.sleep(0)  # done callbacks run on the next loop pass
    assert call.cancelled and [str(e) for e in failures] == ["heartbeats broke"]

    quiet = Call()
    stopped = asyncio.create_task(asyncio.sleep(10))
    stopped.add_done_callback(lambda done: _end_session_on_failure(quiet, failures, done))
    stopped.cancel()
    await asyncio.gather(stopped, return_exceptions=True)
    await asyncio.sleep(0)
    assert not quiet.cancelled and len(failures) == 1
