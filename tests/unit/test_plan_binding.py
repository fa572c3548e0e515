"""The binding controller's plan, as tables: observed binding, template, works and
clusters in; the writes of one transaction out. No etcd, no caches."""

from __future__ import annotations

import json
from typing import Any

import pytest
from google.protobuf import json_format

from archipel import structs
from archipel.core import kinds
from archipel.core.conditions import find
from archipel.core.names import CLUSTER_LABEL, TEMPLATE_GENERATION_ANNOTATION
from archipel.v1alpha1 import cluster_pb2, override_pb2, work_pb2
from controlplane import plan as plans
from controlplane.context import FINALIZER, WORK_FINALIZER
from controlplane.controllers.binding import BindingObserved, plan

TEMPLATE: dict[str, Any] = {
    "apiVersion": "apps/v1",
    "kind": "Deployment",
    "metadata": {
        "name": "web",
        "namespace": "shop",
        "generation": 3,
        "resourceVersion": "40",
        "uid": "t-1",
    },
    "spec": {"replicas": 4, "template": {"spec": {"containers": [{"name": "c", "image": "a"}]}}},
}


def binding(
    *targets: tuple[str, int],
    deleting: bool = False,
    finalized: bool = True,
    preserve: bool = False,
    suspended_on: tuple[str, ...] = (),
) -> work_pb2.PropagationBinding:
    made = work_pb2.PropagationBinding(api_version="work.archipel.io/v1alpha1", kind="x")
    made.metadata.name, made.metadata.namespace = "web-deployment", "shop"
    made.metadata.resource_version, made.metadata.generation, made.metadata.uid = "50", 2, "b-1"
    if finalized:
        made.metadata.finalizers.append(FINALIZER)
    if deleting:
        made.metadata.deletion_timestamp.FromSeconds(1)
    resource = made.spec.resource
    resource.api_version, resource.kind = "apps/v1", "Deployment"
    resource.namespace, resource.name, resource.resource_version = "shop", "web", "40"
    made.spec.conflict_resolution = "Abort"
    made.spec.preserve_resources_on_deletion = preserve
    made.spec.suspension.dispatching_on_clusters.cluster_names.extend(suspended_on)
    for name, replicas in targets:
        made.spec.clusters.add(name=name, replicas=replicas)
    return made


def cluster(name: str, *, deleting: bool = False, **labels: str) -> cluster_pb2.MemberCluster:
    made = cluster_pb2.MemberCluster()
    made.metadata.name = name
    made.metadata.labels.update(labels)
    if deleting:
        made.metadata.deletion_timestamp.FromSeconds(1)
    return made


def planned_work(observed: BindingObserved, cluster_name: str) -> work_pb2.PropagationWork:
    """The work ``plan`` writes for ``cluster_name`` (as if stored, resourceVersion 60)."""
    result = plan(observed)
    assert result is not None
    (write,) = [
        w
        for w in result.writes
        if plans.key_of(w).startswith(f"propagationworks/archipel-es-{cluster_name}/")
    ]
    assert isinstance(write, plans.Create | plans.Update)
    work = kinds.PROPAGATION_WORK.copy(write.obj)
    work.metadata.resource_version = "60"
    return work


def observed(
    bound: work_pb2.PropagationBinding,
    *,
    works: dict[str, work_pb2.PropagationWork] | None = None,
    clusters: tuple[str, ...] = ("m1", "m2"),
    template: dict[str, Any] | None = TEMPLATE,
    quarantined: dict[str, tuple[str, int, str]] | None = None,
    policies: tuple[Any, ...] = (),
) -> BindingObserved:
    return BindingObserved(
        binding=bound,
        template=template,
        works=works or {},
        quarantined=quarantined or {},
        clusters={name: cluster(name) for name in clusters},
        overrides=policies,
    )


def shape(result: plans.Plan | None) -> list[tuple[str, str]]:
    """Each write as (what, key), in order."""
    if result is None:
        return []
    return [(type(w).__name__, plans.key_of(w)) for w in result.writes]


WORK_M1 = "propagationworks/archipel-es-m1/shop.web-deployment"
WORK_M2 = "propagationworks/archipel-es-m2/shop.web-deployment"
BINDING = "propagationbindings/shop/web-deployment"


def test_a_binding_without_its_finalizer_only_gets_it() -> None:
    result = plan(observed(binding(("m1", 1), finalized=False)))
    assert shape(result) == [("Update", BINDING)]
    assert result is not None
    write = result.writes[0]
    assert isinstance(write, plans.Update) and FINALIZER in write.obj.metadata.finalizers


def test_new_targets_get_one_work_each_with_their_replicas() -> None:
    result = plan(observed(binding(("m1", 3), ("m2", 1))))
    assert shape(result) == [("Create", WORK_M1), ("Create", WORK_M2)]
    assert result is not None
    for write, replicas in zip(result.writes, (3, 1), strict=True):
        assert isinstance(write, plans.Create)
        work = write.obj
        (manifest,) = [structs.from_struct(m) for m in work.spec.workload.manifests]
        assert manifest["spec"]["replicas"] == replicas
        assert "resourceVersion" not in manifest["metadata"]  # the control plane's own
        assert work.metadata.annotations[TEMPLATE_GENERATION_ANNOTATION] == "3"
        assert WORK_FINALIZER in work.metadata.finalizers
        assert work.spec.conflict_resolution == "Abort"


def test_works_in_step_with_the_template_need_no_write() -> None:
    bound = binding(("m1", 3), ("m2", 1))
    first = observed(bound)
    works = {"m1": planned_work(first, "m1"), "m2": planned_work(first, "m2")}
    assert plan(observed(bound, works=works)) is not None
    assert shape(plan(observed(bound, works=works))) == []


@pytest.mark.parametrize(
    ("change", "why"),
    [
        (
            lambda t: (
                t["spec"].update(replicas=4)
                or t["spec"]["template"]["spec"]["containers"][0].update(image="b")
            ),
            "template spec",
        ),
        (lambda t: t["metadata"].update(generation=4), "template generation"),
    ],
)
def test_a_changed_template_updates_every_work(change: Any, why: str) -> None:
    bound = binding(("m1", 3), ("m2", 1))
    works = {c: planned_work(observed(bound), c) for c in ("m1", "m2")}
    template = json.loads(json.dumps(TEMPLATE))
    change(template)
    result = plan(observed(bound, works=works, template=template))
    assert shape(result) == [("Update", WORK_M1), ("Update", WORK_M2)], why


def test_an_untargeted_cluster_loses_its_work_and_a_leaving_one_its_finalizer() -> None:
    bound = binding(("m1", 3))
    works = {
        c: planned_work(
            observed(binding(("m1", 3), ("m2", 1), ("m3", 1)), clusters=("m1", "m2", "m3")), c
        )
        for c in ("m1", "m2", "m3")
    }
    works["m1"] = planned_work(observed(bound), "m1")
    result = plan(observed(bound, works=works, clusters=("m1", "m2")))  # m3 has left
    assert result is not None
    deletes = {plans.key_of(w): w for w in result.writes}
    assert set(deletes) == {WORK_M2, "propagationworks/archipel-es-m3/shop.web-deployment"}
    m2 = deletes[WORK_M2]
    m3 = deletes["propagationworks/archipel-es-m3/shop.web-deployment"]
    assert isinstance(m2, plans.Delete) and isinstance(m3, plans.Delete)
    # m2's agent confirms the cleanup; nobody is left to confirm m3's.
    assert m2.marked is not None and WORK_FINALIZER in m2.marked.metadata.finalizers
    assert m3.marked is not None and not m3.marked.metadata.finalizers


def test_no_work_is_made_for_a_cluster_that_is_leaving() -> None:
    bound = binding(("m1", 3), ("m2", 1))
    view = observed(bound)
    leaving = BindingObserved(
        binding=bound,
        template=TEMPLATE,
        works={},
        quarantined={},
        clusters={"m1": cluster("m1"), "m2": cluster("m2", deleting=True)},
    )
    assert shape(plan(leaving)) == [("Create", WORK_M1)]
    assert shape(plan(view)) == [("Create", WORK_M1), ("Create", WORK_M2)]


def test_a_work_being_deleted_is_left_to_finish() -> None:
    bound = binding(("m1", 3))
    work = planned_work(observed(bound), "m1")
    work.metadata.deletion_timestamp.FromSeconds(5)
    work.spec.workload.Clear()  # even though it differs: recreated once it is gone
    assert shape(plan(observed(bound, works={"m1": work}))) == []


def test_suspension_on_a_cluster_reaches_only_its_work() -> None:
    result = plan(observed(binding(("m1", 1), ("m2", 1), suspended_on=("m2",))))
    assert result is not None
    suspended = {
        plans.key_of(w): w.obj.spec.suspend_dispatching
        for w in result.writes
        if isinstance(w, plans.Create)
    }
    assert suspended == {WORK_M1: False, WORK_M2: True}


def test_a_quarantined_work_is_rewritten_over_its_revision_and_the_binding_says_so() -> None:
    bound = binding(("m1", 3))
    result = plan(observed(bound, quarantined={WORK_M1: ("m1", 77, "DecodeError: bad")}))
    assert result is not None
    create, update = result.writes
    assert isinstance(create, plans.Create) and create.replacing == 77
    assert isinstance(update, plans.Update) and plans.key_of(update) == BINDING
    condition = find(update.obj.status.conditions, "WorksReadable")
    assert condition is not None and condition.status == "False"
    assert "DecodeError" in condition.message


def test_a_quarantined_work_no_longer_targeted_is_purged_at_its_revision() -> None:
    bound = binding(("m1", 3))
    works = {"m1": planned_work(observed(bound), "m1")}
    result = plan(observed(bound, works=works, quarantined={WORK_M2: ("m2", 91, "x")}))
    assert result is not None
    purges = [w for w in result.writes if isinstance(w, plans.Purge)]
    assert purges == [plans.Purge(WORK_M2, 91)]


def test_an_override_that_fails_keeps_the_last_work_and_says_why() -> None:
    policy = json_format.ParseDict(
        {
            "metadata": {"name": "bad", "namespace": "shop"},
            "spec": {
                "resourceSelectors": [{"apiVersion": "apps/v1", "kind": "Deployment"}],
                "overrideRules": [
                    {
                        "targetCluster": {"clusterNames": ["m1"]},
                        "overriders": {
                            "plaintext": [
                                {"path": "/spec/nothere/x", "operator": "replace", "value": 1}
                            ]
                        },
                    }
                ],
            },
        },
        override_pb2.OverridePolicy(),
    )
    bound = binding(("m1", 3))
    last_good = planned_work(observed(bound), "m1")
    result = plan(observed(bound, works={"m1": last_good}, policies=(policy,)))
    assert shape(result) == [("Update", BINDING)]
    assert result is not None
    update = result.writes[0]
    assert isinstance(update, plans.Update)
    condition = find(update.obj.status.conditions, "OverridesApplied")
    assert condition is not None and condition.status == "False" and "m1" in condition.message


def test_an_override_for_one_cluster_changes_only_its_work_and_is_recorded() -> None:
    policy = json_format.ParseDict(
        {
            "metadata": {"name": "img", "namespace": "shop"},
            "spec": {
                "resourceSelectors": [{"apiVersion": "apps/v1", "kind": "Deployment"}],
                "overrideRules": [
                    {
                        "targetCluster": {"clusterNames": ["m2"]},
                        "overriders": {
                            "imageOverrider": [
                                {"component": "Tag", "operator": "replace", "value": "v2"}
                            ]
                        },
                    }
                ],
            },
        },
        override_pb2.OverridePolicy(),
    )
    result = plan(observed(binding(("m1", 1), ("m2", 1)), policies=(policy,)))
    assert result is not None
    works = {plans.key_of(w): w.obj for w in result.writes if isinstance(w, plans.Create)}
    images = {
        key: structs.from_struct(work.spec.workload.manifests[0])["spec"]["template"]["spec"][
            "containers"
        ][0]["image"]
        for key, work in works.items()
    }
    assert images == {WORK_M1: "a", WORK_M2: "a:v2"}
    assert "policy.karmada.io/applied-overrides" in works[WORK_M2].metadata.annotations
    assert "policy.karmada.io/applied-overrides" not in works[WORK_M1].metadata.annotations


@pytest.mark.parametrize("preserve", [False, True])
def test_a_deleting_binding_deletes_its_works_in_one_plan(preserve: bool) -> None:
    live = binding(("m1", 1), ("m2", 1))
    works = {c: planned_work(observed(live), c) for c in ("m1", "m2")}
    result = plan(
        observed(binding(("m1", 1), ("m2", 1), deleting=True, preserve=preserve), works=works)
    )
    assert shape(result) == [("Delete", WORK_M1), ("Delete", WORK_M2)]
    assert result is not None
    for write in result.writes:
        assert isinstance(write, plans.Delete) and write.marked is not None
        assert write.marked.spec.preserve_resources_on_deletion is preserve


def test_a_deleting_binding_lets_go_once_its_works_are_gone() -> None:
    result = plan(observed(binding(("m1", 1), deleting=True)))
    assert shape(result) == [("Update", BINDING)]
    assert result is not None
    write = result.writes[0]
    assert isinstance(write, plans.Update) and FINALIZER not in write.obj.metadata.finalizers


def test_a_deleting_binding_purges_its_unreadable_works_before_letting_go() -> None:
    result = plan(
        observed(binding(("m1", 1), deleting=True), quarantined={WORK_M1: ("m1", 5, "x")})
    )
    assert shape(result) == [("Purge", WORK_M1)]


def test_no_template_no_writes() -> None:
    assert plan(observed(binding(("m1", 1)), template=None)) is None


def test_cluster_label_names_the_work_s_cluster() -> None:
    work = planned_work(observed(binding(("m2", 1))), "m2")
    assert work.metadata.labels[CLUSTER_LABEL] == "m2"
    assert work.metadata.namespace == "archipel-es-m2"


def test_an_evicted_cluster_keeps_its_work_while_its_eviction_task_lasts() -> None:
    before = binding(("m1", 2), ("m2", 2))
    works = {c: planned_work(observed(before), c) for c in ("m1", "m2")}
    failed_over = binding(("m1", 4))
    failed_over.spec.graceful_eviction_tasks.add(
        from_cluster="m2", purge_mode="Gracefully", replicas=2, reason="TaintUntolerated"
    )
    result = plan(observed(failed_over, works=works))
    # m1 takes all four; m2's copy is neither deleted nor changed while the task lasts.
    assert shape(result) == [("Update", WORK_M1)]
    del failed_over.spec.graceful_eviction_tasks[:]
    assert shape(plan(observed(failed_over, works=works))) == [
        ("Update", WORK_M1),
        ("Delete", WORK_M2),
    ]


def test_a_cluster_the_workload_moved_to_gets_the_preserved_state_as_labels() -> None:
    moved = binding(("m2", 4))
    task = moved.spec.graceful_eviction_tasks.add(
        from_cluster="m1", purge_mode="Gracefully", replicas=2, reason="ApplicationFailure"
    )
    task.clusters_before_failover.append("m1")
    task.preserved_label_state["failover.example.com/job-id"] = "42"
    work = planned_work(observed(moved), "m2")
    (manifest,) = [structs.from_struct(m) for m in work.spec.workload.manifests]
    assert manifest["metadata"]["labels"]["failover.example.com/job-id"] == "42"
    # The old copy, kept for now, is left as it was.
    old = planned_work(observed(moved), "m1")
    (kept,) = [structs.from_struct(m) for m in old.spec.workload.manifests]
    assert "failover.example.com/job-id" not in kept["metadata"].get("labels", {})
