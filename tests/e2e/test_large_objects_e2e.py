"""Large templates end to end: the agent's ledger keeps hashes, not contents.

A template near the largest Archipel accepts must be applied, reported Applied, kept
across agent restarts without being applied again, and repaired when edited in the
member. The ledger ConfigMap in the member's ``archipel-system`` stays small, and holds
none of the template's data.
"""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest
from kubernetes.client.exceptions import ApiException

from agent.kube import Kube
from archipel.core.names import LEDGER_LABEL, MANAGED_LABEL, WORK_ANNOTATION
from archipel.core.names import SYSTEM_NAMESPACE as NAMESPACE
from tests.e2e.conftest import Pipeline, configmap, policy, wait_for

pytestmark = pytest.mark.members(count=1, profile="api", isolated=True)
MEMBER = "member1"
# 92 keys of 10 KiB: about 0.9 MiB of data, under the 1 MiB Archipel accepts and a
# ConfigMap may hold, and far over what the old ledger (two copies) could store.
BIG_DATA = {f"key-{i:03d}": f"{i:03d}" + "x" * (10 * 1024 - 3) for i in range(92)}


def configmap_policy(namespace: str, name: str) -> dict[str, Any]:
    return policy(namespace, name, cluster_names=[MEMBER], kind="ConfigMap", api_version="v1")


def member_configmap(pipeline: Pipeline, namespace: str, name: str) -> Any:
    try:
        return pipeline.core(MEMBER).read_namespaced_config_map(name, namespace)
    except ApiException as error:
        if error.status == 404:
            return None
        raise


def work_of(pipeline: Pipeline, namespace: str) -> dict[str, Any] | None:
    """The one work built for a template of ``namespace``, for the member."""
    listed = pipeline.cli("get", "works", "-A", "-o", "json")
    body = json.loads(listed.stdout or '{"items": []}')
    for work in body.get("items", [body] if "metadata" in body else []):
        labels = work["metadata"].get("labels", {})
        if labels.get("work.archipel.io/binding-namespace") == namespace:
            found: dict[str, Any] = work
            return found
    return None


def applied(pipeline: Pipeline, namespace: str) -> str:
    """The work's name once it is reported Applied at its generation, else ''."""
    work = work_of(pipeline, namespace)
    if work is None:
        return ""
    for condition in work.get("status", {}).get("conditions", []):
        if condition["type"] == "Applied" and condition["status"] == "True":
            return str(work["metadata"]["name"])
    return ""


def ledger_of(pipeline: Pipeline, work: str) -> Any:
    listed = pipeline.core(MEMBER).list_namespaced_config_map(
        NAMESPACE, label_selector=f"{LEDGER_LABEL}=true"
    )
    found = [item for item in listed.items if (item.data or {}).get("work") == work]
    return found[0] if found else None


def restart_agent(pipeline: Pipeline) -> int:
    """Kill the member's agent and start a new one; where its log starts."""
    pipeline.agents[MEMBER].kill()
    wait_for(
        "the disconnect",
        lambda: not pipeline.cluster(MEMBER)["status"]["agent"].get("connected"),
    )
    agent = pipeline.agents[MEMBER]
    offset = agent.process.log_path.stat().st_size
    pipeline.start_agent(pipeline.fleet[MEMBER])
    wait_for("the reconnect", lambda: pipeline.cluster(MEMBER)["status"]["agent"].get("connected"))
    return offset


def checked(pipeline: Pipeline, offset: int, work: str) -> str:
    """The agent's line saying it checked ``work`` after the restart, once written."""
    with pipeline.agents[MEMBER].process.log_path.open("rb") as log:
        log.seek(offset)
        text = log.read().decode(errors="replace")
    lines = [line for line in text.splitlines() if f"work {work}: checked after a restart" in line]
    return lines[0] if lines else ""


def test_a_large_template_is_applied_kept_across_restarts_and_repaired(
    pipeline: Pipeline, namespace: str
) -> None:
    template = configmap(namespace, "big", BIG_DATA)
    assert 0.85 * 2**20 < len(json.dumps(template)) < 2**20
    pipeline.apply(template, configmap_policy(namespace, "big"))
    work = wait_for("the work to be reported Applied", lambda: applied(pipeline, namespace))
    live = member_configmap(pipeline, namespace, "big")
    assert live is not None and live.data == BIG_DATA

    # The ledger: identities and hashes, a few hundred bytes whatever the template.
    entry = ledger_of(pipeline, work)
    assert entry is not None
    recorded = json.dumps(entry.data)
    assert len(recorded) < 4096, recorded[:500]
    assert "x" * 64 not in recorded
    assert "key-000" not in recorded

    # A restarted agent holds hashes only: the control plane sends the work again,
    # and the agent compares the live object with them instead of applying it.
    before = live.metadata.resource_version
    offset = restart_agent(pipeline)
    line = wait_for("the agent to check the work", lambda: checked(pipeline, offset, work))
    assert "0 of 1 objects applied again" in line, line
    wait_for("the work Applied again", lambda: applied(pipeline, namespace))
    after = member_configmap(pipeline, namespace, "big")
    assert after.metadata.resource_version == before

    # Drift after the restart: the agent has the contents again, and restores them.
    pipeline.core(MEMBER).patch_namespaced_config_map(
        "big", namespace, {"data": {"key-007": "edited", "extra": "added"}}
    )

    def restored() -> bool:
        current = member_configmap(pipeline, namespace, "big")
        return current is not None and current.data.get("key-007") == BIG_DATA["key-007"]

    wait_for("the edit to be reverted", restored)
    entry = ledger_of(pipeline, work)
    assert len(json.dumps(entry.data)) < 4096


def test_changes_made_while_the_agent_was_down_are_repaired(
    pipeline: Pipeline, namespace: str
) -> None:
    pipeline.apply(configmap(namespace, "small", {"a": "1"}), configmap_policy(namespace, "small"))
    work = wait_for("the work to be reported Applied", lambda: applied(pipeline, namespace))
    pipeline.agents[MEMBER].kill()
    wait_for(
        "the disconnect",
        lambda: not pipeline.cluster(MEMBER)["status"]["agent"].get("connected"),
    )
    pipeline.core(MEMBER).patch_namespaced_config_map("small", namespace, {"data": {"a": "9"}})
    # Meanwhile, as if the member had run an older agent: its ledger held contents.
    write_old_ledger_entry(pipeline, work, ledger_of(pipeline, work))
    agent = pipeline.agents[MEMBER]
    offset = agent.process.log_path.stat().st_size
    pipeline.start_agent(pipeline.fleet[MEMBER])
    line = wait_for("the agent to check the work", lambda: checked(pipeline, offset, work))
    assert "1 of 1 objects applied again" in line, line
    current = member_configmap(pipeline, namespace, "small")
    assert current.data == {"a": "1"}
    # The old entry was read, and written again without its contents.
    entry = ledger_of(pipeline, work)
    assert set(entry.data) == {
        "work",
        "uid",
        "generation",
        "objects",
        "manifestHashes",
        "projectionHashes",
    }


def write_old_ledger_entry(pipeline: Pipeline, work: str, entry: Any) -> None:
    """Rewrite a ledger entry in the format of agents before hashes, as they wrote it."""
    [[_, _, namespace, name]] = json.loads(entry.data["objects"])
    manifest = configmap(namespace, name, {"a": "1"})
    manifest["metadata"]["labels"] = {MANAGED_LABEL: "true"}
    manifest["metadata"]["annotations"] = {WORK_ANNOTATION: work}
    body = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": entry.metadata.name,
            "namespace": NAMESPACE,
            "labels": {LEDGER_LABEL: "true"},
        },
        "data": {
            **{k: entry.data[k] for k in ("work", "uid", "generation", "objects")},
            "manifests": json.dumps([manifest]),
            "projections": json.dumps([{"data": {"a": "1"}}]),
        },
    }
    kube = Kube(pipeline.fleet[MEMBER].api_client())
    try:
        kube.store_config_map(body, exists=True)  # whole: no key of the new format is left
    finally:
        kube.close()
    assert "manifests" in ledger_of(pipeline, work).data


def test_a_propagated_secret_leaves_no_value_in_any_config_map(
    pipeline: Pipeline, namespace: str
) -> None:
    # The old ledger copied every manifest into ConfigMaps in archipel-system, so a
    # Secret's values could be read by anyone allowed to read ConfigMaps there.
    marker = "s3cr3t-value-that-must-not-leak"
    secret = {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": "credentials", "namespace": namespace},
        "stringData": {"password": marker},
    }
    pipeline.apply(
        secret,
        policy(namespace, "secrets", cluster_names=[MEMBER], kind="Secret", api_version="v1"),
    )
    name = wait_for("the Secret's work Applied", lambda: applied(pipeline, namespace))
    core = pipeline.core(MEMBER)
    found = core.read_namespaced_secret("credentials", namespace)
    assert found.data and "password" in found.data
    # Encrypted in the control plane's etcd (the launcher's default), the real value
    # in the member: decrypted on its way to the agent.
    assert base64.b64decode(found.data["password"]).decode() == marker
    assert ledger_of(pipeline, name) is not None  # the barrier: its entry is written
    encoded = base64.b64encode(marker.encode()).decode()
    for config_map in core.list_config_map_for_all_namespaces().items:
        text = json.dumps(config_map.data or {})
        assert marker not in text and encoded not in text, config_map.metadata.name
