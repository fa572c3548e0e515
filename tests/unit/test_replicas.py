"""Replica interpretation: what the scheduler counts and what each member receives."""

from __future__ import annotations

from typing import Any

import pytest

from archipel.core.workloads import (
    job_completions,
    member_manifest,
    replica_requests,
    template_replicas,
)
from archipel.v1alpha1 import work_pb2


def workload(kind: str, **spec: Any) -> dict[str, Any]:
    containers = [
        {"name": "a", "resources": {"requests": {"cpu": "250m", "memory": "64Mi"}}},
        {"name": "b", "resources": {"requests": {"cpu": "0.5", "memory": "1Gi"}}},
    ]
    pod = {"containers": containers}
    body: dict[str, Any] = {"template": {"spec": pod}, **spec}
    if kind == "CronJob":
        body = {"jobTemplate": {"spec": {"template": {"spec": pod}}}}
    if kind == "Pod":
        body = pod
    return {"apiVersion": API_VERSIONS[kind], "kind": kind, "metadata": {"name": "w"}, "spec": body}


API_VERSIONS = {
    "Deployment": "apps/v1",
    "StatefulSet": "apps/v1",
    "ReplicaSet": "apps/v1",
    "Job": "batch/v1",
    "CronJob": "batch/v1",
    "Pod": "v1",
    "Widget": "example.io/v1",
}


@pytest.mark.parametrize(
    ("manifest", "replicas"),
    [
        (workload("Deployment", replicas=5), 5),
        (workload("StatefulSet", replicas=2), 2),
        (workload("ReplicaSet", replicas=1), 1),
        (workload("Job", parallelism=4, completions=8), 4),
        (workload("Deployment"), 1),  # Kubernetes' default
        (workload("Pod"), 1),
        # As in Karmada: a kind nobody describes has no replicas to divide.
        (workload("Widget", replicas=7), 0),
        ({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}, "data": {}}, 0),
    ],
)
def test_replicas_by_kind(manifest: dict[str, Any], replicas: int) -> None:
    assert template_replicas(manifest) == replicas


@pytest.mark.parametrize("kind", ["Deployment", "Job", "CronJob", "Pod"])
def test_requests_sum_the_containers(kind: str) -> None:
    assert replica_requests(workload(kind, replicas=1)) == {
        "cpu": "750m",
        "memory": str(2**30 + 64 * 2**20),
    }


def test_each_member_gets_its_share() -> None:
    deployment = member_manifest(workload("Deployment", replicas=6), replicas=2)
    assert deployment["spec"]["replicas"] == 2
    job = member_manifest(workload("Job", parallelism=6, completions=6), replicas=4)
    assert job["spec"]["parallelism"] == 4
    assert job["spec"]["completions"] == 6


def _binding(replica_scheduling: str | None, shares: dict[str, int]) -> work_pb2.PropagationBinding:
    binding = work_pb2.PropagationBinding()
    binding.metadata.uid = "u"
    if replica_scheduling is not None:
        binding.spec.placement.replica_scheduling.replica_scheduling_type = replica_scheduling
    for name, replicas in shares.items():
        binding.spec.clusters.add(name=name, replicas=replicas)
    return binding


@pytest.mark.parametrize(
    ("job", "replica_scheduling", "shares", "completions"),
    [
        # Parallelism 4 divided 3/1: completions 8 follow, 6/2.
        (
            workload("Job", parallelism=4, completions=8),
            "Divided",
            {"a": 3, "b": 1},
            {"a": 6, "b": 2},
        ),
        # An odd one out goes by the binding's tie-break (Karmada's name order by uid hash).
        (
            workload("Job", parallelism=2, completions=5),
            "Divided",
            {"a": 1, "b": 1},
            {"a": 3, "b": 2},
        ),
        # Duplicated: every cluster runs the whole Job.
        (workload("Job", parallelism=4, completions=8), "Duplicated", {"a": 4, "b": 4}, None),
        (workload("Job", parallelism=4, completions=8), None, {"a": 4, "b": 4}, None),
        # No completions (a work queue Job): nothing to divide.
        (workload("Job", parallelism=4), "Divided", {"a": 2, "b": 2}, None),
        (workload("Deployment", replicas=4), "Divided", {"a": 2, "b": 2}, None),
    ],
)
def test_a_divided_jobs_completions_follow_its_parallelism(
    job: dict[str, Any],
    replica_scheduling: str | None,
    shares: dict[str, int],
    completions: dict[str, int] | None,
) -> None:
    assert job_completions(job, _binding(replica_scheduling, shares)) == completions
