"""ClusterTaintPolicy on a real control plane: Karmada's YAML applied unchanged with
``archipel apply -f``, listed with ``archipel get``, and acted on by the cluster
controller: a cluster whose Ready condition goes False gets the policy's taint (a
NoExecute one, counted as an eviction), and loses it once Ready is True again.

The control plane runs with ``--no-default-failover-taints``: the policy, not the
built-in rule, decides which clusters are evicted. Agents are spoken by hand (see
test_failover.py); every step is waited for with a deadline.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import yaml

from archipel.cli.main import main
from archipel.core import names
from archipel.core.conditions import find
from archipel.fleet.controlplane import ControlPlaneProcess
from archipel.fleet.etcd import EtcdServer
from archipel.v1alpha1 import cluster_pb2
from tests.integration.agents import Api, eventually
from tests.integration.test_failover import Agents, metric, metric_is

pytestmark = pytest.mark.servers

UNHEALTHY = "failover.example.com/unhealthy"

# As Karmada's documentation writes a failover policy, for one of the two clusters.
POLICY = f"""
apiVersion: policy.karmada.io/v1alpha1
kind: ClusterTaintPolicy
metadata:
  name: automatic-cluster-failover
spec:
  targetClusters:
    clusterNames:
      - east
  addOnConditions:
    - conditionType: Ready
      operator: NotIn
      statusValues:
        - "True"
  removeOnConditions:
    - conditionType: Ready
      operator: In
      statusValues:
        - "True"
  taints:
    - key: {UNHEALTHY}
      effect: NoExecute
"""

BAD_POLICY = """
apiVersion: policy.karmada.io/v1alpha1
kind: ClusterTaintPolicy
metadata:
  name: bad
spec:
  addOnConditions:
    - conditionType: Ready
      operator: Exists
      statusValues: ["True"]
  taints:
    - key: k
      effect: NoSchedule
"""


@pytest.fixture
def plane(etcd_server: EtcdServer, tmp_path: Path) -> Iterator[ControlPlaneProcess]:
    """Failover in seconds, and no built-in NoExecute taints."""
    process = ControlPlaneProcess(
        etcd_endpoint=etcd_server.endpoint,
        etcd_prefix=f"/taint-policy-{uuid.uuid4().hex[:8]}/",
        directory=tmp_path / "cp",
        extra_args=[
            "--cluster-failure-threshold=1",
            "--cluster-success-threshold=1",
            "--failover-grace-period=1",
            "--eviction-interval=1",
            "--no-default-failover-taints",
        ],
    )
    process.start()
    yield process
    process.stop()


@pytest.fixture
async def agents(plane: ControlPlaneProcess) -> AsyncIterator[Agents]:
    api = Api(plane)
    result = Agents(api)
    yield result
    await result.close()
    await api.close()


async def archipel(
    plane: ControlPlaneProcess,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    *args: str,
) -> tuple[int, str, str]:
    config = tmp_path / "archipel.yaml"
    plane.write_cli_config(config)
    capsys.readouterr()
    # In a thread: the agents keep beating meanwhile.
    code = await asyncio.to_thread(main, ["--config", str(config), *args])
    out, err = capsys.readouterr()
    return code, out, err


def taints(cluster: cluster_pb2.MemberCluster) -> list[tuple[str, str]]:
    return [(t.key, t.effect) for t in cluster.spec.taints]


async def test_a_policy_taints_a_failing_cluster_and_untaints_it_once_ready(
    plane: ControlPlaneProcess,
    agents: Agents,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    await agents.start("east")
    await agents.start("west")
    for name in ("east", "west"):
        await agents.wait(name, ready="True", no_execute=False)

    (tmp_path / "policy.yaml").write_text(POLICY)
    code, out, err = await archipel(
        plane, tmp_path, capsys, "apply", "-f", str(tmp_path / "policy.yaml")
    )
    assert code == 0, err
    assert "automatic-cluster-failover" in out
    code, out, err = await archipel(plane, tmp_path, capsys, "get", "ctp")
    assert code == 0, err
    assert "automatic-cluster-failover" in out
    code, out, err = await archipel(
        plane,
        tmp_path,
        capsys,
        "get",
        "clustertaintpolicies",
        "automatic-cluster-failover",
        "-o",
        "yaml",
    )
    assert code == 0, err
    assert yaml.safe_load(out)["spec"] == yaml.safe_load(POLICY)["spec"]

    # Karmada's validation, with the field named.
    (tmp_path / "bad.yaml").write_text(BAD_POLICY)
    code, out, err = await archipel(
        plane, tmp_path, capsys, "apply", "-f", str(tmp_path / "bad.yaml")
    )
    assert code != 0
    assert "spec.addOnConditions[0].operator" in err

    # east fails: Ready False, and with it the policy's NoExecute taint (no built-in
    # one: the flag turns those off; the NoSchedule taint stays).
    agents.healthy["east"] = False
    east = await agents.wait("east", ready="False", failover="Evicting", no_execute=True)
    assert taints(east) == [(names.NOT_READY_TAINT, "NoSchedule"), (UNHEALTHY, "NoExecute")]
    failover = find(east.status.conditions, "Failover")
    assert failover is not None
    assert "ClusterTaintPolicy automatic-cluster-failover" in failover.message
    await metric_is(plane, 1, "archipel_cluster_evictions_total", {"reason": "ClusterTaintPolicy"})

    # Ready again: removeOnConditions match, and the taint goes.
    agents.healthy["east"] = True
    east = await agents.wait("east", ready="True", failover="ClusterReady", no_execute=False)
    assert taints(east) == []
    assert metric(plane, "archipel_cluster_evictions_total", {"reason": "ClusterTaintPolicy"}) == 1
    assert metric(plane, "archipel_cluster_evictions_total", {"reason": "NotReady"}) == 0

    # A new policy is applied to the clusters it targets at once: west, healthy, gets
    # a NoSchedule taint while its Ready condition is True.
    healthy_policy = yaml.safe_load(POLICY)
    healthy_policy["metadata"]["name"] = "mark-healthy"
    healthy_policy["spec"] = {
        "targetClusters": {"clusterNames": ["west"]},
        "addOnConditions": [{"conditionType": "Ready", "operator": "In", "statusValues": ["True"]}],
        "taints": [{"key": "healthy", "effect": "NoSchedule"}],
    }
    (tmp_path / "healthy.yaml").write_text(yaml.safe_dump(healthy_policy))
    code, out, err = await archipel(
        plane, tmp_path, capsys, "apply", "-f", str(tmp_path / "healthy.yaml")
    )
    assert code == 0, err

    async def marked() -> bool:
        return taints(await agents.get("west")) == [("healthy", "NoSchedule")]

    await eventually("west tainted healthy:NoSchedule", marked, seconds=30)
