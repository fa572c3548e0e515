"""API discovery follows the member, end to end: a CRD created or deleted directly in
a member's API server shows in its MemberCluster's ``status.apiEnablements`` within a
heartbeat or two (the agent watches CRDs and APIServices; before, discovery reran only
every tenth heartbeat), and the scheduler stops choosing a member that lost the kind."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest
from kubernetes import client as k8s
from kubernetes.client.exceptions import ApiException

from tests.e2e.conftest import Pipeline, policy, wait_for, widget_crd, works_of
from tests.e2e.conftest import serves as served_in

pytestmark = pytest.mark.members(count=2, profile="api")

# The pipeline's heartbeat interval (tests/e2e/conftest.py: the agents' and the control
# plane's); discovery's safety net runs every tenth heartbeat, 10 s. A change is due
# at the next heartbeat (at most one interval away) and confirmed at the one after; the
# rest is the control plane writing the status and this test polling it.
HEARTBEAT = 1.0
DEADLINE = 2 * HEARTBEAT + 3.0
WIDGET = "Widget"


def serves(pipeline: Pipeline, member: str, group_version: str, kind: str) -> bool:
    return served_in(pipeline.cluster(member), group_version, kind)


def extensions(pipeline: Pipeline, member: str) -> k8s.ApiextensionsV1Api:
    return k8s.ApiextensionsV1Api(pipeline.fleet[member].api_client())


def create_crd(pipeline: Pipeline, member: str, group: str) -> str:
    """A Widget CRD made directly in the member (not through Archipel); its name."""
    crd = widget_crd(group)
    # The client sends a dict body as it is (its model class would add nothing).
    extensions(pipeline, member).create_custom_resource_definition(crd)  # type: ignore[arg-type]
    return str(crd["metadata"]["name"])


def delete_crd(pipeline: Pipeline, member: str, name: str) -> None:
    try:
        extensions(pipeline, member).delete_custom_resource_definition(name)
    except ApiException as error:
        if error.status != 404:
            raise


def timed_wait(what: str, check: Any) -> float:
    """Wait at most DEADLINE seconds for ``check``; how long it took."""
    started = time.monotonic()
    wait_for(what, check, timeout=DEADLINE)
    return time.monotonic() - started


def test_a_crd_deleted_in_a_member_leaves_its_api_enablements_within_a_heartbeat(
    pipeline: Pipeline, namespace: str
) -> None:
    group = f"{namespace}.example.com"
    version = f"{group}/v1"
    name = create_crd(pipeline, "member1", group)
    try:
        started = time.monotonic()
        wait_for(
            f"member1's apiEnablements to list {WIDGET} in {version}",
            lambda: serves(pipeline, "member1", version, WIDGET),
            timeout=30,
        )
        added = time.monotonic() - started
        # Listed just after a discovery: the next one the safety net would run is ten
        # heartbeats away, more than the deadline.
        delete_crd(pipeline, "member1", name)
        removed = timed_wait(
            f"member1's apiEnablements to drop {version} after its CRD was deleted",
            lambda: not serves(pipeline, "member1", version, WIDGET),
        )
        print(f"CRD created -> listed {added:.2f}s; deleted -> dropped {removed:.2f}s")
        # A new CRD is as quick to show (discovery is due at its events too).
        assert added < DEADLINE
        # Another member's APIs are its own.
        assert not serves(pipeline, "member2", version, WIDGET)
    finally:
        delete_crd(pipeline, "member1", name)


def test_the_scheduler_stops_choosing_a_member_that_lost_the_kind(
    pipeline: Pipeline, namespace: str
) -> None:
    group = f"{namespace}.example.com"
    version = f"{group}/v1"
    names = {member: create_crd(pipeline, member, group) for member in ("member1", "member2")}
    try:
        for member in names:
            wait_for(
                f"{member}'s apiEnablements to list {WIDGET} in {version}",
                lambda member=member: serves(pipeline, member, version, WIDGET),  # type: ignore[misc]
                timeout=30,
            )
        widget = {
            "apiVersion": version,
            "kind": WIDGET,
            "metadata": {"name": "gizmo", "namespace": namespace},
            "spec": {"size": 3},
        }
        both = policy(
            namespace, cluster_names=["member1", "member2"], kind=WIDGET, api_version=version
        )
        pipeline.apply(widget, both)
        member2 = k8s.CustomObjectsApi(pipeline.fleet["member2"].api_client())

        def widget_in_member2() -> bool:
            try:
                member2.get_namespaced_custom_object(group, "v1", namespace, "widgets", "gizmo")
            except ApiException:
                return False
            return True

        wait_for("the Widget in member2", widget_in_member2, timeout=90)
        assert set(works_of(pipeline, namespace, "gizmo-widget")) == {"member1", "member2"}

        # Someone removes the CRD from member2 (and with it, the Widget there).
        delete_crd(pipeline, "member2", names["member2"])
        removed = timed_wait(
            f"member2's apiEnablements to drop {version}",
            lambda: not serves(pipeline, "member2", version, WIDGET),
        )
        print(f"CRD deleted in member2 -> dropped from its apiEnablements {removed:.2f}s")

        def scheduled_to_member1_only() -> dict[str, Any] | None:
            got = pipeline.cli("get", "pb", "gizmo-widget", "-n", namespace, "-o", "json")
            if got.returncode != 0:
                return None
            binding: dict[str, Any] = json.loads(got.stdout)
            clusters = [c["name"] for c in binding["spec"].get("clusters", [])]
            return binding if clusters == ["member1"] else None

        binding = wait_for("the binding to leave member2", scheduled_to_member1_only, timeout=30)
        scheduled = next(c for c in binding["status"]["conditions"] if c["type"] == "Scheduled")
        assert f"member2: does not serve {WIDGET} in {version}" in scheduled["message"]
        # member2's work goes (its agent deletes a kind the member no longer serves as
        # already gone); member1 keeps its Widget.
        wait_for(
            "member2's work removed",
            lambda: set(works_of(pipeline, namespace, "gizmo-widget")) == {"member1"},
            timeout=60,
        )
        member1 = k8s.CustomObjectsApi(pipeline.fleet["member1"].api_client())
        assert member1.get_namespaced_custom_object(group, "v1", namespace, "widgets", "gizmo")
    finally:
        for member, name in names.items():
            delete_crd(pipeline, member, name)
