"""The agent as it runs in a member: from the image, as the chart's ServiceAccount.

The agent's manifests from ``archipel join --print-manifests`` (the chart's agent
objects, which tests/members/test_chart.py checks they equal) are applied to a real
member; a token for its ServiceAccount
comes from the TokenRequest API; the agent runs from the image with the token, the CA
and its namespace at the standard service-account paths and KUBERNETES_SERVICE_HOST
and _PORT set, so it uses in-cluster configuration, not a kubeconfig. A workload
propagated through it proves that in-cluster configuration works and that the chart's
RBAC is enough.
"""

from __future__ import annotations

import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client
from kubernetes.client.exceptions import ApiException
from kubernetes.dynamic import DynamicClient

from archipel.client import message_to_document
from archipel.core import kinds
from archipel.core.names import LEDGER_LABEL
from archipel.fleet import image
from archipel.fleet.controlplane import ControlPlaneProcess
from archipel.fleet.members import Fleet, Member
from tests.e2e.conftest import own_control_plane, serves, wait_for, widget_crd

pytestmark = pytest.mark.members(count=1, profile="api", isolated=True)

SA_PATH = "/var/run/secrets/kubernetes.io/serviceaccount"
TIMEOUT = 120.0


def apply_all(member: Member, documents: list[dict[str, Any]]) -> None:
    dynamic = DynamicClient(member.api_client())
    for document in documents:
        resource = dynamic.resources.get(api_version=document["apiVersion"], kind=document["kind"])
        resource.create(body=document, namespace=document["metadata"].get("namespace"))


@pytest.fixture
def plane(members: Fleet, tmp_path: Path) -> Iterator[ControlPlaneProcess]:
    yield from own_control_plane(members, tmp_path / "cp", "in-cluster")


def test_the_agent_runs_from_the_image_as_the_charts_service_account(
    members: Fleet, plane: ControlPlaneProcess, tmp_path: Path
) -> None:
    member = next(iter(members))
    namespace = "archipel-agent"
    core = client.CoreV1Api(member.api_client())
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=namespace)))
    # The join flow an operator follows: `archipel join NAME --print-manifests`, then
    # everything it prints but the DaemonSet (which this test stands in for) applied.
    config = tmp_path / "archipel.yaml"
    plane.write_cli_config(config)
    joined = subprocess.run(
        [
            sys.executable,
            "-m",
            "archipel.cli.main",
            "--config",
            str(config),
            "join",
            member.name,
            "--print-manifests",
            f"--server={plane.address}",
            f"--namespace={namespace}",
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert joined.returncode == 0, joined.stderr
    objects = [doc for doc in yaml.safe_load_all(joined.stdout) if doc]
    (secret,) = [o for o in objects if o["kind"] == "Secret"]
    token = secret["stringData"]["token"]
    assert token.startswith(f"{member.name}.")
    (daemon_set,) = [o for o in objects if o["kind"] == "DaemonSet"]
    args = daemon_set["spec"]["template"]["spec"]["containers"][0]["args"]
    assert f"--server={plane.address}" in args
    apply_all(member, [o for o in objects if o["kind"] not in ("DaemonSet", "Namespace")])
    requested = core.create_namespaced_service_account_token(
        "archipel-agent",
        namespace,
        client.AuthenticationV1TokenRequest(
            spec=client.V1TokenRequestSpec(audiences=[], expiration_seconds=3600)
        ),
    )
    account = tmp_path / "serviceaccount"
    account.mkdir()
    (account / "token").write_text(str(requested.status.token))
    (account / "ca.crt").write_bytes(member.ca_cert.read_bytes())
    (account / "namespace").write_text(namespace)
    # The documented flow: a bootstrap token bound to the member; the agent registers,
    # keeps its certificate in a Secret of its namespace (the Role must allow it), and
    # streams over mutual TLS. The join token above stays unused.
    api = plane.client()
    bootstrap_token = api.create_token(ttl_seconds=600, cluster=member.name).token
    api.close()
    credential = tmp_path / "credential"
    credential.mkdir()
    (credential / "token").write_text(bootstrap_token)
    ca = tmp_path / "ca"
    ca.mkdir()
    assert plane.ca_file is not None
    (ca / "ca.crt").write_bytes(plane.ca_file.read_bytes())
    (configmap,) = [o for o in objects if o["kind"] == "ConfigMap"]
    assert configmap["data"]["ca.crt"] == plane.ca_file.read_text()
    for path in (account, credential, ca):
        path.chmod(0o755)
        for item in path.iterdir():
            item.chmod(0o644)  # the image's user (10001) reads them, as a Secret mount
    host, port = member.server.removeprefix("https://").rsplit(":", 1)
    agent = image.ImageProcess(
        "agent-from-image",
        [
            "archipel-agent",
            f"--server={plane.address}",
            f"--agent-server={plane.agent_address}",
            f"--cluster={member.name}",
            "--bootstrap-token-file=/etc/archipel/credential/token",
            "--tls-ca-file=/etc/archipel/ca/ca.crt",
            f"--namespace={namespace}",
            # As the DaemonSet runs it: the Role must let it hold its Lease.
            "--leader-elect=true",
        ],
        log_path=tmp_path / "agent.log",
        mounts={account: SA_PATH, credential: "/etc/archipel/credential", ca: "/etc/archipel/ca"},
        env={"KUBERNETES_SERVICE_HOST": host, "KUBERNETES_SERVICE_PORT": port},
    )
    agent.start()
    try:
        api = plane.client()
        try:
            app = f"app-{uuid.uuid4().hex[:6]}"
            api.apply_document({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": app}})
            api.apply_document(
                {
                    "apiVersion": "apps/v1",
                    "kind": "Deployment",
                    "metadata": {"name": "web", "namespace": app},
                    "spec": {
                        "replicas": 2,
                        "selector": {"matchLabels": {"app": "web"}},
                        "template": {
                            "metadata": {"labels": {"app": "web"}},
                            "spec": {"containers": [{"name": "web", "image": "nginx:1.27"}]},
                        },
                    },
                }
            )
            api.apply_document(
                {
                    "apiVersion": "policy.karmada.io/v1alpha1",
                    "kind": "ClusterPropagationPolicy",
                    "metadata": {"name": app},
                    "spec": {
                        "resourceSelectors": [
                            {"apiVersion": "v1", "kind": "Namespace", "name": app},
                            {"apiVersion": "apps/v1", "kind": "Deployment", "namespace": app},
                        ],
                        "placement": {"clusterAffinity": {"clusterNames": [member.name]}},
                    },
                }
            )
        finally:
            api.close()
        apps = client.AppsV1Api(member.api_client())

        def deployed() -> Any:
            try:
                return apps.read_namespaced_deployment("web", app)
            except ApiException as error:
                if error.status == 404:
                    return None
                raise

        found = wait_for(
            f"the Deployment in the member\n{agent.process.log_tail()}", deployed, timeout=TIMEOUT
        )
        assert found.spec.replicas == 2
        # The ledger is where the chart's Role lets the agent write: its own namespace. The
        # agent records it after the apply, so it may lag the Deployment.
        wait_for(
            f"the agent's ledger in {namespace}\n{agent.process.log_tail()}",
            lambda: (
                core.list_namespaced_config_map(
                    namespace, label_selector=f"{LEDGER_LABEL}=true"
                ).items
            ),
            timeout=TIMEOUT,
        )
        # It leads through its Lease there, as each agent of the DaemonSet would try to.
        lease = client.CoordinationV1Api(member.api_client()).read_namespaced_lease(
            f"archipel-agent-{member.name}", namespace
        )
        assert lease.spec.holder_identity
        # Its identity is in its namespace too, written as the chart's ServiceAccount.
        identity = core.read_namespaced_secret("archipel-agent-identity", namespace)
        assert identity.type == "kubernetes.io/tls"
        assert f"connected to {plane.agent_address}" in agent.process.log_path.read_text()
        # The chart's RBAC lets the agent watch the member's CRDs: one deleted there
        # leaves the cluster's apiEnablements within a few heartbeats (1 s here), where
        # discovery's every-tenth-heartbeat safety net alone would take up to 10 s.
        group = f"{app}.example.com"
        crd = widget_crd(group)
        extensions = client.ApiextensionsV1Api(member.api_client())
        extensions.create_custom_resource_definition(crd)  # type: ignore[arg-type]

        def listed() -> bool:
            api = plane.client()
            try:
                cluster = message_to_document(api.get_object(kinds.MEMBER_CLUSTER, member.name))
            finally:
                api.close()
            return serves(cluster, f"{group}/v1", "Widget")

        wait_for(f"the Widget API listed\n{agent.process.log_tail()}", listed, timeout=TIMEOUT)
        extensions.delete_custom_resource_definition(crd["metadata"]["name"])
        wait_for(
            f"the Widget API gone within 5 s\n{agent.process.log_tail()}",
            lambda: not listed(),
            timeout=5,
        )
        log = (tmp_path / "agent.log").read_text()
        assert "kubeconfig" not in log.lower()
        assert agent.process.running
    finally:
        agent.stop()
