"""The workload rebalancer controller's decisions, as tables.

:func:`controlplane.controllers.workloadrebalancer.plan`: a rebalancer and its
workloads' bindings -> the bindings' ``rescheduleTriggeredAt``, the rebalancer's status
(a result per workload, the finish time) or its deletion once its TTL ran out. Real
protobuf objects; no etcd, no informer, no clock.
"""

from __future__ import annotations

import datetime

import pytest

from archipel.core import kinds
from archipel.v1alpha1 import apps_pb2, work_pb2
from controlplane.controllers import workloadrebalancer
from controlplane.controllers.workloadrebalancer import (
    BINDING_NOT_FOUND,
    FAILED,
    SUCCESSFUL,
    Observed,
    plan,
    template_key_of,
)
from controlplane.plan import Delete, Plan, Update

CREATED = datetime.datetime(2024, 5, 25, 9, 49, 51, tzinfo=datetime.UTC)
NOW = CREATED + datetime.timedelta(seconds=2, microseconds=500)
WEB = ("apps/v1", "Deployment", "shop", "web")
API = ("apps/v1", "Deployment", "shop", "api")
GHOST = ("apps/v1", "Deployment", "shop", "ghost")
Ref = tuple[str, str, str, str]


def reference(ref: Ref) -> apps_pb2.WorkloadReference:
    api_version, kind, namespace, name = ref
    return apps_pb2.WorkloadReference(
        api_version=api_version, kind=kind, namespace=namespace, name=name
    )


def rebalancer(
    *workloads: Ref,
    generation: int = 1,
    ttl: int | None = None,
    results: dict[Ref, tuple[str, str]] | None = None,
    observed_generation: int = 1,
    finished: datetime.datetime | None = None,
) -> apps_pb2.WorkloadRebalancer:
    obj = apps_pb2.WorkloadRebalancer(
        api_version=kinds.WORKLOAD_REBALANCER.api_version, kind="WorkloadRebalancer"
    )
    obj.metadata.name = "demo"
    obj.metadata.resource_version = "7"
    obj.metadata.generation = generation
    obj.metadata.creation_timestamp.FromDatetime(CREATED)
    for ref in workloads:
        obj.spec.workloads.append(reference(ref))
    if ttl is not None:
        obj.spec.ttl_seconds_after_finished = ttl
    if results is not None:
        obj.status.observed_generation = observed_generation
        for ref, (result, reason) in sorted(results.items()):
            obj.status.observed_workloads.add(workload=reference(ref), result=result, reason=reason)
    if finished is not None:
        obj.status.finish_time.FromDatetime(finished)
    return obj


def binding(ref: Ref, *, triggered: datetime.datetime | None = None) -> work_pb2.PropagationBinding:
    api_version, kind, namespace, name = ref
    obj = work_pb2.PropagationBinding(
        api_version=kinds.PROPAGATION_BINDING.api_version, kind="PropagationBinding"
    )
    obj.metadata.name = f"{name}-{kind.lower()}"
    obj.metadata.namespace = namespace
    obj.metadata.resource_version = "20"
    resource = obj.spec.resource
    resource.api_version, resource.kind = api_version, kind
    resource.namespace, resource.name = namespace, name
    if triggered is not None:
        obj.spec.reschedule_triggered_at.FromDatetime(triggered)
    return obj


def observe(
    current: apps_pb2.WorkloadRebalancer | None,
    *bindings: work_pb2.PropagationBinding,
    now: datetime.datetime = NOW,
) -> Plan | None:
    by_key = {
        template_key_of(
            apps_pb2.WorkloadReference(
                api_version=b.spec.resource.api_version,
                kind=b.spec.resource.kind,
                namespace=b.spec.resource.namespace,
                name=b.spec.resource.name,
            )
        ): b
        for b in bindings
    }
    return plan(Observed(rebalancer=current, bindings=by_key, now=now))


def triggered(result: Plan) -> dict[str, datetime.datetime]:
    """Each binding the plan updates, with the rescheduleTriggeredAt it writes."""
    return {
        write.obj.metadata.name: write.obj.spec.reschedule_triggered_at.ToDatetime(
            tzinfo=datetime.UTC
        )
        for write in result.writes
        if isinstance(write, Update) and write.kind is kinds.PROPAGATION_BINDING
    }


def status_of(result: Plan) -> apps_pb2.WorkloadRebalancerStatus | None:
    for write in result.writes:
        if isinstance(write, Update) and write.kind is kinds.WORKLOAD_REBALANCER:
            status: apps_pb2.WorkloadRebalancerStatus = write.obj.status
            return status
    return None


def results(status: apps_pb2.WorkloadRebalancerStatus) -> list[tuple[str, str, str]]:
    return [(o.workload.name, o.result, o.reason) for o in status.observed_workloads]


@pytest.mark.parametrize(
    ("before", "expected"),
    [
        # Never asked, or asked before this rebalancer: asked now, at its creation.
        (None, True),
        (CREATED - datetime.timedelta(seconds=1), True),
        # Already asked at that time or later (a newer rebalancer): left alone, and
        # still Successful.
        (CREATED, False),
        (CREATED + datetime.timedelta(minutes=1), False),
    ],
)
def test_the_binding_is_asked_to_reschedule_at_the_rebalancers_creation(
    before: datetime.datetime | None, expected: bool
) -> None:
    result = observe(rebalancer(WEB), binding(WEB, triggered=before))
    assert result is not None
    assert triggered(result) == ({"web-deployment": CREATED} if expected else {})
    status = status_of(result)
    assert status is not None
    assert results(status) == [("web", SUCCESSFUL, "")]
    assert status.observed_generation == 1
    # Finished in this pass: the finish time is now, in whole seconds.
    assert status.finish_time.ToDatetime(tzinfo=datetime.UTC) == NOW.replace(microsecond=0)


def test_the_bindings_and_the_status_are_one_guarded_plan() -> None:
    current = rebalancer(WEB)
    web = binding(WEB)
    result = observe(current, web)
    assert result is not None
    assert [type(w) for w in result.writes] == [Update, Update]
    assert [w.current for w in result.writes if isinstance(w, Update)] == [web, current]
    assert result.requeue_after == 0


def test_a_workload_without_a_binding_fails_and_the_others_succeed_in_order() -> None:
    result = observe(rebalancer(WEB, GHOST, API), binding(WEB), binding(API))
    assert result is not None
    assert set(triggered(result)) == {"web-deployment", "api-deployment"}
    status = status_of(result)
    assert status is not None
    # Ordered by apiVersion, kind, namespace and name, as Karmada orders them.
    assert results(status) == [
        ("api", SUCCESSFUL, ""),
        ("ghost", FAILED, BINDING_NOT_FOUND),
        ("web", SUCCESSFUL, ""),
    ]
    assert status.HasField("finish_time")


def test_two_references_to_one_template_write_its_binding_once() -> None:
    beta = ("apps/v1beta1", "Deployment", "shop", "web")
    result = observe(rebalancer(WEB, beta, WEB), binding(WEB))
    assert result is not None
    assert len([w for w in result.writes if w.kind is kinds.PROPAGATION_BINDING]) == 1
    status = status_of(result)
    assert status is not None
    assert [o.workload.api_version for o in status.observed_workloads] == [
        "apps/v1",
        "apps/v1beta1",
    ]


def test_a_finished_rebalancer_is_left_alone() -> None:
    finished = rebalancer(WEB, results={WEB: (SUCCESSFUL, "")}, finished=CREATED)
    # Results are final: a binding that lost its request (or appeared since) is not asked.
    assert observe(finished, binding(WEB)) is None
    assert observe(finished) is None


def test_added_workloads_get_results_and_removed_ones_drop() -> None:
    # Generation 2 replaced api with web and ghost.
    edited = rebalancer(
        WEB,
        GHOST,
        generation=2,
        results={API: (SUCCESSFUL, "")},
        finished=CREATED,
    )
    result = observe(edited, binding(WEB), binding(API))
    assert result is not None
    assert set(triggered(result)) == {"web-deployment"}
    status = status_of(result)
    assert status is not None
    assert results(status) == [("ghost", FAILED, BINDING_NOT_FOUND), ("web", SUCCESSFUL, "")]
    assert status.observed_generation == 2
    assert status.finish_time.ToDatetime(tzinfo=datetime.UTC) == NOW.replace(microsecond=0)


def test_a_kept_workload_keeps_its_result_across_generations() -> None:
    edited = rebalancer(
        WEB, API, generation=2, results={WEB: (FAILED, BINDING_NOT_FOUND)}, finished=CREATED
    )
    # web's binding exists by now; its result stays what it was.
    result = observe(edited, binding(WEB), binding(API))
    assert result is not None
    assert set(triggered(result)) == {"api-deployment"}
    status = status_of(result)
    assert status is not None
    assert results(status) == [("api", SUCCESSFUL, ""), ("web", FAILED, BINDING_NOT_FOUND)]


@pytest.mark.parametrize(
    ("ttl", "finished", "deleted", "requeue_after"),
    [
        # Finished 2 s ago (CREATED), a TTL of 300 s: look again when it runs out.
        (300, CREATED, False, 298.0),
        # Run out: deleted, guarded by the version observed.
        (2, CREATED, True, 0.0),
        (0, CREATED, True, 0.0),
        # No TTL: it stays.
        (None, CREATED, False, 0.0),
    ],
)
def test_the_ttl_deletes_a_finished_rebalancer_by_a_requeue(
    ttl: int | None, finished: datetime.datetime, deleted: bool, requeue_after: float
) -> None:
    current = rebalancer(WEB, ttl=ttl, results={WEB: (SUCCESSFUL, "")}, finished=finished)
    result = observe(current, binding(WEB), now=CREATED + datetime.timedelta(seconds=2))
    if not deleted and not requeue_after:
        assert result is None
        return
    assert result is not None
    assert result.requeue_after == pytest.approx(requeue_after)
    if deleted:
        assert result.writes == [Delete(kinds.WORKLOAD_REBALANCER, current)]
    else:
        assert result.writes == []


def test_a_ttl_counts_from_the_finish_time_this_pass_sets() -> None:
    result = observe(rebalancer(WEB, ttl=10), binding(WEB))
    assert result is not None
    status = status_of(result)
    assert status is not None
    assert result.requeue_after == pytest.approx(10.0)
    # A TTL of 0 deletes it as it finishes; the bindings are still asked.
    result = observe(rebalancer(WEB, ttl=0), binding(WEB))
    assert result is not None
    assert set(triggered(result)) == {"web-deployment"}
    assert [type(w) for w in result.writes] == [Update, Delete]


def test_a_gone_or_deleting_rebalancer_does_nothing() -> None:
    assert observe(None, binding(WEB)) is None
    deleting = rebalancer(WEB)
    deleting.metadata.deletion_timestamp.FromDatetime(CREATED)
    assert observe(deleting, binding(WEB)) is None


def test_only_spec_changes_and_new_rebalancers_are_reconciled() -> None:
    queued: list[str] = []

    class Queue:
        def enqueue(self, key: str) -> None:
            queued.append(key)

    controller = object.__new__(workloadrebalancer.WorkloadRebalancerController)
    controller.controller = Queue()  # type: ignore[assignment]
    key = "workloadrebalancers/_/demo"
    first = rebalancer(WEB)
    controller._on_rebalancer(key, None, first)
    with_status = rebalancer(WEB, results={WEB: (SUCCESSFUL, "")}, finished=CREATED)
    controller._on_rebalancer(key, first, with_status)  # its own status write
    controller._on_rebalancer(key, with_status, None)  # deleted
    edited = rebalancer(WEB, API, generation=2)
    controller._on_rebalancer(key, with_status, edited)
    assert queued == [key, key]
