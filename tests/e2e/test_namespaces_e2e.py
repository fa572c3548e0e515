"""Namespace auto-propagation, end to end on real members: a Namespace no policy claims
reaches every member cluster by itself, ClusterOverridePolicies included, and a member
that joins later gets it; the system namespaces, those labelled to be skipped and
those matching ``--skipped-propagating-namespaces`` do not go; deleting it removes it
from the members; adding the skip label later stops syncing and leaves it there."""

from __future__ import annotations

import functools
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client as k8s
from kubernetes.client.exceptions import ApiException

from archipel.fleet.controlplane import ControlPlaneProcess
from archipel.fleet.members import Fleet
from tests.e2e.conftest import QUICK_HEALTH, Pipeline, override_policy, wait_for, works_of

pytestmark = pytest.mark.members(count=2, profile="api")
TIMEOUT = 90.0
SKIPPED_PATTERN = "scratch-.*"
KARMADA_SKIP = "namespace.karmada.io/skip-auto-propagation"
ARCHIPEL_SKIP = "namespace.archipel.io/skip-auto-propagation"


def _ready(pipeline: Pipeline, name: str) -> bool:
    return pipeline.ready(name) == "True"


@pytest.fixture(scope="module")
def pipeline(members: Fleet, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pipeline]:
    """A control plane skipping ``scratch-.*``, with only member1 joined: member2 joins
    during the test."""
    assert members.etcd is not None
    directory: Path = tmp_path_factory.mktemp("namespaces")
    plane = ControlPlaneProcess(
        etcd_endpoint=members.etcd.endpoint,
        etcd_prefix=f"/archipel-{uuid.uuid4().hex[:8]}/",
        directory=directory,
        heartbeat_interval=1,
        cluster_grace_period=4,
        extra_args=(*QUICK_HEALTH, f"--skipped-propagating-namespaces={SKIPPED_PATTERN}"),
    )
    plane.start()
    result = Pipeline(fleet=members, plane=plane, agents={}, directory=directory)
    plane.join(members["member1"])
    result.start_agent(members["member1"])
    wait_for("member1 Ready", functools.partial(_ready, result, "member1"))
    yield result
    for agent in result.agents.values():
        agent.stop()
    plane.stop()


def namespace(name: str, labels: dict[str, str] | None = None) -> dict[str, Any]:
    metadata: dict[str, Any] = {"name": name}
    if labels:
        metadata["labels"] = labels
    return {"apiVersion": "v1", "kind": "Namespace", "metadata": metadata}


def in_member(pipeline: Pipeline, member: str, name: str) -> k8s.V1Namespace | None:
    """The namespace in the member, unless it is missing or on its way out."""
    try:
        found = pipeline.core(member).read_namespace(name)
    except ApiException as error:
        if error.status == 404:
            return None
        raise
    return None if found.metadata.deletion_timestamp else found


def gone(pipeline: Pipeline, member: str, name: str) -> bool:
    return in_member(pipeline, member, name) is None


def labelled(pipeline: Pipeline, member: str, name: str, key: str, value: str) -> bool:
    found = in_member(pipeline, member, name)
    return found is not None and (found.metadata.labels or {}).get(key) == value


def binding_exists(pipeline: Pipeline, name: str) -> bool:
    api = pipeline.client()
    try:
        return api.binding_of("v1", "Namespace", "", name) is not None
    finally:
        api.close()


def test_namespaces_reach_every_member_by_themselves(pipeline: Pipeline) -> None:
    suffix = uuid.uuid4().hex[:6]
    eligible = f"team-{suffix}"
    karmada_skipped = f"skipped-{suffix}"
    archipel_skipped = f"quiet-{suffix}"
    pattern_skipped = f"scratch-{suffix}"
    rules = [{"overriders": {"labelsOverrider": [{"operator": "add", "value": {"site": "x"}}]}}]
    label = override_policy(
        f"label-{suffix}",
        rules,
        selectors=[{"apiVersion": "v1", "kind": "Namespace", "name": eligible}],
    )
    pipeline.apply(label)
    try:
        # The skipped ones first: by the time the last one has reached the member,
        # the controllers have long been through the earlier ones.
        pipeline.apply(
            namespace(karmada_skipped, {KARMADA_SKIP: "true"}),
            namespace(archipel_skipped, {ARCHIPEL_SKIP: "true"}),
            namespace(pattern_skipped),
            namespace(eligible),
        )
        wait_for(
            f"{eligible} in member1 with the ClusterOverridePolicy's label",
            lambda: labelled(pipeline, "member1", eligible, "site", "x"),
            timeout=TIMEOUT,
        )
        for skipped in (karmada_skipped, archipel_skipped, pattern_skipped):
            assert in_member(pipeline, "member1", skipped) is None, skipped
            assert not binding_exists(pipeline, skipped), skipped
        described = pipeline.cli("describe", "namespace", eligible)
        assert "a Namespace goes to every member cluster by itself" in described.stdout

        # A member that joins later gets the namespaces that exist.
        pipeline.plane.join(pipeline.fleet["member2"])
        pipeline.start_agent(pipeline.fleet["member2"])
        wait_for(
            f"{eligible} in member2, which joined later",
            lambda: labelled(pipeline, "member2", eligible, "site", "x"),
            timeout=TIMEOUT,
        )
        for skipped in (karmada_skipped, archipel_skipped, pattern_skipped):
            assert in_member(pipeline, "member2", skipped) is None, skipped

        # Taking the skip label off sends the namespace.
        pipeline.apply(namespace(karmada_skipped))
        for member in ("member1", "member2"):
            wait_for(
                f"{karmada_skipped} in {member} once its skip label is gone",
                functools.partial(in_member, pipeline, member, karmada_skipped),
                timeout=TIMEOUT,
            )

        # Putting it on later stops syncing, and leaves the namespace in the members
        # (Karmada's behaviour): once its works are gone, the agents have let go of it.
        pipeline.apply(namespace(eligible, {ARCHIPEL_SKIP: "true"}))
        wait_for(
            f"{eligible}'s binding and works to go",
            lambda: (
                not binding_exists(pipeline, eligible)
                and not works_of(pipeline, "", f"{eligible}-namespace")
            ),
            timeout=TIMEOUT,
        )
        for member in ("member1", "member2"):
            assert labelled(pipeline, member, eligible, "site", "x"), member

        # Deleting a namespace removes it from the members.
        deleted = pipeline.cli("delete", "namespace", karmada_skipped)
        assert deleted.returncode == 0, deleted.stderr
        for member in ("member1", "member2"):
            wait_for(
                f"{karmada_skipped} to leave {member}",
                functools.partial(gone, pipeline, member, karmada_skipped),
                timeout=TIMEOUT,
            )
    finally:
        pipeline.cli("delete", "clusteroverridepolicy", label["metadata"]["name"])
        for name in (eligible, karmada_skipped, archipel_skipped, pattern_skipped):
            pipeline.cli("delete", "namespace", name)
            for member in pipeline.agents:
                try:
                    pipeline.core(member).delete_namespace(name)
                except ApiException as error:
                    if error.status != 404:
                        raise


def test_a_cluster_policy_wins_and_hands_the_namespace_back(pipeline: Pipeline) -> None:
    for member in ("member1", "member2"):
        if member not in pipeline.agents:
            pipeline.plane.join(pipeline.fleet[member])
            pipeline.start_agent(pipeline.fleet[member])
    name = f"claimed-{uuid.uuid4().hex[:6]}"
    claim = {
        "apiVersion": "policy.karmada.io/v1alpha1",
        "kind": "ClusterPropagationPolicy",
        "metadata": {"name": name},
        "spec": {
            "resourceSelectors": [{"apiVersion": "v1", "kind": "Namespace", "name": name}],
            "placement": {"clusterAffinity": {"clusterNames": ["member1"]}},
        },
    }
    pipeline.apply(namespace(name))
    try:
        for member in ("member1", "member2"):
            wait_for(
                f"{name} in {member}",
                functools.partial(in_member, pipeline, member, name),
                timeout=TIMEOUT,
            )
        before = in_member(pipeline, "member1", name)
        assert before is not None
        uid = before.metadata.uid

        # The policy places it on member1 only: it leaves member2.
        pipeline.apply(claim)
        wait_for(
            f"{name} to leave member2, which the policy does not place it on",
            functools.partial(gone, pipeline, "member2", name),
            timeout=TIMEOUT,
        )

        # The policy goes: the namespace goes everywhere again, and member1 keeps the
        # very namespace it had (nothing was deleted in between).
        deleted = pipeline.cli("delete", "clusterpropagationpolicy", name)
        assert deleted.returncode == 0, deleted.stderr
        wait_for(
            f"{name} back in member2",
            functools.partial(in_member, pipeline, "member2", name),
            timeout=TIMEOUT,
        )
        kept = in_member(pipeline, "member1", name)
        assert kept is not None and kept.metadata.uid == uid
    finally:
        pipeline.cli("delete", "clusterpropagationpolicy", name)
        pipeline.cli("delete", "namespace", name)
