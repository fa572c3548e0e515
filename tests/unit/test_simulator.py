"""``archipel schedule --simulate``: the scheduler offline, as a black box."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from archipel.cli.main import main

CLUSTERS = """
- name: member1
  labels: {tier: gold}
  region: eu
  availableReplicas: 18
- name: member2
  labels: {tier: gold}
  region: us
  availableReplicas: 12
- name: member3
  labels: {tier: gold}
  region: us
  availableReplicas: 6
  apiResources: [v1/ConfigMap]
- name: member4
  labels: {tier: silver}
  taints: [{key: dedicated, value: ml, effect: NoSchedule}]
  availableReplicas: 100
"""

TEMPLATE = """
apiVersion: apps/v1
kind: Deployment
metadata: {{name: web, namespace: shop}}
spec:
  replicas: {replicas}
  selector: {{matchLabels: {{app: web}}}}
  template:
    metadata: {{labels: {{app: web}}}}
    spec:
      containers: [{{name: web, image: nginx}}]
"""

POLICY = """
apiVersion: policy.karmada.io/v1alpha1
kind: PropagationPolicy
metadata: {name: web, namespace: shop}
spec:
  resourceSelectors: [{apiVersion: apps/v1, kind: Deployment}]
  placement:
    replicaScheduling:
      replicaSchedulingType: Divided
      replicaDivisionPreference: Weighted
      weightPreference: {dynamicWeight: AvailableReplicas}
"""


def run(tmp_path: Path, capsys: pytest.CaptureFixture[str], replicas: int, *extra: str) -> dict:  # type: ignore[type-arg]
    (tmp_path / "clusters.yaml").write_text(CLUSTERS)
    (tmp_path / "template.yaml").write_text(TEMPLATE.format(replicas=replicas))
    (tmp_path / "policy.yaml").write_text(POLICY)
    code = main(
        [
            "schedule",
            "--simulate",
            "--clusters",
            str(tmp_path / "clusters.yaml"),
            "-f",
            str(tmp_path / "template.yaml"),
            "-f",
            str(tmp_path / "policy.yaml"),
            "-o",
            "json",
            *extra,
        ]
    )
    out = capsys.readouterr().out
    assert code == 0
    result: dict = json.loads(out)["results"][0]  # type: ignore[type-arg]
    return result


def test_dynamic_division_and_filters(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    result = run(tmp_path, capsys, 12)
    assert result["scheduled"]
    assert result["policy"] == "PropagationPolicy/web"
    # member3 does not serve Deployments; member4's taint is not tolerated.
    assert {c["name"]: c["replicas"] for c in result["clusters"]} == {"member1": 7, "member2": 5}
    assert result["rejected"]["member3"] == "does not serve Deployment in apps/v1"
    assert "not tolerated" in result["rejected"]["member4"]


def test_steady_scaling_from_a_previous_result(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    first = run(tmp_path, capsys, 12)
    (tmp_path / "previous.json").write_text(json.dumps({"results": [first]}))
    scaled = run(tmp_path, capsys, 14, "--previous", str(tmp_path / "previous.json"))
    before = {c["name"]: c["replicas"] for c in first["clusters"]}
    after = {c["name"]: c["replicas"] for c in scaled["clusters"]}
    assert sum(after.values()) == 14
    assert all(after[name] >= count for name, count in before.items())


def test_too_many_replicas_are_unschedulable(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    result = run(tmp_path, capsys, 31)
    assert not result["scheduled"]
    assert result["reason"] == "Unschedulable"
    assert "room for 30" in result["message"]


def test_bad_clusters_file_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "clusters.yaml").write_text("- labels: {a: b}\n")
    (tmp_path / "policy.yaml").write_text(POLICY)
    code = main(
        [
            "schedule",
            "--simulate",
            "--clusters",
            str(tmp_path / "clusters.yaml"),
            "-f",
            str(tmp_path / "policy.yaml"),
        ]
    )
    assert code == 1
    assert "each cluster needs a name" in capsys.readouterr().err


def test_render_shows_the_manifest_one_cluster_gets(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "clusters.yaml").write_text(CLUSTERS)
    (tmp_path / "template.yaml").write_text(TEMPLATE.format(replicas=3))
    (tmp_path / "override.yaml").write_text(
        """
apiVersion: policy.karmada.io/v1alpha1
kind: ClusterOverridePolicy
metadata: {name: gold}
spec:
  resourceSelectors: [{apiVersion: apps/v1, kind: Deployment}]
  overrideRules:
    - targetCluster: {labelSelector: {matchLabels: {tier: gold}}}
      overriders:
        imageOverrider: [{component: Tag, operator: replace, value: "1.28"}]
"""
    )

    def render(cluster: str) -> dict:  # type: ignore[type-arg]
        code = main(
            [
                "render",
                "-f",
                str(tmp_path / "template.yaml"),
                "-f",
                str(tmp_path / "override.yaml"),
                "--clusters",
                str(tmp_path / "clusters.yaml"),
                "--cluster",
                cluster,
                "-o",
                "json",
            ]
        )
        assert code == 0
        result: dict = json.loads(capsys.readouterr().out)  # type: ignore[type-arg]
        return result

    assert render("member1")["spec"]["template"]["spec"]["containers"][0]["image"] == "nginx:1.28"
    assert render("member4")["spec"]["template"]["spec"]["containers"][0]["image"] == "nginx"
