"""Small pure pieces: the keyed queue, Struct conversion, drift projection, health,
status aggregation."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from agent import interpreter
from archipel import structs
from archipel.v1alpha1 import work_pb2
from archipel.workqueue import WorkQueue
from controlplane.controllers.status import aggregate_template_status


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
    assert interpreter.project(desired, live) == desired
    edited = {**live, "spec": {**live["spec"], "replicas": 5}}
    assert interpreter.project(desired, edited) != desired


@pytest.mark.parametrize(
    ("status", "health"),
    [
        ({"observedGeneration": 2, "updatedReplicas": 3, "availableReplicas": 3}, "Healthy"),
        ({"observedGeneration": 1, "updatedReplicas": 3, "availableReplicas": 3}, "Unhealthy"),
        ({"observedGeneration": 2, "updatedReplicas": 3, "availableReplicas": 1}, "Unhealthy"),
    ],
)
def test_deployment_health(status: dict[str, int], health: str) -> None:
    deployment = {
        "kind": "Deployment",
        "metadata": {"generation": 2},
        "spec": {"replicas": 3},
        "status": status,
    }
    assert interpreter.health(deployment) == health


def test_deployment_status_is_summed_like_karmada() -> None:
    def item(cluster: str, **status: int) -> work_pb2.AggregatedStatusItem:
        result = work_pb2.AggregatedStatusItem(cluster_name=cluster)
        result.status.CopyFrom(structs.to_struct(dict(status)))
        return result

    items = [
        item(
            "a",
            replicas=2,
            readyReplicas=2,
            availableReplicas=2,
            updatedReplicas=2,
            observedGeneration=4,
            generation=4,
        ),
        item(
            "b",
            replicas=3,
            readyReplicas=1,
            availableReplicas=1,
            updatedReplicas=3,
            observedGeneration=7,
            generation=7,
        ),
    ]
    status = aggregate_template_status("Deployment", items, template_generation=2)
    assert status == {
        "replicas": 5,
        "readyReplicas": 3,
        "availableReplicas": 3,
        "updatedReplicas": 5,
        "observedGeneration": 2,
    }
    items[1] = item("b", replicas=3, observedGeneration=6, generation=7)
    lagging = aggregate_template_status("Deployment", items, template_generation=2)
    assert lagging is not None and "observedGeneration" not in lagging
