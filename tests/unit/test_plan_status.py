"""The status controllers' plans, as tables: observed snapshots in, writes out (no etcd).

Work status: what an agent reported becomes the work's status, or releases its
finalizer. Binding status: one write of the binding (aggregatedStatus, FullyApplied,
StatusAggregated) and at most one of the template's status, in one plan.
"""

from __future__ import annotations

import copy
import dataclasses
import json
from collections.abc import Sequence
from typing import Any

import pytest
from google.protobuf import json_format

from archipel import interpreter, structs
from archipel.core import kinds
from archipel.core.conditions import find, set_condition
from archipel.core.kinds import Manifest
from archipel.v1alpha1 import agent_pb2, interpreter_pb2, work_pb2
from controlplane.context import WORK_FINALIZER
from controlplane.controllers.status import (
    ObservedBinding,
    ObservedWork,
    PendingReports,
    plan_binding_status,
    plan_work_status,
)
from controlplane.etcd import Delete as EtcdDelete
from controlplane.etcd import Put
from controlplane.plan import Plan, Update, Write, key_of
from controlplane.store import Store

# -- work status ---------------------------------------------------------------------

WORK_KEY = "propagationworks/archipel-es-c1/default.web-deployment"
OTHER_FINALIZER = "example.io/keep"


def manifest_status(health: str = "Healthy", **status: Any) -> work_pb2.ManifestStatus:
    result = work_pb2.ManifestStatus(health=health)
    result.identifier.kind = "Deployment"
    result.identifier.name = "web"
    if status:
        result.status.CopyFrom(structs.to_struct(status))
    return result


def work(
    *,
    uid: str = "u1",
    generation: int = 3,
    deleting: bool = False,
    finalizers: Sequence[str] = (WORK_FINALIZER,),
    applied: tuple[str, str, str, int] | None = None,
    manifests: Sequence[work_pb2.ManifestStatus] = (),
) -> work_pb2.PropagationWork:
    result = work_pb2.PropagationWork()
    result.metadata.namespace = "archipel-es-c1"
    result.metadata.name = "default.web-deployment"
    result.metadata.uid = uid
    result.metadata.generation = generation
    result.metadata.resource_version = "41"
    result.metadata.finalizers.extend(finalizers)
    if deleting:
        result.metadata.deletion_timestamp.FromSeconds(1_700_000_000)
    if applied is not None:
        set_condition(result.status.conditions, "Applied", *applied)
    result.status.manifest_statuses.extend(manifests)
    return result


def report(
    *,
    uid: str = "u1",
    applied: bool = True,
    message: str = "",
    generation: int = 3,
    manifests: Sequence[work_pb2.ManifestStatus] = (),
) -> agent_pb2.WorkStatusReport:
    return agent_pb2.WorkStatusReport(
        name="default.web-deployment",
        uid=uid,
        applied=applied,
        message=message,
        generation=generation,
        manifest_statuses=list(manifests),
    )


READY = manifest_status(replicas=2, readyReplicas=2)


def condition_of(conditions: Any, type_: str) -> tuple[str, str, str, int] | None:
    found = find(conditions, type_)
    if found is None:
        return None
    return (found.status, found.reason, found.message, found.observed_generation)


def work_fields(obj: work_pb2.PropagationWork) -> dict[str, Any]:
    return {
        "finalizers": list(obj.metadata.finalizers),
        "Applied": condition_of(obj.status.conditions, "Applied"),
        "manifests": [
            (m.health, structs.from_struct(m.status) if m.HasField("status") else None)
            for m in obj.status.manifest_statuses
        ],
    }


# (work, report, deleted uid, expected writes, report still pending, deletion still pending)
WORK_CASES = [
    pytest.param(
        work(),
        report(manifests=[READY]),
        None,
        [
            {
                "finalizers": [WORK_FINALIZER],
                "Applied": ("True", "AppliedSuccessful", "", 3),
                "manifests": [("Healthy", {"replicas": 2, "readyReplicas": 2})],
            }
        ],
        False,
        False,
        id="report applied",
    ),
    pytest.param(
        work(applied=("True", "AppliedSuccessful", "", 2), manifests=[READY]),
        report(applied=False, message="quota exceeded"),
        None,
        [
            {
                "finalizers": [WORK_FINALIZER],
                "Applied": ("False", "AppliedFailed", "quota exceeded", 3),
                "manifests": [],
            }
        ],
        False,
        False,
        id="report failed",
    ),
    pytest.param(
        work(uid="u2"),
        report(uid="u1", manifests=[READY]),
        None,
        None,
        True,
        False,
        id="stale report for another uid ignored",
    ),
    pytest.param(
        work(applied=("True", "AppliedSuccessful", "", 3), manifests=[READY]),
        report(manifests=[READY]),
        None,
        [],
        False,
        False,
        id="unchanged status: no write, report forgotten",
    ),
    pytest.param(
        work(deleting=True, finalizers=[WORK_FINALIZER, OTHER_FINALIZER]),
        None,
        "u1",
        [{"finalizers": [OTHER_FINALIZER], "Applied": None, "manifests": []}],
        False,
        False,
        id="deletion with matching uid releases the finalizer",
    ),
    pytest.param(
        work(deleting=True),
        report(manifests=[READY]),
        "",
        [{"finalizers": [], "Applied": None, "manifests": []}],
        True,
        False,
        id="deletion with empty uid releases the finalizer, report left alone",
    ),
    pytest.param(
        work(deleting=True),
        None,
        "u0",
        [],
        False,
        False,
        id="deletion of another uid dropped without a write",
    ),
    pytest.param(
        work(deleting=True, finalizers=[OTHER_FINALIZER]),
        None,
        "u1",
        [],
        False,
        False,
        id="deletion when the finalizer is already gone",
    ),
    pytest.param(
        work(),
        report(manifests=[READY]),
        "u1",
        [
            {
                "finalizers": [WORK_FINALIZER],
                "Applied": ("True", "AppliedSuccessful", "", 3),
                "manifests": [("Healthy", {"replicas": 2, "readyReplicas": 2})],
            }
        ],
        False,
        True,
        id="deletion of a work not deleting waits; the report is written",
    ),
    pytest.param(None, report(), "u1", [], False, False, id="work gone: all forgotten"),
    pytest.param(work(), None, None, None, False, False, id="nothing pending"),
]


@pytest.mark.parametrize(
    ("current", "pending_report", "deleted_uid", "expected", "report_kept", "deletion_kept"),
    WORK_CASES,
)
def test_work_status_plan(
    current: work_pb2.PropagationWork | None,
    pending_report: agent_pb2.WorkStatusReport | None,
    deleted_uid: str | None,
    expected: list[dict[str, Any]] | None,
    report_kept: bool,
    deletion_kept: bool,
) -> None:
    pending = PendingReports()
    if pending_report is not None:
        pending.add_report(WORK_KEY, pending_report)
    if deleted_uid is not None:
        pending.add_deleted(WORK_KEY, deleted_uid)
    observed = ObservedWork(WORK_KEY, current, pending.report(WORK_KEY), deleted_uid)

    plan = plan_work_status(observed, pending)

    if expected is None:
        assert plan is None
        assert pending.report(WORK_KEY) is pending_report
        return
    assert plan is not None
    assert [(type(w).__name__, w.kind.name, key_of(w)) for w in plan.writes] == [
        ("Update", "PropagationWork", WORK_KEY)
    ] * len(expected)
    assert [work_fields(w.obj) for w in plan.writes] == expected
    for write in plan.writes:
        assert isinstance(write, Update)
        assert write.current is current  # guarded by what was observed
        assert write.obj.metadata.resource_version == "41"
    # Nothing is forgotten before the commit.
    assert pending.report(WORK_KEY) is pending_report
    assert pending.deleted_uid(WORK_KEY) == deleted_uid
    for bookkeeping in plan.committed:
        bookkeeping()
    assert (pending.report(WORK_KEY) is not None) == report_kept
    assert (pending.deleted_uid(WORK_KEY) is not None) == deletion_kept


def test_a_report_newer_than_the_plan_survives_its_commit() -> None:
    pending = PendingReports()
    first = report(applied=False, message="pulling")
    pending.add_report(WORK_KEY, first)
    plan = plan_work_status(ObservedWork(WORK_KEY, work(), first, None), pending)
    assert plan is not None
    newer = report(manifests=[READY])
    pending.add_report(WORK_KEY, newer)  # arrives while the plan is committed
    for bookkeeping in plan.committed:
        bookkeeping()
    assert pending.report(WORK_KEY) is newer


def test_a_failed_commit_keeps_the_report_for_the_retry() -> None:
    pending = PendingReports()
    pending.add_report(WORK_KEY, report(manifests=[READY]))
    observed = ObservedWork(WORK_KEY, work(), pending.report(WORK_KEY), None)
    first = plan_work_status(observed, pending)
    assert first is not None and len(first) == 1
    # The commit failed: its callbacks never ran, so the retry plans the same write.
    retry = plan_work_status(
        ObservedWork(WORK_KEY, work(), pending.report(WORK_KEY), None), pending
    )
    assert retry is not None
    assert [work_fields(w.obj) for w in retry.writes] == [work_fields(w.obj) for w in first.writes]


def test_a_deletion_of_another_uid_reported_meanwhile_survives() -> None:
    pending = PendingReports()
    pending.add_deleted(WORK_KEY, "u0")
    plan = plan_work_status(ObservedWork(WORK_KEY, work(deleting=True), None, "u0"), pending)
    assert plan is not None and not plan.writes
    pending.add_deleted(WORK_KEY, "u1")
    for bookkeeping in plan.committed:
        bookkeeping()
    assert pending.deleted_uid(WORK_KEY) == "u1"


# -- committing (a recording etcd stands in for the real one) --------------------------


class RecordingEtcd:
    """Accepts every transaction and remembers them."""

    def __init__(self) -> None:
        self.transactions: list[list[Put | EtcdDelete]] = []

    async def commit_grouped(self, writes: Sequence[Put | EtcdDelete]) -> int:
        self.transactions.append(list(writes))
        return 100 + len(self.transactions)


async def commit(plan: Plan) -> list[list[Put | EtcdDelete]]:
    etcd = RecordingEtcd()
    store = Store(etcd)  # type: ignore[arg-type]  # only commit_grouped is used
    await store.commit(plan.writes)
    return etcd.transactions


async def test_releasing_the_last_finalizer_of_a_deleting_work_deletes_it() -> None:
    pending = PendingReports()
    plan = plan_work_status(ObservedWork(WORK_KEY, work(deleting=True), None, ""), pending)
    assert plan is not None
    assert await commit(plan) == [[EtcdDelete(WORK_KEY, 41)]]


# -- binding status ------------------------------------------------------------------

BINDING_KEY = "propagationbindings/default/web-deployment"
DEPLOYMENT_KEY = "templates/apps/Deployment/default/web"
WIDGET_KEY = "templates/example.io/Widget/default/web"


def counters(replicas: int, *, generation: int = 1) -> dict[str, Any]:
    """A Deployment's status as the agent reflects it (see _reflect_counters)."""
    return {
        "replicas": replicas,
        "readyReplicas": replicas,
        "updatedReplicas": replicas,
        "availableReplicas": replicas,
        "observedGeneration": generation,
        "generation": generation,
    }


def binding(
    *clusters: str,
    kind: str = "Deployment",
    api_version: str = "apps/v1",
    required_by: Sequence[str] = (),
    aggregated: tuple[str, str, str, int] | None = None,
    deleting: bool = False,
) -> work_pb2.PropagationBinding:
    result = work_pb2.PropagationBinding()
    result.metadata.namespace = "default"
    result.metadata.name = "web-deployment"
    result.metadata.generation = 2
    result.metadata.resource_version = "10"
    if deleting:
        result.metadata.deletion_timestamp.FromSeconds(1_700_000_000)
        result.metadata.finalizers.append("archipel.io/controller")
    resource = result.spec.resource
    resource.api_version, resource.kind = api_version, kind
    resource.namespace, resource.name = "default", "web"
    for name in clusters:
        result.spec.clusters.add(name=name, replicas=2)
    if required_by:
        result.spec.required_by.add(namespace="default", name="app").clusters.extend(
            work_pb2.TargetCluster(name=name) for name in required_by
        )
    if aggregated is not None:
        set_condition(result.status.conditions, "StatusAggregated", *aggregated)
    return result


def member_work(
    cluster: str,
    *,
    applied: str = "True",
    message: str = "",
    observed_generation: int = 1,
    generation: int = 1,
    status: dict[str, Any] | None = None,
    health: str = "Healthy",
    health_message: str = "",
) -> work_pb2.PropagationWork:
    result = work_pb2.PropagationWork()
    result.metadata.namespace = kinds.execution_namespace(cluster)
    result.metadata.name = "default.web-deployment"
    result.metadata.generation = generation
    result.metadata.resource_version = "20"
    reason = "AppliedSuccessful" if applied == "True" else "AppliedFailed"
    set_condition(
        result.status.conditions, "Applied", applied, reason, message, observed_generation
    )
    manifest = result.status.manifest_statuses.add(health=health, health_message=health_message)
    if status is not None:
        manifest.status.CopyFrom(structs.to_struct(status))
    return result


def works(*items: work_pb2.PropagationWork) -> dict[str, work_pb2.PropagationWork]:
    return {kinds.cluster_of_execution_namespace(w.metadata.namespace) or "": w for w in items}


def template(
    *, kind: str = "Deployment", api_version: str = "apps/v1", status: Any = None
) -> Manifest:
    result: Manifest = {
        "apiVersion": api_version,
        "kind": kind,
        "metadata": {
            "name": "web",
            "namespace": "default",
            "generation": 1,
            "resourceVersion": "7",
        },
        "spec": {"replicas": 4},
    }
    if status is not None:
        result["status"] = status
    return result


def widget_interpreters() -> interpreter.Registry:
    """Widgets sum readyReplicas: a member reporting text makes aggregation fail."""
    document = {
        "metadata": {"name": "widgets"},
        "spec": {
            "target": {"apiVersion": "example.io/v1", "kind": "Widget"},
            "customizations": {
                "statusAggregation": {"fields": [{"name": "readyReplicas", "operation": "Sum"}]}
            },
        },
    }
    parsed = json_format.ParseDict(document, interpreter_pb2.ResourceInterpreterCustomization())
    return interpreter.Registry([parsed])


def widget(
    *clusters: str, aggregated: tuple[str, str, str, int] | None = None
) -> work_pb2.PropagationBinding:
    return binding(*clusters, kind="Widget", api_version="example.io/v1", aggregated=aggregated)


def item(
    cluster: str,
    *,
    applied: bool = True,
    message: str = "",
    health: str = "Healthy",
    health_message: str = "",
    status: dict[str, Any] | None = None,
) -> tuple[Any, ...]:
    return (cluster, applied, message, health, health_message, status)


def binding_fields(obj: work_pb2.PropagationBinding) -> dict[str, Any]:
    return {
        "FullyApplied": condition_of(obj.status.conditions, "FullyApplied"),
        "StatusAggregated": condition_of(obj.status.conditions, "StatusAggregated"),
        "items": [
            item(
                i.cluster_name,
                applied=i.applied,
                message=i.applied_message,
                health=i.health,
                health_message=i.health_message,
                status=structs.from_struct(i.status) if i.HasField("status") else None,
            )
            for i in obj.status.aggregated_status
        ],
    }


def summary(write: Write) -> tuple[str, str, str, Any]:
    """A write as (type, kind, key, the fields this controller decides)."""
    assert isinstance(write, Update)
    fields = write.obj["status"] if write.kind is kinds.RESOURCE_TEMPLATE else None
    if write.kind is kinds.PROPAGATION_BINDING:
        fields = binding_fields(write.obj)
    return (type(write).__name__, write.kind.name, key_of(write), fields)


ALL_APPLIED = ("True", "FullyAppliedSuccess", "applied on every target cluster", 2)
AGGREGATED = ("True", "Aggregated", "the template's status is aggregated from its clusters", 2)


def waiting_on(clusters: str) -> tuple[str, str, str, int]:
    return ("False", "FullyAppliedFailed", f"not applied yet on: {clusters}", 2)


def bound(
    fully_applied: tuple[str, str, str, int],
    items: list[tuple[Any, ...]],
    status_aggregated: tuple[str, str, str, int] | None = None,
) -> tuple[str, str, str, Any]:
    fields = {"FullyApplied": fully_applied, "StatusAggregated": status_aggregated, "items": items}
    return ("Update", "PropagationBinding", BINDING_KEY, fields)


def templated(status: dict[str, Any], key: str = DEPLOYMENT_KEY) -> tuple[str, str, str, Any]:
    return ("Update", "ResourceTemplate", key, status)


SUMMED = {
    "replicas": 3,
    "readyReplicas": 3,
    "updatedReplicas": 3,
    "availableReplicas": 3,
    "observedGeneration": 1,
}
BINDING_CASES = [
    pytest.param(
        ObservedBinding(
            binding("c1", "c2"),
            works(
                member_work("c1", status=counters(2)),
                member_work("c2", status=counters(1)),
            ),
            template(),
        ),
        [
            bound(
                ALL_APPLIED,
                [item("c1", status=counters(2)), item("c2", status=counters(1))],
            ),
            templated(SUMMED),
        ],
        id="every target applied; a Deployment's replicas summed",
    ),
    pytest.param(
        ObservedBinding(
            binding("c1", "c2"),
            works(member_work("c1", status=counters(2))),
            template(),
        ),
        [
            bound(
                waiting_on("c2"),
                [item("c1", status=counters(2)), item("c2", applied=False, health="Unknown")],
            ),
            # c2 reports nothing: counters summed, but no observedGeneration.
            templated(
                {"replicas": 2, "readyReplicas": 2, "updatedReplicas": 2, "availableReplicas": 2}
            ),
        ],
        id="a target without its work",
    ),
    pytest.param(
        ObservedBinding(
            binding("c1", "c2"),
            works(
                member_work("c1", status=counters(2)),
                member_work(
                    "c2",
                    generation=2,
                    observed_generation=1,
                    status=counters(1),
                    health="Unhealthy",
                    health_message="1 of 2 ready",
                ),
            ),
            template(status=SUMMED),
        ),
        [
            bound(
                waiting_on("c2"),
                [
                    item("c1", status=counters(2)),
                    item(
                        "c2",
                        applied=False,
                        health="Unhealthy",
                        health_message="1 of 2 ready",
                        status=counters(1),
                    ),
                ],
            ),
        ],
        id="Applied for an older generation of the work; template status unchanged",
    ),
    pytest.param(
        ObservedBinding(
            binding("c1", "c2", required_by=["c3"]),
            works(
                member_work("c1", status=counters(2)),
                member_work("c2", applied="False", message="quota exceeded", health="Unknown"),
                member_work("c3", status=counters(1)),
            ),
            None,
        ),
        [
            bound(
                waiting_on("c2"),
                [
                    item("c1", status=counters(2)),
                    item("c2", applied=False, message="quota exceeded", health="Unknown"),
                    item("c3", status=counters(1)),
                ],
            ),
        ],
        id="a failed apply; a requiring workload's cluster; no template",
    ),
    pytest.param(
        ObservedBinding(binding(), {}, template()),
        [bound(waiting_on("no target cluster"), [])],
        id="no target cluster; nothing to aggregate",
    ),
    pytest.param(
        ObservedBinding(
            widget("c1"),
            works(member_work("c1", status={"readyReplicas": "many"})),
            template(kind="Widget", api_version="example.io/v1", status={"readyReplicas": 1}),
            widget_interpreters(),
        ),
        [
            bound(
                ALL_APPLIED,
                [item("c1", status={"readyReplicas": "many"})],
                (
                    "False",
                    "InterpreterError",
                    "ResourceInterpreterCustomization widgets, statusAggregation: "
                    "Sum of readyReplicas: 'many' is not a number",
                    2,
                ),
            ),
        ],
        id="interpreter error: StatusAggregated False, template left alone",
    ),
    pytest.param(
        ObservedBinding(
            widget("c1", aggregated=("False", "InterpreterError", "earlier failure", 2)),
            works(member_work("c1", status={"readyReplicas": 3})),
            template(kind="Widget", api_version="example.io/v1", status={"readyReplicas": 1}),
            widget_interpreters(),
        ),
        [
            bound(ALL_APPLIED, [item("c1", status={"readyReplicas": 3})], AGGREGATED),
            templated({"readyReplicas": 3}, WIDGET_KEY),
        ],
        id="a later success flips StatusAggregated True",
    ),
    pytest.param(
        ObservedBinding(
            binding("c1", deleting=True),
            works(member_work("c1", status=counters(2))),
            template(),
        ),
        None,
        id="a deleting binding is left alone",
    ),
]


@pytest.mark.parametrize(("observed", "expected"), BINDING_CASES)
def test_binding_status_plan(
    observed: ObservedBinding, expected: list[tuple[str, str, str, Any]] | None
) -> None:
    before = copy.deepcopy(observed.template)
    plan = plan_binding_status(observed)
    if expected is None:
        assert plan is None
        return
    assert plan is not None
    assert [summary(w) for w in plan.writes] == expected
    for write in plan.writes:
        assert isinstance(write, Update)
        observed_obj: Any = observed.binding
        if write.kind is kinds.RESOURCE_TEMPLATE:
            observed_obj = observed.template
        assert write.current is observed_obj  # guarded by what was observed
    assert observed.template == before  # planning never edits the cache's objects
    assert not plan.committed and not plan.requeue_after


@pytest.mark.parametrize(("observed", "expected"), BINDING_CASES)
def test_nothing_changed_writes_nothing(
    observed: ObservedBinding, expected: list[tuple[str, str, str, Any]] | None
) -> None:
    """Planning again from what the plan wrote (as the cache then holds it) writes nothing."""
    plan = plan_binding_status(observed)
    if plan is None:
        return
    assert plan_binding_status(after(observed, plan)) is None


def after(observed: ObservedBinding, plan: Plan) -> ObservedBinding:
    """The snapshot once ``plan`` landed."""
    written = {key_of(w): w.obj for w in plan.writes if isinstance(w, Update)}
    template = observed.template
    if template is not None:
        template = written.get(kinds.RESOURCE_TEMPLATE.key_of(template), template)
    return dataclasses.replace(
        observed, binding=written.get(BINDING_KEY, observed.binding), template=template
    )


def test_a_new_template_generation_rewrites_only_the_template() -> None:
    observed = after_settled(
        ObservedBinding(binding("c1"), works(member_work("c1", status=counters(2))), template())
    )
    assert observed.template is not None
    edited = copy.deepcopy(observed.template)
    edited["metadata"]["generation"] = 2
    plan = plan_binding_status(dataclasses.replace(observed, template=edited))
    assert plan is not None
    assert [summary(w) for w in plan.writes] == [
        templated(
            {
                "replicas": 2,
                "readyReplicas": 2,
                "updatedReplicas": 2,
                "availableReplicas": 2,
                "observedGeneration": 2,
            }
        )
    ]


def after_settled(observed: ObservedBinding) -> ObservedBinding:
    plan = plan_binding_status(observed)
    assert plan is not None
    return after(observed, plan)


def test_success_without_an_earlier_failure_never_writes_status_aggregated() -> None:
    applied = binding("c1")
    observed = ObservedBinding(applied, works(member_work("c1", status=counters(2))), template())
    plan = plan_binding_status(observed)
    assert plan is not None
    updated = plan.writes[0].obj
    assert find(updated.status.conditions, "StatusAggregated") is None


async def test_binding_and_template_are_committed_in_one_transaction() -> None:
    observed = ObservedBinding(
        binding("c1"), works(member_work("c1", status=counters(2))), template()
    )
    plan = plan_binding_status(observed)
    assert plan is not None
    transactions = await commit(plan)
    assert len(transactions) == 1
    ops = transactions[0]
    assert [(type(op).__name__, op.key, op.expect_mod_revision) for op in ops] == [
        ("Put", BINDING_KEY, 10),
        ("Put", DEPLOYMENT_KEY, 7),
    ]
    stored = json.loads(ops[1].value)
    assert stored["status"]["replicas"] == 2
