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
