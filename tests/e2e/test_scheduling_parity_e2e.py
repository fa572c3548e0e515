"""Karmada's scheduling behaviours, end to end on real members: clusterAffinities keep
the group the workload landed in, a Lazy policy waits for its template's next change,
and schedulePriority takes its value from a PriorityClass (and holds scheduling, saying
why, while the class is missing)."""

from __future__ import annotations

import functools
import uuid
from typing import Any

import pytest

from archipel.client import message_to_document
from archipel.core import kinds
from tests.e2e.conftest import Pipeline, deployment, policy, wait_for

pytestmark = pytest.mark.members(count=2, profile="api")
TIMEOUT = 90.0


def binding(pipeline: Pipeline, namespace: str, name: str) -> dict[str, Any] | None:
    api = pipeline.client()
    try:
        found = api.binding_of("apps/v1", "Deployment", namespace, name)
    finally:
        api.close()
    return None if found is None else message_to_document(found)


def placed(pipeline: Pipeline, namespace: str, name: str) -> set[str]:
    """The members that hold the Deployment."""
    return {m.name for m in pipeline.fleet if pipeline.deployment(m.name, namespace, name)}


def has_exactly(pipeline: Pipeline, namespace: str, name: str, members: set[str]) -> bool:
    return placed(pipeline, namespace, name) == members


def condition(document: dict[str, Any] | None, kind: str) -> dict[str, Any]:
    for found in (document or {}).get("status", {}).get("conditions", []):
        if found["type"] == kind:
            return dict(found)
    return {}


def label_cluster(pipeline: Pipeline, cluster: str, key: str, value: str | None) -> None:
    api = pipeline.client()
    try:
        found = api.get_object(kinds.MEMBER_CLUSTER, cluster)
        if value is None:
            found.metadata.labels.pop(key, None)
        else:
            found.metadata.labels[key] = value
        api.apply_object(kinds.MEMBER_CLUSTER, found)
    finally:
        api.close()


def decided_for_its_spec(document: dict[str, Any] | None) -> bool:
    """The scheduler has decided for the binding's current spec."""
    if document is None:
        return False
    generation = int(document["metadata"].get("generation", 0))
    observed = int(document.get("status", {}).get("schedulerObservedGeneration", 0))
    return observed == generation


def test_a_workload_stays_in_the_affinity_group_it_fell_back_to(pipeline: Pipeline) -> None:
    namespace = f"e2e-{uuid.uuid4().hex[:6]}"
    key = f"e2e-affinity-{namespace}"
    groups = policy(namespace)
    groups["spec"]["placement"] = {
        "clusterAffinities": [
            # Nothing carries the label yet: the workload falls back to "backup".
            {"affinityName": "primary", "labelSelector": {"matchLabels": {key: "yes"}}},
            {"affinityName": "backup", "clusterNames": ["member2"]},
        ]
    }
    groups["spec"]["resourceSelectors"][0]["name"] = "web"
    probe = policy(namespace, "probe", label_selector={key: "yes"})
    probe["spec"]["resourceSelectors"][0]["name"] = "probe"
    pipeline.apply(deployment(namespace), groups, deployment(namespace, "probe"), probe)
    wait_for(
        "web in the backup group",
        functools.partial(has_exactly, pipeline, namespace, "web", {"member2"}),
        timeout=TIMEOUT,
    )
    recorded = binding(pipeline, namespace, "web")
    assert recorded is not None
    assert recorded["status"]["schedulerObservingAffinityName"] == "backup"

    try:
        label_cluster(pipeline, "member1", key, "yes")
        # Barrier: the scheduler sees the label (the probe, placed by it, lands)...
        wait_for(
            "the probe on member1",
            functools.partial(has_exactly, pipeline, namespace, "probe", {"member1"}),
            timeout=TIMEOUT,
        )
        # ...and decides for web again after that: a template change reaches it.
        pipeline.apply(deployment(namespace, replicas=2))
        wait_for(
            "a decision for web's new spec",
            lambda: (
                (found := binding(pipeline, namespace, "web")) is not None
                and found["spec"].get("replicas") == 2
                and decided_for_its_spec(found)
            ),
            timeout=TIMEOUT,
        )
        after = binding(pipeline, namespace, "web")
        assert after is not None
        assert [c["name"] for c in after["spec"]["clusters"]] == ["member2"]
        assert after["status"]["schedulerObservingAffinityName"] == "backup"
        assert placed(pipeline, namespace, "web") == {"member2"}

        # A reschedule starts from the first group again.
        rescheduled = pipeline.cli("reschedule", "deployment", "web", "-n", namespace)
        assert rescheduled.returncode == 0, rescheduled.stderr
        wait_for(
            "web back in the primary group",
            functools.partial(has_exactly, pipeline, namespace, "web", {"member1"}),
            timeout=TIMEOUT,
        )
        moved = binding(pipeline, namespace, "web")
        assert moved is not None
        assert moved["status"]["schedulerObservingAffinityName"] == "primary"
    finally:
        label_cluster(pipeline, "member1", key, None)


def lazy_policy(namespace: str, cluster: str) -> dict[str, Any]:
    made = policy(namespace, "lazy", cluster_names=[cluster])
    made["spec"]["activationPreference"] = "Lazy"
    return made


def test_a_lazy_policy_applies_at_the_templates_next_change(pipeline: Pipeline) -> None:
    namespace = f"e2e-{uuid.uuid4().hex[:6]}"
    # "before" exists before the policy; "after" is created after it.
    pipeline.apply(deployment(namespace, "before"))
    pipeline.apply(lazy_policy(namespace, "member1"))
    pipeline.apply(deployment(namespace, "after"))
    # Barrier: the policy's creation was handled (it took the later template)...
    wait_for(
        "the template created after the lazy policy on member1",
        functools.partial(has_exactly, pipeline, namespace, "after", {"member1"}),
        timeout=TIMEOUT,
    )
    # ...and did not take the template that was there before it.
    assert binding(pipeline, namespace, "before") is None
    assert placed(pipeline, namespace, "before") == set()

    pipeline.apply(deployment(namespace, "before", replicas=2))
    wait_for(
        "the earlier template on member1 once it changed",
        functools.partial(has_exactly, pipeline, namespace, "before", {"member1"}),
        timeout=TIMEOUT,
    )

    # A change of the lazy policy waits too: a template created after the change
    # follows it (the barrier), the others stay where they are...
    pipeline.apply(lazy_policy(namespace, "member2"))
    pipeline.apply(deployment(namespace, "latest"))
    wait_for(
        "a template created after the policy's change on member2",
        functools.partial(has_exactly, pipeline, namespace, "latest", {"member2"}),
        timeout=TIMEOUT,
    )
    assert placed(pipeline, namespace, "before") == {"member1"}
    assert placed(pipeline, namespace, "after") == {"member1"}
    # ...until they change.
    pipeline.apply(deployment(namespace, "after", replicas=3))
    wait_for(
        "the changed template moved to member2",
        functools.partial(has_exactly, pipeline, namespace, "after", {"member2"}),
        timeout=TIMEOUT,
    )
    assert placed(pipeline, namespace, "before") == {"member1"}


def priority_class(name: str, value: int) -> dict[str, Any]:
    return {
        "apiVersion": "scheduling.k8s.io/v1",
        "kind": "PriorityClass",
        "metadata": {"name": name},
        "value": value,
    }


def test_schedule_priority_comes_from_a_priority_class(pipeline: Pipeline) -> None:
    namespace = f"e2e-{uuid.uuid4().hex[:6]}"
    class_name = f"urgent-{namespace}"
    urgent = policy(namespace, cluster_names=["member1"])
    urgent["spec"]["schedulePriority"] = {
        "priorityClassSource": "KubePriorityClass",
        "priorityClassName": class_name,
    }
    pipeline.apply(deployment(namespace), urgent)

    def held() -> dict[str, Any] | None:
        found = condition(binding(pipeline, namespace, "web"), "Scheduled")
        return found if found.get("status") == "False" else None

    scheduled = wait_for("Scheduled=False naming the class", held, timeout=TIMEOUT)
    assert scheduled["reason"] == "SchedulerError"
    assert class_name in scheduled["message"]
    assert placed(pipeline, namespace, "web") == set()

    pipeline.apply(priority_class(class_name, 1000))
    wait_for(
        "web on member1 once the class exists",
        functools.partial(has_exactly, pipeline, namespace, "web", {"member1"}),
        timeout=TIMEOUT,
    )
    found = binding(pipeline, namespace, "web")
    assert found is not None
    assert found["spec"]["schedulePriority"] == {
        "priority": 1000,
        "priorityClassName": class_name,
    }
    assert condition(found, "Scheduled")["status"] == "True"
    api = pipeline.client()
    try:
        api.delete_template("scheduling.k8s.io/v1", "PriorityClass", class_name, "")
    finally:
        api.close()
