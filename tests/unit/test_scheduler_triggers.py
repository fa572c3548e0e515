"""What makes the scheduler controller look at bindings again (no etcd: caches only)."""

from __future__ import annotations

from typing import Any

from archipel.core import kinds
from archipel.core.conditions import set_condition
from archipel.v1alpha1 import cluster_pb2, work_pb2
from controlplane.context import Context, Settings
from controlplane.controllers.scheduler import SchedulerController
from controlplane.store import Store


def cluster(name: str, *, cpu: str = "8", label: str = "a") -> cluster_pb2.MemberCluster:
    result = cluster_pb2.MemberCluster()
    result.metadata.name = name
    result.metadata.labels["tier"] = label
    result.status.resource_summary.allocatable["cpu"] = cpu
    return result


def binding(name: str, *, scheduled: bool) -> work_pb2.PropagationBinding:
    result = work_pb2.PropagationBinding()
    result.metadata.name = name
    result.metadata.namespace = "default"
    set_condition(result.status.conditions, "Scheduled", "True" if scheduled else "False", "r", "m")
    return result


def controller() -> tuple[SchedulerController, Context]:
    store: Any = Store(etcd=None)  # type: ignore[arg-type]  # never touched: no reconcile runs
    context = Context.build(Settings(etcd_endpoints=[]), store)
    scheduler = SchedulerController(context)
    for item in (binding("placed", scheduled=True), binding("stuck", scheduled=False)):
        context.bindings._set(kinds.PROPAGATION_BINDING.key_of(item), item)
    context.clusters._set(kinds.MEMBER_CLUSTER.key("", "c1"), cluster("c1"))
    drain(scheduler)
    return scheduler, context


def drain(scheduler: SchedulerController) -> set[str]:
    queue = scheduler.controller.queue
    keys = set(queue._waiting)
    queue._waiting.clear()
    while not queue._ready.empty():
        queue._ready.get_nowait()
    return keys


def test_capacity_changes_reschedule_only_what_did_not_fit() -> None:
    scheduler, context = controller()
    context.clusters._set(kinds.MEMBER_CLUSTER.key("", "c1"), cluster("c1", cpu="4"))
    assert drain(scheduler) == {"propagationbindings/default/stuck"}


def test_placement_relevant_changes_reschedule_everything() -> None:
    scheduler, context = controller()
    context.clusters._set(kinds.MEMBER_CLUSTER.key("", "c1"), cluster("c1", label="b"))
    assert drain(scheduler) == {
        "propagationbindings/default/placed",
        "propagationbindings/default/stuck",
    }


def test_status_only_heartbeats_change_nothing() -> None:
    scheduler, context = controller()
    beat = cluster("c1")
    beat.status.kubernetes_version = "v1.35.4"
    context.clusters._set(kinds.MEMBER_CLUSTER.key("", "c1"), beat)
    assert drain(scheduler) == set()
