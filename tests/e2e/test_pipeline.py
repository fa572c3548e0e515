"""The propagation pipeline end to end, on real etcd, real members and real agents."""

from __future__ import annotations

import asyncio
import functools
import json
import subprocess
from typing import Any

import etcd3aio
import grpc
import pytest
from kubernetes import client as k8s
from kubernetes.client.exceptions import ApiException

from archipel.core import kinds
from archipel.fleet import tools
from archipel.v1alpha1 import agent_pb2, agent_pb2_grpc
from archipel.v1alpha2 import service_pb2, service_pb2_grpc
from tests.e2e.conftest import (
    Pipeline,
    configmap,
    crd_cluster_policy,
    deployment,
    policy,
    wait_for,
    widget_crd,
)

pytestmark = pytest.mark.members(count=3, profile="full", isolated=True)
MEMBERS = ("member1", "member2", "member3")


def placed(pipeline: Pipeline, namespace: str, name: str = "web") -> set[str]:
    return {m for m in MEMBERS if pipeline.deployment(m, namespace, name) is not None}


def member_replicas(pipeline: Pipeline, namespace: str, name: str = "web") -> dict[str, int]:
    """Replicas of the Deployment in member1 and member2, where it exists."""
    found = {}
    for member in ("member1", "member2"):
        current = pipeline.deployment(member, namespace, name)
        if current is not None:
            found[member] = int(current.spec.replicas or 0)
    return found


def template_status(pipeline: Pipeline, namespace: str, name: str = "web") -> dict[str, Any]:
    status: dict[str, Any] = pipeline.template("apps/v1", "Deployment", namespace, name).get(
        "status", {}
    )
    return status


def test_propagates_by_name_to_two_of_three(pipeline: Pipeline, namespace: str) -> None:
    pipeline.apply(deployment(namespace), policy(namespace, cluster_names=["member1", "member2"]))
    wait_for("member1 and member2", lambda: placed(pipeline, namespace) == {"member1", "member2"})
    assert pipeline.deployment("member3", namespace, "web") is None


def test_propagates_by_label_selector(pipeline: Pipeline, namespace: str) -> None:
    pipeline.apply(deployment(namespace), policy(namespace, label_selector={"tier": "gold"}))
    wait_for("the gold clusters", lambda: placed(pipeline, namespace) == {"member1", "member3"})


def test_status_is_aggregated_from_members(pipeline: Pipeline, namespace: str) -> None:
    pipeline.apply(
        deployment(namespace, replicas=2), policy(namespace, cluster_names=["member1", "member2"])
    )
    status = wait_for(
        "aggregated readyReplicas",
        lambda: (s := template_status(pipeline, namespace)).get("readyReplicas") == 4 and s,
        timeout=90,
    )
    assert status["replicas"] == 4
    assert status["observedGeneration"] == 1
    described = pipeline.cli("describe", "deployment", "web", "-n", namespace)
    assert described.returncode == 0, described.stderr
    assert "FullyApplied: True" in described.stdout
    assert described.stdout.count("Healthy") == 2


def test_image_update_reaches_members(pipeline: Pipeline, namespace: str) -> None:
    pipeline.apply(deployment(namespace), policy(namespace, cluster_names=["member1", "member2"]))
    wait_for("placement", lambda: placed(pipeline, namespace) == {"member1", "member2"})
    pipeline.apply(deployment(namespace, image="nginx:1.28"))

    def images() -> set[str]:
        found = set()
        for member in ("member1", "member2"):
            current = pipeline.deployment(member, namespace, "web")
            assert current is not None
            found.add(str(current.spec.template.spec.containers[0].image))
        return found

    wait_for("the new image everywhere", lambda: images() == {"nginx:1.28"})


def test_changing_cluster_names_moves_the_workload(pipeline: Pipeline, namespace: str) -> None:
    pipeline.apply(deployment(namespace), policy(namespace, cluster_names=["member1", "member2"]))
    wait_for("first placement", lambda: placed(pipeline, namespace) == {"member1", "member2"})
    pipeline.apply(policy(namespace, cluster_names=["member2", "member3"]))
    wait_for("the move", lambda: placed(pipeline, namespace) == {"member2", "member3"})


def test_deleting_the_template_removes_it_everywhere(pipeline: Pipeline, namespace: str) -> None:
    pipeline.apply(deployment(namespace), policy(namespace, cluster_names=list(MEMBERS)))
    wait_for("placement", lambda: placed(pipeline, namespace) == set(MEMBERS))
    deleted = pipeline.cli("delete", "deployment", "web", "-n", namespace)
    assert deleted.returncode == 0, deleted.stderr
    wait_for("removal", lambda: placed(pipeline, namespace) == set())
    listed = pipeline.cli("get", "works", "-A", "-o", "json")
    assert f"{namespace}.web-deployment" not in listed.stdout


def test_deleting_the_policy_leaves_the_objects(pipeline: Pipeline, namespace: str) -> None:
    pipeline.apply(deployment(namespace), policy(namespace, cluster_names=["member1", "member2"]))
    wait_for("placement", lambda: placed(pipeline, namespace) == {"member1", "member2"})
    deleted = pipeline.cli("delete", "propagationpolicy", "web", "-n", namespace)
    assert deleted.returncode == 0, deleted.stderr
    api = pipeline.client()
    try:
        wait_for(
            "the binding to go",
            lambda: not api.list_objects(kinds.PROPAGATION_BINDING, namespace),
        )
    finally:
        api.close()
    assert placed(pipeline, namespace) == {"member1", "member2"}


def _applied(pipeline: Pipeline, namespace: str) -> bool:
    listed = json.loads(pipeline.cli("get", "works", "-A", "-o", "json").stdout or "{}")
    items = listed.get("items", [listed] if "metadata" in listed else [])
    for work in items:
        if work["metadata"]["name"] == f"{namespace}.web-deployment":
            conditions = work.get("status", {}).get("conditions", [])
            return any(c["type"] == "Applied" and c["status"] == "True" for c in conditions)
    return False


def _connected(pipeline: Pipeline, name: str) -> bool:
    return bool(pipeline.cluster(name)["status"]["agent"].get("connected"))


def test_manual_edits_are_reverted(pipeline: Pipeline, namespace: str) -> None:
    pipeline.apply(deployment(namespace), policy(namespace, cluster_names=["member1"]))
    wait_for("placement", lambda: placed(pipeline, namespace) == {"member1"})
    apps = pipeline.apps("member1")
    apps.patch_namespaced_deployment(
        "web",
        namespace,
        {"spec": {"template": {"spec": {"containers": [{"name": "web", "image": "evil:1"}]}}}},
    )

    def image() -> str:
        current = pipeline.deployment("member1", namespace, "web")
        return str(current.spec.template.spec.containers[0].image) if current else ""

    wait_for("the edit to be reverted", lambda: image() == "nginx:1.27")
    apps.delete_namespaced_deployment("web", namespace)
    wait_for(
        "the deletion to be reverted", lambda: pipeline.deployment("member1", namespace, "web")
    )


def test_agent_restart_resumes_without_reapplying(pipeline: Pipeline, namespace: str) -> None:
    pipeline.apply(deployment(namespace), policy(namespace, cluster_names=["member1"]))
    wait_for("placement", lambda: placed(pipeline, namespace) == {"member1"})
    # The agent reports Applied only after recording the work in its ledger; a crash
    # before that point rightly re-applies once, which is not what this test is about.
    wait_for("the work to be reported applied", lambda: _applied(pipeline, namespace))
    before = pipeline.deployment("member1", namespace, "web")
    assert before is not None
    delivered = pipeline.metric("archipel_works_delivered_total")
    agent = pipeline.agents["member1"]
    agent.kill()
    wait_for(
        "the disconnect",
        lambda: not pipeline.cluster("member1")["status"]["agent"].get("connected"),
    )
    offset = agent.process.log_path.stat().st_size
    restarted = pipeline.start_agent(pipeline.fleet["member1"])
    wait_for(
        "the reconnect", lambda: pipeline.cluster("member1")["status"]["agent"].get("connected")
    )

    # The ledger keeps hashes, not contents: the restarted agent asks for its works
    # again (generation 0 in its Hello), and checks the live objects against the
    # hashes instead of applying them.
    def checked() -> list[str]:
        with restarted.process.log_path.open("rb") as log:
            log.seek(offset)
            text = log.read().decode(errors="replace")
        return [
            line
            for line in text.splitlines()
            if "checked after a restart" in line and f"work {namespace}." in line
        ]

    lines = wait_for("the check of the resent work", checked)
    assert "0 of 1 objects applied again" in lines[0], lines
    assert pipeline.metric("archipel_works_delivered_total") > delivered
    after = pipeline.deployment("member1", namespace, "web")
    assert after is not None
    assert after.metadata.resource_version == before.metadata.resource_version


def test_control_plane_restart_loses_nothing(pipeline: Pipeline, namespace: str) -> None:
    pipeline.apply(deployment(namespace), policy(namespace, cluster_names=["member2"]))
    wait_for("placement", lambda: placed(pipeline, namespace) == {"member2"})
    before = pipeline.cli("get", "works", "-A", "-o", "json").stdout
    pipeline.plane.restart()
    for name in MEMBERS:
        wait_for(f"{name} to reconnect", functools.partial(_connected, pipeline, name))
    after = pipeline.cli("get", "works", "-A", "-o", "json").stdout
    names = lambda text: sorted(i["metadata"]["name"] for i in json.loads(text)["items"])  # noqa: E731
    assert names(after) == names(before)
    assert pipeline.metric("archipel_works_delivered_total") == 0
    pipeline.apply(deployment(namespace, image="nginx:1.28"))
    wait_for(
        "an update after the restart",
        lambda: (
            (d := pipeline.deployment("member2", namespace, "web"))
            and d.spec.template.spec.containers[0].image == "nginx:1.28"
        ),
    )


def test_karmada_yaml_through_the_cli_and_grpcurl(pipeline: Pipeline, namespace: str) -> None:
    karmada = f"""
apiVersion: policy.karmada.io/v1alpha1
kind: PropagationPolicy
metadata:
  name: nginx-propagation
  namespace: {namespace}
spec:
  resourceSelectors:
    - apiVersion: apps/v1
      kind: Deployment
      name: web
  placement:
    clusterAffinity:
      clusterNames:
        - member1
        - member3
    replicaScheduling:
      replicaSchedulingType: Duplicated
"""
    applied = pipeline.cli("apply", "-f", "-", stdin=karmada)
    assert applied.returncode == 0, applied.stderr
    assert "propagationpolicy/nginx-propagation created" in applied.stdout
    pipeline.apply(deployment(namespace))
    wait_for("placement", lambda: placed(pipeline, namespace) == {"member1", "member3"})
    # The same policy's JSON form through grpcurl.
    import yaml

    document = yaml.safe_load(karmada)
    document["metadata"]["name"] = "from-grpcurl"
    result = _grpcurl(
        pipeline, "archipel.v1alpha1.PropagationPolicyService/Apply", data=json.dumps(document)
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["metadata"]["name"] == "from-grpcurl"


def _grpcurl(
    pipeline: Pipeline, method: str, *, data: str = "{}", token: str | None = None
) -> subprocess.CompletedProcess[str]:
    binary = tools.ensure("grpcurl").grpcurl
    credential = token if token is not None else pipeline.plane.admin_token
    headers = ["-H", f"authorization: Bearer {credential}"] if credential else []
    return subprocess.run(
        [
            str(binary),
            "-cacert",
            str(pipeline.plane.ca_file),
            *headers,
            "-d",
            data,
            pipeline.plane.address,
            method,
        ],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def test_grpcurl_administration(pipeline: Pipeline) -> None:
    binary = str(tools.ensure("grpcurl").grpcurl)
    address = pipeline.plane.address
    listed = subprocess.run(
        [binary, "-cacert", str(pipeline.plane.ca_file), address, "list"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert "archipel.v1alpha1.PropagationPolicyService" in listed.stdout.split()
    assert "grpc.health.v1.Health" in listed.stdout.split()
    described = subprocess.run(
        [
            binary,
            "-cacert",
            str(pipeline.plane.ca_file),
            address,
            "describe",
            "archipel.v1alpha1.ResourceTemplateService",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    assert "rpc Apply" in described.stdout and "rpc Watch" in described.stdout
    token = pipeline.plane.admin_token
    got = subprocess.run(
        [
            binary,
            "-cacert",
            str(pipeline.plane.ca_file),
            "-H",
            f"authorization: Bearer {token}",
            "-d",
            '{"name": "member1"}',
            address,
            "archipel.v1alpha1.MemberClusterService/Get",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    assert json.loads(got.stdout)["metadata"]["name"] == "member1"
    health = subprocess.run(
        [binary, "-cacert", str(pipeline.plane.ca_file), address, "grpc.health.v1.Health/Check"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert "SERVING" in health.stdout


def test_bad_input_is_refused_and_nothing_is_stored(pipeline: Pipeline, tmp_path: Any) -> None:
    before = pipeline.cli("get", "pp", "-A", "-o", "json").stdout
    cases = {
        "invalid YAML": ("apiVersion: v1\nkind: [unclosed\n", "invalid YAML"),
        "unknown field": (
            "apiVersion: policy.karmada.io/v1alpha1\nkind: PropagationPolicy\nmetadata: {name: a}\n"
            "spec:\n  resourceSelectorz: []\n",
            "resourceSelectorz",
        ),
        "missing name": ("apiVersion: apps/v1\nkind: Deployment\nmetadata: {}\n", "metadata.name"),
        "bad selector": (
            "apiVersion: policy.karmada.io/v1alpha1\nkind: PropagationPolicy\nmetadata: {name: a}\n"
            "spec:\n  resourceSelectors:\n    - apiVersion: v1\n      kind: ConfigMap\n"
            "      labelSelector:\n        matchExpressions:\n"
            "          - {key: app, operator: Near}\n",
            "spec.resourceSelectors[0].labelSelector.matchExpressions[0].operator",
        ),
        "bad cluster name": (
            "apiVersion: policy.karmada.io/v1alpha1\nkind: PropagationPolicy\nmetadata: {name: a}\n"
            "spec:\n  resourceSelectors:\n    - {apiVersion: v1, kind: ConfigMap}\n"
            "  placement:\n    clusterAffinity:\n      clusterNames: [Not_A_Name]\n",
            "spec.placement.clusterAffinity.clusterNames[0]",
        ),
    }
    for case, (text, expected) in cases.items():
        result = pipeline.cli("apply", "-f", "-", stdin=text)
        assert result.returncode == 1, case
        assert expected in result.stderr, (case, result.stderr)
        assert len(result.stderr.strip().splitlines()) == 1, (case, result.stderr)
    assert pipeline.cli("get", "pp", "-A", "-o", "json").stdout == before

    wrong = _grpcurl(
        pipeline, "archipel.v1alpha1.PropagationPolicyService/List", token="admin.wrong"
    )
    assert "Unauthenticated" in wrong.stderr
    missing = _grpcurl(pipeline, "archipel.v1alpha1.PropagationPolicyService/List", token="")
    assert "Unauthenticated" in missing.stderr
    cluster_token = (pipeline.directory / "agents" / "member1.token").read_text().strip()
    denied = _grpcurl(
        pipeline, "archipel.v1alpha1.PropagationPolicyService/List", token=cluster_token
    )
    assert "PermissionDenied" in denied.stderr


def test_an_agent_cannot_ask_for_another_clusters_works(pipeline: Pipeline) -> None:
    token = (pipeline.directory / "agents" / "member1.token").read_text().strip()
    with pipeline.plane.channel() as channel:
        stub = agent_pb2_grpc.AgentServiceStub(channel)
        hello = agent_pb2.AgentMessage(hello=agent_pb2.Hello(cluster="member2"))
        stream = stub.Connect(
            iter([hello]), metadata=(("authorization", f"Bearer {token}"),), timeout=10
        )
        with pytest.raises(grpc.RpcError) as error:
            list(stream)
        assert error.value.code() == grpc.StatusCode.PERMISSION_DENIED
        assert "member1" in (error.value.details() or "")
        stream = stub.Connect(
            iter([hello]), metadata=(("authorization", "Bearer member2.forged"),), timeout=10
        )
        with pytest.raises(grpc.RpcError) as error:
            list(stream)
        assert error.value.code() == grpc.StatusCode.UNAUTHENTICATED


def test_template_label_change_releases_it(pipeline: Pipeline, namespace: str) -> None:
    labelled = deployment(namespace)
    labelled["metadata"]["labels"]["propagate"] = "yes"
    selected = policy(namespace, cluster_names=["member1"])
    selected["spec"]["resourceSelectors"][0]["labelSelector"] = {
        "matchLabels": {"propagate": "yes"}
    }
    pipeline.apply(labelled, selected)
    wait_for("placement", lambda: placed(pipeline, namespace) == {"member1"})
    labelled["metadata"]["labels"]["propagate"] = "no"
    pipeline.apply(labelled)
    wait_for("removal once the labels stop matching", lambda: placed(pipeline, namespace) == set())


def test_custom_resources_follow_their_definition(pipeline: Pipeline, namespace: str) -> None:
    group = f"{namespace}.example.com"
    crd = widget_crd(group)
    widget = {
        "apiVersion": f"{group}/v1",
        "kind": "Widget",
        "metadata": {"name": "gizmo", "namespace": namespace},
        "spec": {"size": 3},
    }
    cluster_policy = crd_cluster_policy(f"crd-{namespace}", ["member1"])
    # member2 never gets the definition: the APIEnablement filter must keep it out.
    widget_policy = policy(
        namespace, cluster_names=["member1", "member2"], kind="Widget", api_version=f"{group}/v1"
    )
    # The custom resource first: it must wait for its definition, then land.
    pipeline.apply(widget, widget_policy, crd, cluster_policy)
    custom = k8s.CustomObjectsApi(pipeline.fleet["member1"].api_client())

    def widget_in_member() -> bool:
        try:
            found = custom.get_namespaced_custom_object(group, "v1", namespace, "widgets", "gizmo")
        except ApiException:
            return False
        return bool(found["spec"]["size"] == 3)

    wait_for("the Widget in member1", widget_in_member, timeout=90)
    binding = json.loads(
        pipeline.cli("get", "pb", "gizmo-widget", "-n", namespace, "-o", "json").stdout
    )
    assert [c["name"] for c in binding["spec"]["clusters"]] == ["member1"]
    scheduled = next(c for c in binding["status"]["conditions"] if c["type"] == "Scheduled")
    assert f"member2: does not serve Widget in {group}/v1" in scheduled["message"]


def test_same_kind_and_name_in_two_api_groups_stay_apart(
    pipeline: Pipeline, namespace: str
) -> None:
    # A core ConfigMap "settings" and a ConfigMap "settings" of another API group (a
    # CRD), in one namespace. Before, both had the binding "settings-configmap":
    # applying the second took the first out of every member, and deleting the second
    # left the first gone.
    group = f"{namespace}.example.com"
    crd = widget_crd(group)
    crd["metadata"]["name"] = f"configmaps.{group}"
    crd["spec"]["names"] = {"kind": "ConfigMap", "plural": "configmaps", "singular": "configmap"}
    crd_policy = crd_cluster_policy(f"crd-{namespace}", ["member1"])
    core = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "settings", "namespace": namespace},
        "data": {"from": "core"},
    }
    custom = {
        "apiVersion": f"{group}/v1",
        "kind": "ConfigMap",
        "metadata": {"name": "settings", "namespace": namespace},
        "spec": {"from": "crd"},
    }
    both = {
        "apiVersion": "policy.karmada.io/v1alpha1",
        "kind": "PropagationPolicy",
        "metadata": {"name": "both", "namespace": namespace},
        "spec": {
            "resourceSelectors": [
                {"apiVersion": "v1", "kind": "ConfigMap"},
                {"apiVersion": f"{group}/v1", "kind": "ConfigMap"},
            ],
            "placement": {"clusterAffinity": {"clusterNames": ["member1"]}},
        },
    }
    pipeline.apply(crd, crd_policy, core, both)
    core_api = pipeline.core("member1")
    custom_api = k8s.CustomObjectsApi(pipeline.fleet["member1"].api_client())

    def core_in_member() -> bool:
        try:
            found = core_api.read_namespaced_config_map("settings", namespace)
        except ApiException:
            return False
        return bool(found.data == {"from": "core"})

    def custom_in_member() -> bool:
        try:
            custom_api.get_namespaced_custom_object(
                group, "v1", namespace, "configmaps", "settings"
            )
        except ApiException:
            return False
        return True

    wait_for("the core ConfigMap in member1", core_in_member)
    pipeline.apply(custom)
    wait_for("the other group's ConfigMap in member1", custom_in_member, timeout=90)
    assert core_in_member()

    # Each has its own binding, and describe finds each by what it binds.
    listed = json.loads(pipeline.cli("get", "pb", "-n", namespace, "-o", "json").stdout)
    resources = sorted(b["spec"]["resource"]["apiVersion"] for b in listed["items"])
    assert resources == sorted(["v1", f"{group}/v1"])
    for kind in ("configmap", f"ConfigMap.v1.{group}"):
        described = pipeline.cli("describe", kind, "settings", "-n", namespace)
        assert described.returncode == 0, described.stderr
        assert "member1" in described.stdout and "not propagated" not in described.stdout

    # Deleting the other group's object leaves the core one where it is.
    deleted = pipeline.cli("delete", "-f", "-", stdin=json.dumps(custom))
    assert deleted.returncode == 0, deleted.stderr
    wait_for("the other group's ConfigMap gone", lambda: not custom_in_member())
    assert core_in_member()


def test_watch_lists_then_streams_changes(pipeline: Pipeline, namespace: str) -> None:
    api = pipeline.client()
    stub = service_pb2_grpc.PropagationPolicyServiceStub(api.channel)
    try:
        listed = api.call(
            stub.List, service_pb2.PropagationPolicyServiceListRequest(namespace=namespace)
        )
        events = stub.Watch(
            service_pb2.PropagationPolicyServiceWatchRequest(
                namespace=namespace, resource_version=listed.resource_version
            ),
            metadata=api.metadata,
            timeout=30,
        )
        pipeline.apply(policy(namespace, cluster_names=["member1"]))
        pipeline.cli("delete", "pp", "web", "-n", namespace)
        seen = []
        for event in events:
            seen.append((event.type, event.object.metadata.name))
            if event.type == service_pb2.EVENT_TYPE_DELETED:
                events.cancel()
                break
        assert seen == [
            (service_pb2.EVENT_TYPE_ADDED, "web"),
            (service_pb2.EVENT_TYPE_DELETED, "web"),
        ]
    finally:
        api.close()


def test_api_errors_use_the_right_codes(pipeline: Pipeline, namespace: str) -> None:
    api = pipeline.client()
    stub = service_pb2_grpc.PropagationPolicyServiceStub(api.channel)

    def code(call: Any, request: Any) -> grpc.StatusCode:
        try:
            call(request, metadata=api.metadata, timeout=10)
        except grpc.RpcError as error:
            return error.code()
        return grpc.StatusCode.OK

    try:
        get = service_pb2.PropagationPolicyServiceGetRequest
        missing = get(namespace=namespace, name="nope")
        assert code(stub.Get, missing) == grpc.StatusCode.NOT_FOUND
        assert code(stub.Get, get(namespace=namespace)) == grpc.StatusCode.INVALID_ARGUMENT
        bad_selector = service_pb2.PropagationPolicyServiceListRequest(label_selector="a in (")
        assert code(stub.List, bad_selector) == grpc.StatusCode.INVALID_ARGUMENT
        pipeline.apply(policy(namespace, cluster_names=["member1"]))
        current = api.call(stub.Get, get(namespace=namespace, name="web")).object
        pipeline.apply(policy(namespace, cluster_names=["member2"]))
        stale = type(current)()
        stale.CopyFrom(current)
        stale.spec.placement.cluster_affinity.cluster_names[:] = ["member3"]
        apply = service_pb2.PropagationPolicyServiceApplyRequest(object=stale)
        assert code(stub.Apply, apply) == grpc.StatusCode.ABORTED
        assert (
            code(api.admin.Join, service_pb2.JoinRequest(name="member1"))
            == grpc.StatusCode.ALREADY_EXISTS
        )
        assert (
            code(api.admin.Join, service_pb2.JoinRequest(name="Bad_Name"))
            == grpc.StatusCode.INVALID_ARGUMENT
        )
    finally:
        api.close()


def test_a_stuck_agent_does_not_hold_up_the_others(pipeline: Pipeline, namespace: str) -> None:
    api = pipeline.client()
    try:
        joined, token = api.join(f"stuck-{namespace[-6:]}")
    finally:
        api.close()
    stuck = joined.metadata.name
    with pipeline.plane.channel() as channel:
        stub = agent_pb2_grpc.AgentServiceStub(channel)
        hello = agent_pb2.AgentMessage(hello=agent_pb2.Hello(cluster=stuck))
        stream = stub.Connect(iter([hello]), metadata=(("authorization", f"Bearer {token}"),))
        for _welcome in stream:
            break  # after the welcome this "agent" never reads again
        big = [deployment(namespace, f"d{i}") for i in range(40)]
        pipeline.apply(*big, policy(namespace, cluster_names=[stuck, "member1"]))
        wait_for(
            "member1 to get every work the stuck cluster is not reading",
            lambda: all(pipeline.deployment("member1", namespace, f"d{i}") for i in range(40)),
            timeout=90,
        )
        stream.cancel()


def test_static_weights_divide_replicas_between_members(pipeline: Pipeline, namespace: str) -> None:
    weighted = policy(namespace, cluster_names=["member1", "member2"])
    weighted["spec"]["placement"]["replicaScheduling"] = {
        "replicaSchedulingType": "Divided",
        "replicaDivisionPreference": "Weighted",
        "weightPreference": {
            "staticWeightList": [
                {"targetCluster": {"clusterNames": ["member1"]}, "weight": 2},
                {"targetCluster": {"clusterNames": ["member2"]}, "weight": 1},
            ]
        },
    }
    pipeline.apply(deployment(namespace, replicas=3), weighted)

    def replicas() -> dict[str, int]:
        return member_replicas(pipeline, namespace)

    wait_for("2:1 division", lambda: replicas() == {"member1": 2, "member2": 1})
    status = wait_for(
        "aggregated readiness",
        lambda: (s := template_status(pipeline, namespace)).get("readyReplicas") == 3 and s,
        timeout=90,
    )
    assert status["replicas"] == 3


def test_tainted_and_cordoned_clusters_get_no_new_work(pipeline: Pipeline, namespace: str) -> None:
    tainted = pipeline.cli("taint", "member2", "dedicated=ml:NoSchedule")
    assert tainted.returncode == 0, tainted.stderr
    cordoned = pipeline.cli("cordon", "member3")
    assert cordoned.returncode == 0, cordoned.stderr
    try:
        pipeline.apply(deployment(namespace), policy(namespace, cluster_names=list(MEMBERS)))
        wait_for("member1 only", lambda: placed(pipeline, namespace) == {"member1"})
        described = pipeline.cli("get", "pb", "web-deployment", "-n", namespace, "-o", "json")
        condition = next(
            c
            for c in json.loads(described.stdout)["status"]["conditions"]
            if c["type"] == "Scheduled"
        )
        assert condition["reason"] == "Success"
    finally:
        assert pipeline.cli("taint", "member2", "dedicated:NoSchedule-").returncode == 0
        assert pipeline.cli("uncordon", "member3").returncode == 0
    wait_for(
        "all three once the taints are gone", lambda: placed(pipeline, namespace) == set(MEMBERS)
    )


def test_relabelled_cluster_loses_the_workload(pipeline: Pipeline, namespace: str) -> None:
    pipeline.apply(deployment(namespace), policy(namespace, label_selector={"tier": "gold"}))
    wait_for("the gold clusters", lambda: placed(pipeline, namespace) == {"member1", "member3"})
    api = pipeline.client()
    clusters = kinds.MEMBER_CLUSTER
    try:
        cluster = api.get_object(clusters, "member3")
        cluster.metadata.labels["tier"] = "bronze"
        api.apply_object(clusters, cluster)
        wait_for("member3 to lose it", lambda: placed(pipeline, namespace) == {"member1"})
    finally:
        cluster = api.get_object(clusters, "member3")
        cluster.metadata.labels["tier"] = "gold"
        api.apply_object(clusters, cluster)
        api.close()


def test_reschedule_divides_from_scratch(pipeline: Pipeline, namespace: str) -> None:
    divided = policy(namespace, cluster_names=["member1", "member2"])
    divided["spec"]["placement"]["replicaScheduling"] = {"replicaSchedulingType": "Divided"}
    pipeline.apply(deployment(namespace, replicas=4), divided)

    def replicas() -> dict[str, int]:
        return member_replicas(pipeline, namespace)

    wait_for("an even split", lambda: replicas() == {"member1": 2, "member2": 2})
    result = pipeline.cli("reschedule", "deployment", "web", "-n", namespace)
    assert result.returncode == 0, result.stderr
    assert "rescheduling" in result.stdout
    assert replicas() == {"member1": 2, "member2": 2}


def test_the_simulator_agrees_with_the_live_scheduler(
    pipeline: Pipeline, namespace: str, tmp_path: Any
) -> None:
    import yaml

    weighted = policy(namespace, label_selector={"tier": "gold"})
    weighted["spec"]["placement"]["replicaScheduling"] = {
        "replicaSchedulingType": "Divided",
        "replicaDivisionPreference": "Weighted",
        "weightPreference": {
            "staticWeightList": [
                {"targetCluster": {"clusterNames": ["member1"]}, "weight": 3},
                {
                    "targetCluster": {"labelSelector": {"matchLabels": {"tier": "gold"}}},
                    "weight": 1,
                },
            ]
        },
    }
    template = deployment(namespace, replicas=7)
    pipeline.apply(template, weighted)

    def live() -> dict[str, int]:
        got = pipeline.cli("get", "pb", "web-deployment", "-n", namespace, "-o", "json")
        if got.returncode != 0:
            return {}
        return {
            c["name"]: c.get("replicas", 0)
            for c in json.loads(got.stdout)["spec"].get("clusters", [])
        }

    decided = wait_for("the live decision", live)
    clusters = tmp_path / "clusters.yaml"
    clusters.write_text(pipeline.cli("get", "membercluster", "-o", "yaml").stdout)
    documents = tmp_path / "documents.yaml"
    documents.write_text(yaml.safe_dump_all([template, weighted]))
    simulated = pipeline.cli(
        "schedule", "--simulate", "--clusters", str(clusters), "-f", str(documents), "-o", "json"
    )
    assert simulated.returncode == 0, simulated.stderr
    result = json.loads(simulated.stdout)["results"][0]
    assert (
        {c["name"]: c["replicas"] for c in result["clusters"]}
        == decided
        == {"member1": 5, "member3": 2}
    )


def test_overrides_change_each_cluster_and_bad_ones_keep_the_last_good_work(
    pipeline: Pipeline, namespace: str
) -> None:
    override = {
        "apiVersion": "policy.karmada.io/v1alpha1",
        "kind": "OverridePolicy",
        "metadata": {"name": "per-cluster", "namespace": namespace},
        "spec": {
            "resourceSelectors": [{"apiVersion": "apps/v1", "kind": "Deployment", "name": "web"}],
            "overrideRules": [
                {
                    "targetCluster": {
                        "fieldSelector": {
                            "matchExpressions": [
                                {"key": "region", "operator": "In", "values": ["region-a"]}
                            ]
                        }
                    },
                    "overriders": {
                        "imageOverrider": [
                            {
                                "component": "Registry",
                                "operator": "replace",
                                "value": "eu.registry.io",
                            }
                        ]
                    },
                },
                {
                    "targetCluster": {"clusterNames": ["member2"]},
                    "overriders": {
                        "plaintext": [
                            {"path": "/spec/replicas", "operator": "replace", "value": 1}
                        ],
                        "argsOverrider": [
                            {"containerName": "web", "operator": "add", "value": ["-v"]}
                        ],
                    },
                },
            ],
        },
    }
    pipeline.apply(
        deployment(namespace, replicas=2),
        policy(namespace, cluster_names=["member1", "member2"]),
        override,
    )

    def shapes() -> dict[str, tuple[str, int, list[str]]]:
        found = {}
        for member in ("member1", "member2"):
            current = pipeline.deployment(member, namespace, "web")
            if current is not None:
                container = current.spec.template.spec.containers[0]
                found[member] = (
                    str(container.image),
                    int(current.spec.replicas or 0),
                    list(container.args or []),
                )
        return found

    wait_for(
        "per-cluster overrides",
        lambda: (
            shapes()
            == {
                "member1": ("eu.registry.io/nginx:1.27", 2, []),
                "member2": ("nginx:1.27", 1, ["-v"]),
            }
        ),
    )
    broken = json.loads(json.dumps(override))
    broken["spec"]["overrideRules"][1]["overriders"]["plaintext"][0]["path"] = "/spec/nothing/here"
    pipeline.apply(broken)

    def condition() -> dict[str, Any]:
        got = pipeline.cli("get", "pb", "web-deployment", "-n", namespace, "-o", "json")
        conditions = json.loads(got.stdout).get("status", {}).get("conditions", [])
        return next(
            (c for c in conditions if c["type"] == "OverridesApplied" and c["status"] == "False"),
            {},
        )

    failed = wait_for("the override failure on the binding", condition)
    assert "OverridePolicy" in failed["message"] and "plaintext[0]" in failed["message"]
    assert shapes()["member2"] == ("nginx:1.27", 1, ["-v"])  # the last good work stays


def test_deletion_protection_blocks_deleting_a_template(pipeline: Pipeline, namespace: str) -> None:
    protected = deployment(namespace)
    protected["metadata"]["labels"]["resourcetemplate.karmada.io/deletion-protected"] = "Always"
    pipeline.apply(protected)
    refused = pipeline.cli("delete", "deployment", "web", "-n", namespace)
    assert refused.returncode == 1
    assert "FAILED_PRECONDITION" in refused.stderr and "deletion-protected" in refused.stderr
    assert pipeline.cli("get", "deployment", "web", "-n", namespace).returncode == 0
    del protected["metadata"]["labels"]["resourcetemplate.karmada.io/deletion-protected"]
    pipeline.apply(protected)
    assert pipeline.cli("delete", "deployment", "web", "-n", namespace).returncode == 0


def test_member_outage_goes_not_ready_and_work_lands_after(
    pipeline: Pipeline, namespace: str
) -> None:
    member = pipeline.fleet["member3"]
    member.stop_apiserver()
    try:
        wait_for("member3 NotReady", lambda: pipeline.ready("member3") == "False", timeout=30)
        pipeline.apply(deployment(namespace), policy(namespace, cluster_names=["member3"]))
    finally:
        member.start_apiserver()
    wait_for("member3 Ready again", lambda: pipeline.ready("member3") == "True", timeout=30)
    wait_for(
        "the work applied after the outage",
        lambda: placed(pipeline, namespace) == {"member3"},
        timeout=60,
    )


def test_an_object_deleted_while_the_agents_watch_was_down_is_restored(
    pipeline: Pipeline, namespace: str
) -> None:
    # With the member's API server down, the agent's watch breaks; the ConfigMap is
    # then deleted behind the API server's back (in its etcd). When the API server
    # returns, the agent lists again: before, it only saw what was there, and the
    # deletion, never reported as DELETED, was never repaired.
    member = pipeline.fleet["member3"]
    settings = configmap(namespace, "settings", {"level": "debug"})
    pipeline.apply(
        settings,
        policy(namespace, "cm", cluster_names=["member3"], kind="ConfigMap", api_version="v1"),
    )
    core = pipeline.core("member3")

    def present() -> bool:
        try:
            return bool(core.read_namespaced_config_map("settings", namespace).data)
        except ApiException:
            return False

    wait_for("the ConfigMap in member3", present)
    member.stop_apiserver()
    try:
        assert pipeline.fleet.etcd is not None
        key = f"{member.etcd_prefix}/configmaps/{namespace}/settings"
        deleted = asyncio.run(_delete_etcd_key(pipeline.fleet.etcd.endpoint, key))
        assert deleted == 1
    finally:
        member.start_apiserver()
    wait_for("the ConfigMap restored in member3", present, timeout=90)


async def _delete_etcd_key(endpoint: str, key: str) -> int:
    client = etcd3aio.Etcd3Client([endpoint.removeprefix("http://")])
    await client.connect()
    try:
        assert client.kv is not None
        response = await client.kv.delete(key.encode())
        return int(response.deleted)
    finally:
        await client.close()


def test_silent_agent_makes_the_cluster_unknown(pipeline: Pipeline) -> None:
    pipeline.agents["member2"].kill()
    wait_for("member2 Unknown", lambda: pipeline.ready("member2") == "Unknown", timeout=30)
    taints = [t["key"] for t in pipeline.cluster("member2")["spec"].get("taints", [])]
    assert "cluster.archipel.io/unreachable" in taints
    pipeline.start_agent(pipeline.fleet["member2"])
    wait_for("member2 Ready", lambda: pipeline.ready("member2") == "True", timeout=30)
    wait_for(
        "the taint to go",
        lambda: not pipeline.cluster("member2")["spec"].get("taints"),
        timeout=30,
    )


def test_removing_a_cluster_removes_its_works(pipeline: Pipeline, namespace: str) -> None:
    pipeline.apply(deployment(namespace), policy(namespace, cluster_names=["member3"]))
    wait_for("placement", lambda: placed(pipeline, namespace) == {"member3"})
    removed = pipeline.cli("delete", "membercluster", "member3")
    assert removed.returncode == 0, removed.stderr

    def works_of_member3() -> list[str]:
        listed = json.loads(
            pipeline.cli("get", "works", "-A", "-o", "json").stdout or '{"items": []}'
        )
        items = listed.get("items", [listed] if "metadata" in listed else [])
        return [
            w["metadata"]["name"]
            for w in items
            if w["metadata"]["namespace"] == "archipel-es-member3"
        ]

    wait_for("member3's works to go", lambda: not works_of_member3() and "gone")
    gone = pipeline.cli("get", "membercluster", "member3")
    assert gone.returncode == 1 and "NOT_FOUND" in gone.stderr
