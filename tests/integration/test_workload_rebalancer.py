"""WorkloadRebalancer on a real control plane: ``archipel rebalance`` divides a workload
afresh after it failed over and reports a missing one as Failed; Karmada's own YAML is
applied unchanged, and its TTL deletes it.

Clusters are joined without agents (the policy tolerates their not-ready taints); a
NoExecute taint of the test's own moves the workload away. Every step is waited for
with a deadline; nothing is concluded from a sleep.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import grpc
import pytest
import yaml

from archipel.cli.main import main
from archipel.client import Client, ClientError
from archipel.core import kinds
from archipel.fleet.controlplane import ControlPlaneProcess
from archipel.v1alpha1 import apps_pb2
from tests.unit.test_karmada_compat import KARMADA_REBALANCER, KARMADA_REBALANCER_WITH_TTL

pytestmark = pytest.mark.servers

T = TypeVar("T")
DRAIN = "example.com/drain"


@pytest.fixture
def client(plane: ControlPlaneProcess) -> Iterator[Client]:
    api = plane.client()
    yield api
    api.close()


def wait_for(what: str, check: Callable[[], T | None], *, seconds: float = 30) -> T:
    """The first true value ``check`` returns, polled until ``seconds`` have passed."""
    deadline = time.monotonic() + seconds
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {seconds:.0f}s waiting for {what}")
        time.sleep(0.1)


def deployment(replicas: int) -> dict[str, Any]:
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "foo", "namespace": "default"},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": "foo"}},
            "template": {
                "metadata": {"labels": {"app": "foo"}},
                "spec": {"containers": [{"name": "foo", "image": "nginx"}]},
            },
        },
    }


POLICY = {
    "apiVersion": "policy.karmada.io/v1alpha1",
    "kind": "PropagationPolicy",
    "metadata": {"name": "foo", "namespace": "default"},
    "spec": {
        "resourceSelectors": [{"apiVersion": "apps/v1", "kind": "Deployment", "name": "foo"}],
        "placement": {
            "clusterAffinity": {"clusterNames": ["east", "west"]},
            # No agent reports the clusters: tolerate what that brings, not DRAIN.
            "clusterTolerations": [
                {"key": "cluster.karmada.io/not-ready", "operator": "Exists"},
                {"key": "cluster.karmada.io/unreachable", "operator": "Exists"},
            ],
            "replicaScheduling": {
                "replicaSchedulingType": "Divided",
                "replicaDivisionPreference": "Weighted",
                "weightPreference": {
                    "staticWeightList": [
                        {"targetCluster": {"clusterNames": [name]}, "weight": 1}
                        for name in ("east", "west")
                    ]
                },
            },
        },
    },
}


def binding(client: Client) -> Any:
    return client.binding_of("apps/v1", "Deployment", "default", "foo")


def scheduled(client: Client) -> dict[str, int]:
    found = binding(client)
    return {t.name: t.replicas for t in found.spec.clusters} if found is not None else {}


def set_drain(client: Client, cluster: str, *, on: bool) -> None:
    member = client.get_object(kinds.MEMBER_CLUSTER, cluster)
    kept = [t for t in member.spec.taints if t.key != DRAIN]
    del member.spec.taints[:]
    member.spec.taints.extend(kept)
    if on:
        member.spec.taints.add(key=DRAIN, effect="NoExecute")
    client.apply_object(kinds.MEMBER_CLUSTER, member)


def rebalancer(client: Client, name: str) -> apps_pb2.WorkloadRebalancer | None:
    try:
        found: apps_pb2.WorkloadRebalancer = client.get_object(kinds.WORKLOAD_REBALANCER, name)
    except ClientError as error:
        if error.code == grpc.StatusCode.NOT_FOUND:
            return None
        raise
    return found


def finished(client: Client, name: str) -> apps_pb2.WorkloadRebalancer | None:
    found = rebalancer(client, name)
    if found is None or not found.status.HasField("finish_time"):
        return None
    if found.status.observed_generation != found.metadata.generation:
        return None
    return found


def test_rebalance_divides_afresh_and_reports_a_missing_workload(
    plane: ControlPlaneProcess,
    client: Client,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    for name in ("east", "west"):
        client.join(name)
    client.apply_document(deployment(replicas=4))
    client.apply_document(POLICY)
    wait_for("2 replicas each", lambda: scheduled(client) == {"east": 2, "west": 2})

    # west is drained: everything moves to east, and stays there once it is back.
    set_drain(client, "west", on=True)
    wait_for("all replicas on east", lambda: scheduled(client) == {"east": 4})
    set_drain(client, "west", on=False)
    moved = binding(client)
    assert moved.status.HasField("last_scheduled_time")
    # A rebalancer asks for a reschedule from its creationTimestamp, in whole seconds:
    # it must be created in a later second than the last decision to be newer than it.
    last = moved.status.last_scheduled_time.seconds
    wait_for("a second after the last decision", lambda: time.time() >= last + 1, seconds=5)

    config = tmp_path / "archipel.yaml"
    plane.write_cli_config(config)
    capsys.readouterr()
    targets = ["deployment/foo", "deployment/ghost"]
    code = main(["--config", str(config), "rebalance", *targets, "-n", "default"])
    out, err = capsys.readouterr()
    assert code == 1, (out, err)  # ghost failed
    lines = out.splitlines()
    assert lines[0].startswith("workloadrebalancer/rebalance-") and lines[0].endswith(" created")
    assert lines[1:] == [
        "deployment/foo -n default: Successful",
        "deployment/ghost -n default: Failed (ReferencedBindingNotFound)",
    ]
    assert "1 of 2 workloads failed" in err
    name = lines[0].split()[0].split("/")[1]

    done = finished(client, name)
    assert done is not None
    assert [(o.workload.name, o.result, o.reason) for o in done.status.observed_workloads] == [
        ("foo", "Successful", ""),
        ("ghost", "Failed", "ReferencedBindingNotFound"),
    ]
    assert done.status.observed_generation == 1
    assert done.status.finish_time.seconds >= done.metadata.creation_timestamp.seconds
    # No TTL: the rebalancer stays.
    assert not done.spec.HasField("ttl_seconds_after_finished")
    # The binding was asked to reschedule at the rebalancer's creation, and the
    # scheduler divided afresh: west has its share back.
    asked = binding(client)
    assert asked.spec.reschedule_triggered_at == done.metadata.creation_timestamp
    wait_for("2 replicas each again", lambda: scheduled(client) == {"east": 2, "west": 2})

    # `archipel get` knows the kind by its plural and its short names.
    capsys.readouterr()
    assert main(["--config", str(config), "get", "workloadrebalancers"]) == 0
    assert name in capsys.readouterr().out
    assert main(["--config", str(config), "get", "wr", name, "-o", "yaml"]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["apiVersion"] == "apps.archipel.io/v1alpha1"
    assert printed["status"]["observedWorkloads"][1]["reason"] == "ReferencedBindingNotFound"


def test_karmadas_yaml_is_applied_unchanged_edited_and_deleted_by_its_ttl(
    plane: ControlPlaneProcess, client: Client
) -> None:
    # Karmada's tutorial, as written: no Deployment foo exists here.
    assert client.apply_document(yaml.safe_load(KARMADA_REBALANCER)) == (
        "workloadrebalancer/demo",
        "created",
    )
    first = wait_for("demo finished", lambda: finished(client, "demo"))
    assert [(o.workload.name, o.result, o.reason) for o in first.status.observed_workloads] == [
        ("foo", "Failed", "ReferencedBindingNotFound")
    ]

    # A new generation: the added workload gets its result, the removed one drops.
    edited = yaml.safe_load(KARMADA_REBALANCER)
    edited["spec"]["workloads"] = [
        {"apiVersion": "v1", "kind": "ConfigMap", "name": "settings", "namespace": "default"}
    ]
    client.apply_document(edited)
    second = wait_for("generation 2 finished", lambda: finished(client, "demo"))
    assert second.metadata.generation == 2
    assert [(o.workload.kind, o.workload.name) for o in second.status.observed_workloads] == [
        ("ConfigMap", "settings")
    ]

    # Karmada's step 6 with a TTL of 1 s instead of 300: it goes 1 s after it finished.
    with_ttl = yaml.safe_load(KARMADA_REBALANCER_WITH_TTL)
    with_ttl["spec"]["ttlSecondsAfterFinished"] = 1
    assert client.apply_document(with_ttl) == ("workloadrebalancer/demo", "configured")
    wait_for("demo deleted by its TTL", lambda: rebalancer(client, "demo") is None)
