"""The agent's conflicts, drift and deletions, judged by what reaches the member and
what the agent reports.

A fake member API stands in for kube-apiserver (:mod:`tests.unit.agentfakes`). No watch
thread runs: a test delivers watch events through ``WorkManager.on_event``, the method
the watch threads hand theirs to, and runs the work queue until it is idle before it
asserts, so that "nothing happened" is checked after everything that could happen did,
never after a sleep.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from agent.kube import KubeError, NotLeader
from agent.ledger import ObjectRef, entry_of
from agent.works import WorkManager
from archipel import structs
from archipel.core.names import LEDGER_LABEL, MANAGED_LABEL, WORK_ANNOTATION
from archipel.v1alpha1 import agent_pb2
from tests.unit.agentfakes import (
    FakeKube,
    configmap,
    deletions,
    manager,
    restarted,
    secret,
    settle,
    statuses,
    work,
)

Manifest = dict[str, Any]


def key(manifest: Manifest) -> tuple[str, str, str, str]:
    return FakeKube.key(manifest)


def labelled(manifest: Manifest, **labels: str) -> Manifest:
    metadata = {**manifest["metadata"], "labels": labels}
    return {**manifest, "metadata": metadata}


def cluster_role(name: str, verbs: list[str]) -> Manifest:
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "ClusterRole",
        "metadata": {"name": name},
        "rules": [{"apiGroups": [""], "resources": ["configmaps"], "verbs": verbs}],
    }


def namespace(name: str) -> Manifest:
    return {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}}


def deployment(name: str, replicas: int) -> Manifest:
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "namespace": "app"},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {"containers": [{"name": name, "image": "nginx:1.27"}]},
            },
        },
    }


def held_by(kube: FakeKube, work_name: str) -> list[ObjectRef]:
    """The objects the member's ledger records for ``work_name``."""
    for stored in kube.ledger_maps():
        if stored["data"]["work"] == work_name:
            return entry_of(stored["data"]).objects
    return []


def workload_applies(kube: FakeKube) -> list[str]:
    """The names of the objects applied, less the ledger's own ConfigMaps."""
    return [m["metadata"]["name"] for m in workload_manifests(kube)]


def workload_manifests(kube: FakeKube) -> list[Manifest]:
    """What was applied, less the ledger's own ConfigMaps."""
    return [m for m in kube.applied if LEDGER_LABEL not in (m["metadata"].get("labels") or {})]


def names(report: agent_pb2.WorkStatusReport) -> list[tuple[str, str, str]]:
    return [
        (s.identifier.kind, s.identifier.namespace, s.identifier.name)
        for s in report.manifest_statuses
    ]


def managed_by(manifest: Manifest) -> tuple[str | None, str | None]:
    metadata = manifest["metadata"]
    return (
        (metadata.get("labels") or {}).get(MANAGED_LABEL),
        (metadata.get("annotations") or {}).get(WORK_ANNOTATION),
    )


# -- objects Archipel does not manage ----------------------------------------------------

THEIRS = labelled(configmap("c", {"k": "theirs"}), team="payments")
OURS = configmap("c", {"k": "ours"})


@pytest.mark.parametrize(
    ("resolution", "taken_over"),
    [
        pytest.param("", False, id="unset-is-Abort"),
        pytest.param("Abort", False, id="Abort"),
        pytest.param("Overwrite", True, id="Overwrite"),
    ],
)
async def test_an_object_archipel_does_not_manage(resolution: str, taken_over: bool) -> None:
    kube = FakeKube()
    theirs = kube.put(THEIRS)
    works, sent = manager(kube)
    works.receive(work(OURS, conflict_resolution=resolution))
    failures = await settle(works)
    [report] = statuses(sent, "w1")
    live = kube.get(*key(OURS))
    if taken_over:
        assert failures == {}
        assert [m["metadata"]["name"] for m in kube.applied_in("app")] == ["c"]
        assert live["data"] == {"k": "ours"}
        assert managed_by(live) == ("true", "w1")
        assert (report.applied, report.message) == (True, "")
        assert names(report) == [("ConfigMap", "app", "c")]
        assert held_by(kube, "w1") == [ObjectRef("v1", "ConfigMap", "app", "c")]
        return
    assert isinstance(failures.get("w1"), KubeError)
    assert kube.applied_in("app") == []
    assert live == theirs  # not a field touched, not even the resourceVersion
    assert not report.applied
    assert (report.uid, report.generation) == ("uid-w1", 1)
    assert "ConfigMap app/c already exists" in report.message
    assert "not managed by Archipel" in report.message
    assert "conflictResolution: Overwrite" in report.message
    assert not report.manifest_statuses
    assert held_by(kube, "w1") == []
    # The retry the workers would make fails alike and does not report it again.
    works.queue.add("w1")
    assert isinstance((await settle(works)).get("w1"), KubeError)
    assert len(statuses(sent, "w1")) == 1
    # Their object is none of the agent's business: their edits are not watched over.
    works.on_event("MODIFIED", kube.put({**theirs, "data": {"k": "edited"}}))
    assert works.queue.idle()
    assert kube.applied_in("app") == []


@pytest.mark.parametrize(
    ("existing", "named"),
    [
        pytest.param(configmap("c", {"k": "theirs"}), "ConfigMap app/c", id="namespaced"),
        pytest.param(cluster_role("reader", ["get"]), "ClusterRole reader", id="cluster-scoped"),
        pytest.param(namespace("team-a"), "Namespace team-a", id="namespace"),
    ],
)
async def test_the_refusal_names_the_conflicting_object(existing: Manifest, named: str) -> None:
    kube = FakeKube()
    kube.put(existing)
    works, sent = manager(kube)
    desired = {**existing, "metadata": dict(existing["metadata"])}
    if existing["kind"] == "ConfigMap":
        desired["data"] = {"k": "ours"}
    works.receive(work(desired, conflict_resolution="Abort"))
    assert set(await settle(works)) == {"w1"}
    [report] = statuses(sent, "w1")
    assert not report.applied
    assert f"{named} already exists in the member" in report.message
    assert [m for m in workload_manifests(kube) if m["kind"] == existing["kind"]] == []


async def test_a_refused_work_is_applied_once_its_policy_says_overwrite() -> None:
    kube = FakeKube()
    kube.put(THEIRS)
    works, sent = manager(kube)
    works.receive(work(OURS))
    assert set(await settle(works)) == {"w1"}
    works.receive(work(OURS, generation=2, conflict_resolution="Overwrite"))
    assert await settle(works) == {}
    assert managed_by(kube.get(*key(OURS))) == ("true", "w1")
    last = statuses(sent, "w1")[-1]
    assert (last.applied, last.generation, last.message) == (True, 2, "")


@pytest.mark.parametrize(
    "existing",
    [
        # ensure_namespace labels the namespaces the agent creates for works.
        pytest.param(labelled(namespace("team-a"), **{MANAGED_LABEL: "true"}), id="namespace"),
        # What an agent made before its ledger was dropped (docs/semantics.md, rejoining).
        pytest.param(
            labelled(configmap("c", {"k": "old"}), **{MANAGED_LABEL: "true"}), id="object"
        ),
    ],
)
async def test_an_object_with_archipels_label_is_adopted_under_abort(existing: Manifest) -> None:
    kube = FakeKube()
    kube.put(existing)
    works, sent = manager(kube)
    desired = {
        **existing,
        "metadata": {k: v for k, v in existing["metadata"].items() if k != "labels"},
    }
    if existing["kind"] == "ConfigMap":
        desired["data"] = {"k": "new"}
    works.receive(work(desired, conflict_resolution="Abort"))
    assert await settle(works) == {}
    assert managed_by(kube.get(*key(existing))) == ("true", "w1")
    assert statuses(sent, "w1")[-1].applied


async def test_a_namespace_being_deleted_in_the_member_is_created_anew_once_gone() -> None:
    """Applied to a Terminating namespace, the work would report applied and lose the
    namespace a moment later, unwatched: it fails instead, and its retry creates it."""
    kube = FakeKube()
    going = labelled(namespace("team-a"), **{MANAGED_LABEL: "true"})
    going["metadata"]["deletionTimestamp"] = "2026-01-01T00:00:00Z"
    kube.put(going)
    works, sent = manager(kube)
    works.receive(work(namespace("team-a")))
    failed = await settle(works)
    assert set(failed) == {"w1"} and isinstance(failed["w1"], KubeError)
    [report] = statuses(sent, "w1")
    assert not report.applied and "being deleted in the member" in report.message
    del kube.objects[key(going)]  # the member's namespace controller is done
    works.queue.add("w1")  # its retry
    assert await settle(works) == {}
    live = kube.get(*key(going))
    assert live is not None and "deletionTimestamp" not in live["metadata"]
    assert statuses(sent, "w1")[-1].applied


# -- objects of another work -------------------------------------------------------------


async def test_an_object_another_work_holds_is_refused_under_abort_naming_it() -> None:
    """Two templates that make the same member object must not take it from each other:
    the second work is refused, the report names the work holding it, and the object
    stays as the first work made it."""
    kube = FakeKube()
    works, sent = manager(kube)
    works.receive(work(configmap("c", {"k": "two"}), name="w2"))
    assert await settle(works) == {}
    works.receive(work(configmap("c", {"k": "one"}), name="w1", conflict_resolution="Abort"))
    failed = await settle(works)
    assert set(failed) == {"w1"} and isinstance(failed["w1"], KubeError)
    live = kube.get(*key(OURS))
    assert live["data"] == {"k": "two"}
    assert managed_by(live) == ("true", "w2")
    [report] = statuses(sent, "w1")
    assert not report.applied and "held by work w2" in report.message
    assert held_by(kube, "w1") == []


async def test_once_the_holder_is_deleted_the_refused_work_gets_the_object() -> None:
    kube = FakeKube()
    works, _ = manager(kube)
    works.receive(work(configmap("c", {"k": "two"}), name="w2"))
    assert await settle(works) == {}
    works.receive(work(configmap("c", {"k": "one"}), name="w1"))
    assert set(await settle(works)) == {"w1"}
    works.receive_delete(agent_pb2.WorkDelete(name="w2", uid="uid-w2"))
    assert await settle(works) == {}
    assert kube.get(*key(OURS)) is None  # w2's object went with w2
    works.queue.add("w1")  # its retry
    assert await settle(works) == {}
    live = kube.get(*key(OURS))
    assert live is not None and live["data"] == {"k": "one"}
    assert managed_by(live) == ("true", "w1")


async def test_a_work_that_took_an_object_over_keeps_it_when_the_other_is_deleted() -> None:
    kube = FakeKube()
    works, sent = manager(kube)
    works.receive(work(configmap("c", {"k": "two"}), name="w2"))
    assert await settle(works) == {}
    works.receive(work(configmap("c", {"k": "one"}), name="w1", conflict_resolution="Overwrite"))
    assert await settle(works) == {}
    works.receive_delete(agent_pb2.WorkDelete(name="w2", uid="uid-w2"))
    assert await settle(works) == {}
    live = kube.get(*key(OURS))
    assert live is not None and live["data"] == {"k": "one"}
    assert managed_by(live) == ("true", "w1")
    # And it is still w1's to correct.
    edited = kube.put({**live, "data": {"k": "edited"}})
    works.on_event("MODIFIED", edited)
    assert await settle(works) == {}
    assert kube.get(*key(OURS))["data"] == {"k": "one"}
    assert statuses(sent, "w1")[-1].applied


# -- drift -------------------------------------------------------------------------------

APPLIED = labelled(configmap("c", {"k": "v"}), app="web")
Mutation = Callable[[Manifest], object]


@pytest.mark.parametrize(
    ("mutate", "corrected"),
    [
        pytest.param(lambda m: m["data"].update(k="edited"), True, id="a value the work sets"),
        pytest.param(lambda m: m.pop("data"), True, id="the data removed"),
        pytest.param(lambda m: m["metadata"]["labels"].update(app="api"), True, id="its label"),
        pytest.param(
            lambda m: m["metadata"]["labels"].pop(MANAGED_LABEL), True, id="archipels label"
        ),
        pytest.param(
            lambda m: m["metadata"]["annotations"].update({WORK_ANNOTATION: "w9"}),
            True,
            id="the work annotation",
        ),
        pytest.param(lambda m: m["data"].update(extra="x"), False, id="a key it does not set"),
        pytest.param(lambda m: m["metadata"]["labels"].update(team="x"), False, id="a new label"),
        pytest.param(
            lambda m: m["metadata"]["annotations"].update(note="x"), False, id="a new annotation"
        ),
        pytest.param(lambda m: None, False, id="a new resourceVersion only"),
    ],
)
async def test_drift_is_corrected_only_in_the_fields_the_work_sets(
    mutate: Mutation, corrected: bool
) -> None:
    kube = FakeKube()
    works, sent = manager(kube)
    works.receive(work(APPLIED))
    assert await settle(works) == {}
    reports = len(statuses(sent, "w1"))
    kube.applied.clear()
    live = kube.get(*key(APPLIED))
    mutate(live)
    changed = kube.put(live)
    works.on_event("MODIFIED", changed)
    assert await settle(works) == {}
    now = kube.get(*key(APPLIED))
    if corrected:
        assert [m["metadata"]["name"] for m in kube.applied_in("app")] == ["c"]
        assert now["data"] == {"k": "v"}
        assert now["metadata"]["labels"]["app"] == "web"
        assert managed_by(now) == ("true", "w1")
        last = statuses(sent, "w1")[-1]
        assert (last.applied, last.drift_corrections) == (True, 1)
    else:
        assert kube.applied == []
        assert now == changed  # left as the other party left it
        assert len(statuses(sent, "w1")) == reports  # nothing to report either
        assert statuses(sent, "w1")[-1].drift_corrections == 0


async def test_a_status_change_is_reported_not_reapplied() -> None:
    kube = FakeKube()
    works, sent = manager(kube)
    works.receive(work(deployment("web", 2)))
    assert await settle(works) == {}
    [first] = statuses(sent, "w1")
    assert first.manifest_statuses[0].health == "Unhealthy"  # no replica is available yet
    kube.applied.clear()
    live = kube.get(*key(deployment("web", 2)))
    live["status"] = {"replicas": 2, "updatedReplicas": 2, "readyReplicas": 2}
    live["status"]["availableReplicas"] = 2
    works.on_event("MODIFIED", kube.put(live))
    assert await settle(works) == {}
    assert kube.applied == []
    [_, second] = statuses(sent, "w1")
    [status] = second.manifest_statuses
    assert status.health == "Healthy"
    assert structs.from_struct(status.status)["availableReplicas"] == 2
    assert second.drift_corrections == 0


async def test_a_late_event_from_before_the_last_apply_is_not_drift() -> None:
    """The watch may deliver an edit after the agent has already undone it: that event
    is older than the apply's answer, and judging it would apply again for nothing."""
    kube = FakeKube()
    works, sent = manager(kube)
    works.receive(work(APPLIED))
    assert await settle(works) == {}
    edited = kube.put({**kube.get(*key(APPLIED)), "data": {"k": "edited"}})
    works.on_event("MODIFIED", edited)
    assert await settle(works) == {}
    kube.applied.clear()
    works.on_event("MODIFIED", edited)  # the same edit, delivered again late
    assert await settle(works) == {}
    assert kube.applied == []
    assert kube.get(*key(APPLIED))["data"] == {"k": "v"}
    assert statuses(sent, "w1")[-1].drift_corrections == 1


@pytest.mark.parametrize(
    "manifest",
    [
        pytest.param(APPLIED, id="namespaced"),
        pytest.param(cluster_role("reader", ["get", "list"]), id="cluster-scoped"),
    ],
)
async def test_an_object_deleted_by_someone_else_is_restored(manifest: Manifest) -> None:
    kube = FakeKube()
    works, sent = manager(kube)
    works.receive(work(manifest, secret("db")))
    assert await settle(works) == {}
    kube.applied.clear()
    gone = kube.get(*key(manifest))
    assert kube.delete(*key(manifest))
    works.on_event("DELETED", gone)
    assert await settle(works) == {}
    # The whole work is applied again, its untouched Secret too.
    assert sorted(workload_applies(kube)) == sorted([manifest["metadata"]["name"], "db"])
    back = kube.get(*key(manifest))
    assert back is not None
    assert managed_by(back) == ("true", "w1")
    assert {k: v for k, v in back.items() if k != "metadata"} == {
        k: v for k, v in manifest.items() if k != "metadata"
    }
    last = statuses(sent, "w1")[-1]
    assert (last.applied, last.drift_corrections) == (True, 1)


async def test_only_the_kinds_applied_are_watched_once_each() -> None:
    kube = FakeKube()
    works, _ = manager(kube)
    works.receive(work(namespace("app"), APPLIED, configmap("d", {}), secret("db")))
    assert await settle(works) == {}
    assert kube.watched == [("v1", "ConfigMap"), ("v1", "Secret")]  # never Namespaces


# -- deleting a work ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("in_spec", "in_delete", "kept"),
    [
        pytest.param(False, False, False, id="deleted"),
        pytest.param(True, True, True, id="preserved"),
        # The agent acts on the WorkDelete alone; the control plane copies the flag there.
        pytest.param(True, False, False, id="the-WorkDelete-decides"),
    ],
)
async def test_a_deleted_work(in_spec: bool, in_delete: bool, kept: bool) -> None:
    kube = FakeKube()
    works, sent = manager(kube)
    works.receive(work(APPLIED, secret("db"), preserve_resources_on_deletion=in_spec))
    assert await settle(works) == {}
    before = {k: v for k, v in kube.objects.items() if k[2] == "app"}
    kube.applied.clear()
    works.receive_delete(
        agent_pb2.WorkDelete(name="w1", uid="uid-w1", preserve_resources=in_delete)
    )
    assert await settle(works) == {}
    assert kube.ledger_maps() == []
    assert deletions(sent) == [agent_pb2.WorkDeleted(name="w1", uid="uid-w1")]
    assert kube.applied == []
    after = {k: v for k, v in kube.objects.items() if k[2] == "app"}
    if not kept:
        assert after == {}
        return
    # Left exactly as they were: Archipel's label and the deleted work's annotation stay.
    assert after == before
    assert all(managed_by(o) == ("true", "w1") for o in after.values())
    # And no longer managed: a later edit is not corrected.
    works.on_event("MODIFIED", kube.put({**after[key(APPLIED)], "data": {"k": "theirs"}}))
    assert await settle(works) == {}
    assert kube.applied == []
    assert kube.get(*key(APPLIED))["data"] == {"k": "theirs"}


async def test_a_preserved_object_is_adopted_by_a_later_work_under_abort() -> None:
    """Because a preserved object keeps Archipel's label, a new work (a new policy for
    the template, a cluster joined again) takes it over without a conflict."""
    kube = FakeKube()
    works, sent = manager(kube)
    works.receive(work(APPLIED))
    assert await settle(works) == {}
    works.receive_delete(agent_pb2.WorkDelete(name="w1", uid="uid-w1", preserve_resources=True))
    assert await settle(works) == {}
    works.receive(work(APPLIED, name="w2", conflict_resolution="Abort"))
    assert await settle(works) == {}
    assert managed_by(kube.get(*key(APPLIED))) == ("true", "w2")
    assert statuses(sent, "w2")[-1].applied


async def test_objects_applied_before_a_conflict_go_with_the_work() -> None:
    kube = FakeKube()
    kube.put(THEIRS)
    works, _ = manager(kube)
    works.receive(work(configmap("a", {"x": "1"}), OURS))
    assert set(await settle(works)) == {"w1"}
    first = key(configmap("a", {}))
    assert kube.get(*first) is not None  # applied before the conflict on c was found
    works.receive_delete(agent_pb2.WorkDelete(name="w1", uid="uid-w1"))
    assert await settle(works) == {}
    assert kube.get(*key(THEIRS)) is not None  # theirs, never touched
    assert kube.get(*first) is None, "ConfigMap app/a outlives its work"


async def test_objects_applied_before_a_failure_go_with_the_work_after_a_restart() -> None:
    """The ledger lists what a work applied before it failed part-way, so an agent
    restarted in between still deletes those objects with the work."""
    kube = FakeKube()
    kube.put(THEIRS)
    works, _ = manager(kube)
    works.receive(work(configmap("a", {"x": "1"}), OURS))
    assert set(await settle(works)) == {"w1"}
    first = key(configmap("a", {}))
    assert kube.get(*first) is not None  # applied before the conflict on c was found
    assert held_by(kube, "w1") == [ObjectRef("v1", "ConfigMap", "app", "a")]
    again = restarted(kube)
    # Held without contents: the hello asks for the work again.
    assert again.ledger.entries["w1"].generation == 0
    again.receive_delete(agent_pb2.WorkDelete(name="w1", uid="uid-w1"))
    assert await settle(again) == {}
    assert kube.get(*first) is None, "ConfigMap app/a outlives its work across a restart"
    assert kube.get(*key(THEIRS)) is not None  # theirs, never touched


class DyingKube(FakeKube):
    """A member whose agent is killed (here: deposed, which writes nothing more either)
    right after the API server stored the object named ``dies_after``."""

    dies_after = "b"

    def apply(self, manifest: dict[str, Any]) -> dict[str, Any]:
        stored = super().apply(manifest)
        if manifest["metadata"]["name"] == self.dies_after:
            self.dies_after = ""
            raise NotLeader("killed right after the write")
        return stored


async def test_an_object_created_by_an_agent_killed_before_recording_it_goes_with_the_work() -> (
    None
):
    """The ledger names what an apply may create before it creates it, so the next
    agent deletes an object whose creator died before recording it."""
    kube = DyingKube()
    works, _ = manager(kube)
    works.receive(work(configmap("a", {"x": "1"}), configmap("b", {"x": "2"})))
    with pytest.raises(NotLeader):
        await works.reconcile("w1")
    assert kube.get(*key(configmap("b", {}))) is not None
    again = restarted(kube)
    again.receive_delete(agent_pb2.WorkDelete(name="w1", uid="uid-w1"))
    assert await settle(again) == {}
    assert kube.get(*key(configmap("a", {}))) is None, "ConfigMap app/a outlives its work"
    assert kube.get(*key(configmap("b", {}))) is None, "ConfigMap app/b outlives its work"
    assert kube.ledger_maps() == []


async def test_an_object_left_by_a_killed_apply_goes_when_a_later_generation_drops_it() -> None:
    kube = DyingKube()
    works, _ = manager(kube)
    works.receive(work(configmap("a", {"x": "1"}), configmap("b", {"x": "2"})))
    with pytest.raises(NotLeader):
        await works.reconcile("w1")
    again = restarted(kube)
    again.receive(work(configmap("c", {"x": "3"}), generation=2))
    assert await settle(again) == {}
    assert kube.get(*key(configmap("b", {}))) is None, "ConfigMap app/b outlives its generation"
    assert kube.get(*key(configmap("c", {}))) is not None
    (stored,) = kube.ledger_maps()
    assert "pendingObjects" not in stored["data"]  # settled: nothing is pending any more
    assert held_by(kube, "w1") == [ObjectRef("v1", "ConfigMap", "app", "c")]


async def test_a_pending_object_someone_else_holds_is_never_deleted() -> None:
    """A refused object stays named as pending; deleting the work leaves it alone."""
    kube = FakeKube()
    kube.put(THEIRS)
    works, _ = manager(kube)
    works.receive(work(OURS))
    assert set(await settle(works)) == {"w1"}
    (stored,) = kube.ledger_maps()
    assert entry_of(stored["data"]).pending == [ObjectRef("v1", "ConfigMap", "app", "c")]
    again = restarted(kube)
    again.receive_delete(agent_pb2.WorkDelete(name="w1", uid="uid-w1"))
    assert await settle(again) == {}
    assert kube.get(*key(THEIRS))["data"] == {"k": "theirs"}


class EchoingKube(FakeKube):
    """A member whose watch delivers each apply's own event while the agent is still
    applying the work (the watch thread does not wait for the ledger's record)."""

    works: WorkManager | None = None

    def apply(self, manifest: dict[str, Any]) -> dict[str, Any]:
        stored = super().apply(manifest)
        if self.works is not None and manifest["metadata"].get("namespace") == "app":
            self.works.on_event("MODIFIED", stored)
        return stored


async def test_the_event_of_an_apply_under_way_is_not_drift() -> None:
    kube = EchoingKube()
    works, sent = manager(kube)
    kube.works = works
    works.receive(work(configmap("c", {"k": "1"})))
    assert await settle(works) == {}
    kube.applied.clear()
    works.receive(work(configmap("c", {"k": "2"}), generation=2))
    assert await settle(works) == {}
    assert [m["data"] for m in kube.applied_in("app")] == [{"k": "2"}]
    assert statuses(sent, "w1")[-1].drift_corrections == 0


async def test_a_change_made_during_an_apply_is_drift_once_it_is_over() -> None:
    """A write by someone else after the agent's own, seen while the work is still being
    applied, is judged once the apply is over: the object is put back."""
    kube = EchoingKube()
    works, sent = manager(kube)
    works.receive(work(configmap("c", {"k": "1"}), configmap("d", {"k": "1"})))
    assert await settle(works) == {}

    original_apply = kube.apply
    meddled: list[bool] = []

    def apply_then_meddle(manifest: dict[str, Any]) -> dict[str, Any]:
        stored = original_apply(manifest)
        if manifest["metadata"]["name"] == "c" and not meddled:
            meddled.append(True)  # once: someone edits c right after the agent did
            works.on_event("MODIFIED", kube.put({**stored, "data": {"k": "theirs"}}))
        return stored

    kube.apply = apply_then_meddle  # type: ignore[method-assign]
    works.receive(work(configmap("c", {"k": "2"}), configmap("d", {"k": "2"}), generation=2))
    assert await settle(works) == {}
    assert kube.get(*key(configmap("c", {})))["data"] == {"k": "2"}
    assert statuses(sent, "w1")[-1].drift_corrections == 1
