"""The whole pipeline on real parts: etcd, full member clusters, the control plane and
one agent per member, each a real process that tests may stop, kill or restart."""

from __future__ import annotations

import dataclasses
import functools
import json
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
from kubernetes import client as k8s
from kubernetes.client.exceptions import ApiException

from archipel import structs
from archipel.client import Client, message_to_document
from archipel.core import kinds
from archipel.fleet.controlplane import AgentProcess, ControlPlaneProcess
from archipel.fleet.members import Fleet, Member

T = TypeVar("T")
# member1 and member3 are "gold", member2 "silver": label-selector placement picks 2 of 3.
TIERS = {"member1": "gold", "member2": "silver", "member3": "gold"}


def wait_for(what: str, check: Callable[[], T | None], *, timeout: float = 60.0) -> T:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(0.2)


@dataclasses.dataclass
class Pipeline:
    fleet: Fleet
    plane: ControlPlaneProcess
    agents: dict[str, AgentProcess]
    directory: Path

    def client(self) -> Client:
        return self.plane.client()

    def apply(self, *documents: dict[str, Any]) -> None:
        api = self.client()
        try:
            for document in documents:
                api.apply_document(document)
        finally:
            api.close()

    def cli(self, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        config = self.directory / "archipel.yaml"
        if not config.exists():
            self.plane.write_cli_config(config)
        return subprocess.run(
            [sys.executable, "-m", "archipel.cli.main", "--config", str(config), *args],
            input=stdin,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )

    def apps(self, member: str) -> k8s.AppsV1Api:
        return k8s.AppsV1Api(self.fleet[member].api_client())

    def core(self, member: str) -> k8s.CoreV1Api:
        return k8s.CoreV1Api(self.fleet[member].api_client())

    def deployment(self, member: str, namespace: str, name: str) -> k8s.V1Deployment | None:
        try:
            return self.apps(member).read_namespaced_deployment(name, namespace)
        except ApiException as error:
            if error.status == 404:
                return None
            raise

    def template(self, api_version: str, kind: str, namespace: str, name: str) -> dict[str, Any]:
        """A resource template as the control plane holds it, status included."""
        api = self.client()
        try:
            found = api.get_template(api_version, kind, name, namespace)
        finally:
            api.close()
        manifest: dict[str, Any] = structs.from_struct(found.manifest)
        return manifest

    def cluster(self, name: str) -> dict[str, Any]:
        api = self.client()
        try:
            return message_to_document(api.get_object(kinds.MEMBER_CLUSTER, name))
        finally:
            api.close()

    def ready(self, name: str) -> str:
        for condition in self.cluster(name).get("status", {}).get("conditions", []):
            if condition["type"] == "Ready":
                return str(condition["status"])
        return "Unknown"

    def metric(self, name: str) -> float:
        url = f"http://127.0.0.1:{self.plane.metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=5) as response:
            text = response.read().decode()
        total = 0.0
        for line in text.splitlines():
            if line.startswith(name) and not line.startswith("#"):
                total += float(line.rsplit(" ", 1)[1])
        return total

    def start_agent(self, member: Member) -> AgentProcess:
        token = self.directory / "agents" / f"{member.name}.token"
        agent = AgentProcess(
            control_plane=self.plane, member=member, token_file=token, heartbeat_interval=1
        )
        agent.start()
        self.agents[member.name] = agent
        return agent


def _is_ready(pipeline: Pipeline, name: str) -> bool:
    return pipeline.ready(name) == "True"


# Quick damping, so outages show within seconds; the failover grace keeps its default
# (60 s), so no test here evicts unless it asks for shorter timings.
QUICK_HEALTH = ("--cluster-failure-threshold=2", "--cluster-success-threshold=2")


@pytest.fixture(scope="module")
def pipeline(members: Fleet, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pipeline]:
    yield from start_pipeline(members, tmp_path_factory.mktemp("pipeline"), QUICK_HEALTH)


def start_pipeline(
    members: Fleet, directory: Path, extra_args: tuple[str, ...]
) -> Iterator[Pipeline]:
    """A control plane of its own on the fleet's etcd, every member joined with an agent
    and Ready; stopped after."""
    assert members.etcd is not None
    plane = ControlPlaneProcess(
        etcd_endpoint=members.etcd.endpoint,
        etcd_prefix=f"/archipel-{uuid.uuid4().hex[:8]}/",
        directory=directory,
        heartbeat_interval=1,
        cluster_grace_period=4,
        extra_args=extra_args,
    )
    plane.start()
    result = Pipeline(fleet=members, plane=plane, agents={}, directory=directory)
    for member in members:
        plane.join(member, labels={"tier": TIERS.get(member.name, "none")})
        result.start_agent(member)
    for member in members:
        wait_for(f"{member.name} Ready", functools.partial(_is_ready, result, member.name))
    yield result
    for agent in result.agents.values():
        agent.stop()
    plane.stop()


def own_control_plane(members: Fleet, directory: Path, name: str) -> Iterator[ControlPlaneProcess]:
    """A control plane of its own on the fleet's etcd, under a prefix of its own, with
    quick heartbeats and no member joined; stopped after."""
    assert members.etcd is not None
    started = ControlPlaneProcess(
        etcd_endpoint=members.etcd.endpoint,
        etcd_prefix=f"/{name}-{uuid.uuid4().hex[:8]}/",
        directory=directory,
        heartbeat_interval=1,
        cluster_grace_period=4,
    )
    started.start()
    yield started
    started.stop()


@pytest.fixture
def namespace() -> str:
    return f"e2e-{uuid.uuid4().hex[:6]}"


def deployment(
    namespace: str, name: str = "web", *, image: str = "nginx:1.27", replicas: int = 1
) -> dict[str, Any]:
    labels = {"app": name}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "namespace": namespace, "labels": labels},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": labels},
            "template": {
                "metadata": {"labels": labels},
                "spec": {"containers": [{"name": name, "image": image}]},
            },
        },
    }


def policy(
    namespace: str,
    name: str = "web",
    *,
    cluster_names: list[str] | None = None,
    label_selector: dict[str, str] | None = None,
    kind: str = "Deployment",
    api_version: str = "apps/v1",
) -> dict[str, Any]:
    affinity: dict[str, Any] = {}
    if cluster_names is not None:
        affinity["clusterNames"] = cluster_names
    if label_selector is not None:
        affinity["labelSelector"] = {"matchLabels": label_selector}
    return {
        "apiVersion": "policy.karmada.io/v1alpha1",
        "kind": "PropagationPolicy",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "resourceSelectors": [{"apiVersion": api_version, "kind": kind}],
            "placement": {"clusterAffinity": affinity},
        },
    }


def widget_crd(group: str, *, status_subresource: bool = False) -> dict[str, Any]:
    """A namespaced Widget kind in ``group``, any fields allowed."""
    version: dict[str, Any] = {
        "name": "v1",
        "served": True,
        "storage": True,
        "schema": {
            "openAPIV3Schema": {"type": "object", "x-kubernetes-preserve-unknown-fields": True}
        },
    }
    if status_subresource:
        version["subresources"] = {"status": {}}
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"widgets.{group}"},
        "spec": {
            "group": group,
            "names": {"kind": "Widget", "plural": "widgets", "singular": "widget"},
            "scope": "Namespaced",
            "versions": [version],
        },
    }


def crd_cluster_policy(name: str, cluster_names: list[str]) -> dict[str, Any]:
    """A ClusterPropagationPolicy sending every CustomResourceDefinition to these clusters."""
    return {
        "apiVersion": "policy.karmada.io/v1alpha1",
        "kind": "ClusterPropagationPolicy",
        "metadata": {"name": name},
        "spec": {
            "resourceSelectors": [
                {"apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition"}
            ],
            "placement": {"clusterAffinity": {"clusterNames": cluster_names}},
        },
    }


def configmap(namespace: str, name: str, data: dict[str, str]) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": name, "namespace": namespace},
        "data": data,
    }


def override_policy(
    name: str,
    rules: list[dict[str, Any]],
    *,
    namespace: str | None = None,
    selectors: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """An OverridePolicy in ``namespace``, or a ClusterOverridePolicy when it is None."""
    metadata: dict[str, Any] = {"name": name}
    if namespace is not None:
        metadata["namespace"] = namespace
    spec: dict[str, Any] = {"overrideRules": rules}
    if selectors is not None:
        spec["resourceSelectors"] = selectors
    return {
        "apiVersion": "policy.karmada.io/v1alpha1",
        "kind": "OverridePolicy" if namespace is not None else "ClusterOverridePolicy",
        "metadata": metadata,
        "spec": spec,
    }


def serves(cluster: dict[str, Any], group_version: str, kind: str) -> bool:
    """Whether a MemberCluster document lists ``kind`` in ``group_version`` among the
    APIs its member serves (``status.apiEnablements``, from the agent's discovery)."""
    return any(
        enablement.get("groupVersion") == group_version
        and any(resource.get("kind") == kind for resource in enablement.get("resources", []))
        for enablement in cluster.get("status", {}).get("apiEnablements", [])
    )


def works_of(pipeline: Pipeline, namespace: str, binding: str) -> dict[str, dict[str, Any]]:
    """The works of a binding, by cluster."""
    listed = pipeline.cli(
        "get", "works", "-A", "-l", f"work.archipel.io/binding-name={binding}", "-o", "json"
    )
    body = json.loads(listed.stdout or '{"items": []}')
    items = body.get("items", [body] if "metadata" in body else [])
    return {
        w["metadata"]["labels"]["work.archipel.io/cluster"]: w
        for w in items
        if w["metadata"]["labels"].get("work.archipel.io/binding-namespace", "") == namespace
    }


def drift_and_wait_for_restore(
    pipeline: Pipeline, member: str, namespace: str, name: str = "web", *, timeout: float = 90.0
) -> None:
    """A barrier behind a member's agent: edit the ``app`` label of a Deployment the agent
    applied, then wait until the agent has put it back (or the Deployment is gone).

    The drift event is queued in the agent under the work that holds the Deployment, the
    same key as anything the control plane sent about that work, and one key is handled
    one pass after another: once the label is back, every earlier pass for that work
    (an apply, a delete, a wrongful correction) is over.
    """
    found = pipeline.deployment(member, namespace, name)
    if found is None:
        return  # already gone: the caller's own assertions say what that means
    label = (found.metadata.labels or {})["app"]
    pipeline.apps(member).patch_namespaced_deployment(
        name, namespace, {"metadata": {"labels": {"app": f"{label}-drifted"}}}
    )

    def restored() -> bool:
        current = pipeline.deployment(member, namespace, name)
        return current is None or (current.metadata.labels or {}).get("app") == label

    wait_for(f"{member}'s agent to restore {namespace}/{name}", restored, timeout=timeout)
