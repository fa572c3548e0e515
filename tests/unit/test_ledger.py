"""The agent's ledger: identities and hashes in the member, contents in memory only.

A fake member API (:mod:`tests.unit.agentfakes`) stands in for kube-apiserver, so these
tests see exactly what the agent writes and how often it applies.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from agent.ledger import Entry, ObjectRef, config_map_data, digest, entry_of
from archipel import limits
from tests.unit.agentfakes import (
    SECRET,
    FakeKube,
    applied_once,
    configmap,
    manager,
    restarted,
    secret,
    work,
)

# -- the format --------------------------------------------------------------------------


async def test_the_ledger_holds_hashes_and_never_contents() -> None:
    kube = FakeKube()
    big = configmap("big", {f"k{i}": "v" * 10_000 for i in range(100)})
    await applied_once(kube, big, secret("db"))
    [stored] = kube.ledger_maps()
    text = json.dumps(stored["data"])
    assert SECRET not in text
    assert "v" * 100 not in text
    assert len(text) < 4096
    assert set(stored["data"]) == {
        "work",
        "uid",
        "generation",
        "objects",
        "manifestHashes",
        "projectionHashes",
    }
    entry = entry_of(stored["data"])
    assert entry.manifests is None and not entry.has_contents
    assert entry.objects == [
        ObjectRef("v1", "ConfigMap", "app", "big"),
        ObjectRef("v1", "Secret", "app", "db"),
    ]
    assert all(len(h) == 64 for h in entry.manifest_hashes + entry.projection_hashes)


def test_digest_ignores_key_order_and_tells_values_apart() -> None:
    assert digest({"a": 1, "b": [1, {"c": 2, "d": 3}]}) == digest(
        {"b": [1, {"d": 3, "c": 2}], "a": 1}
    )
    assert digest({"a": 1}) != digest({"a": 2})
    assert digest({"a": "1"}) != digest({"a": 1})


def test_an_old_entry_with_contents_loads_as_hashes() -> None:
    manifest = {**configmap("c", {"k": SECRET}), "metadata": {"name": "c"}}
    projection = {"data": {"k": SECRET}}
    old = {
        "work": "w1",
        "uid": "uid-w1",
        "generation": "3",
        "objects": json.dumps([["v1", "ConfigMap", "app", "c"]]),
        "manifests": json.dumps([manifest]),
        "projections": json.dumps([projection]),
    }
    entry = entry_of(old)
    assert (entry.work, entry.uid, entry.generation) == ("w1", "uid-w1", 3)
    assert entry.manifest_hashes == [digest(manifest)]
    assert entry.projection_hashes == [digest(projection)]
    assert entry.legacy and not entry.has_contents
    assert SECRET not in json.dumps(config_map_data(entry))


def test_hashes_that_do_not_match_the_objects_vouch_for_nothing() -> None:
    data = config_map_data(
        Entry("w1", "u", 1, [ObjectRef("v1", "ConfigMap", "a", "b")], ["h"], ["p", "q"])
    )
    assert entry_of(data).projection_hashes == [""]


@pytest.mark.parametrize("missing", ["work", "uid", "generation", "objects"])
def test_a_damaged_entry_is_refused(missing: str) -> None:
    data = config_map_data(Entry("w1", "u", 1, []))
    del data[missing]
    with pytest.raises(KeyError):
        entry_of(data)


async def test_an_old_entry_is_rewritten_without_contents() -> None:
    kube = FakeKube()
    cm = configmap("c", {"k": SECRET})
    works = await applied_once(kube, cm)
    [stored] = kube.ledger_maps()
    entry = works.ledger.entries["w1"]
    assert entry.manifests is not None and entry.projections is not None
    # Rewrite the member's ledger as the previous agent version left it.
    stored["data"] = {
        "work": "w1",
        "uid": "uid-w1",
        "generation": "1",
        "objects": stored["data"]["objects"],
        "manifests": json.dumps(entry.manifests),
        "projections": json.dumps(entry.projections),
    }
    works = restarted(kube)
    before = len(kube.applied_in("app"))
    works.receive(work(cm))
    await works.reconcile("w1")
    assert len(kube.applied_in("app")) == before  # the object was not applied again
    [stored] = kube.ledger_maps()
    assert "manifests" not in stored["data"] and SECRET not in json.dumps(stored["data"])


# -- after a restart ---------------------------------------------------------------------


async def test_a_restarted_agent_asks_for_its_works_again_and_applies_nothing() -> None:
    kube = FakeKube()
    cm = configmap("c", {"k": "v"})
    await applied_once(kube, cm, secret("db"))
    versions = {k: o["metadata"]["resourceVersion"] for k, o in kube.objects.items()}
    writes = len(kube.applied)
    works = restarted(kube)
    assert not works.ledger.entries["w1"].has_contents
    works.receive(work(cm, secret("db")))
    await works.reconcile("w1")
    assert len(kube.applied) == writes  # no object and no ledger write
    assert {k: o["metadata"]["resourceVersion"] for k, o in kube.objects.items()} == versions
    assert works.ledger.entries["w1"].has_contents
    assert works.corrections.get("w1", 0) == 0


async def test_the_hello_reports_works_without_contents_at_generation_zero() -> None:
    from agent.main import Agent

    kube = FakeKube()
    await applied_once(kube, configmap("c", {"k": "v"}))
    agent = Agent(server="x", token="t", cluster="m", kube=kube)  # type: ignore[arg-type]
    agent.ledger.entries = restarted(kube).ledger.entries
    assert [(w.name, w.uid, w.generation) for w in agent.hello().held_works] == [
        ("w1", "uid-w1", 0)
    ]
    # The agent's own WorkManager would start a watch thread: one on the same ledger.
    works, _ = manager(kube, agent.ledger)
    works.receive(work(configmap("c", {"k": "v"})))
    await works.reconcile("w1")
    assert [w.generation for w in agent.hello().held_works] == [1]


async def test_only_objects_changed_while_the_agent_was_down_are_applied() -> None:
    kube = FakeKube()
    cm, db = configmap("c", {"k": "v"}), secret("db")
    await applied_once(kube, cm, db)
    edited = kube.objects[("v1", "ConfigMap", "app", "c")]
    kube.put({**edited, "data": {"k": "edited"}})
    del kube.objects[("v1", "Secret", "app", "db")]
    works = restarted(kube)
    kube.applied.clear()
    works.receive(work(cm, db))
    await works.reconcile("w1")
    assert sorted(m["metadata"]["name"] for m in kube.applied_in("app")) == ["c", "db"]
    assert kube.objects[("v1", "ConfigMap", "app", "c")]["data"] == {"k": "v"}
    assert works.corrections["w1"] == 1
    # An unchanged sibling is left alone.
    works = restarted(kube)
    kube.objects[("v1", "Secret", "app", "db")]["stringData"] = {"password": "changed"}
    kube.applied.clear()
    works.receive(work(cm, db))
    await works.reconcile("w1")
    assert [m["metadata"]["name"] for m in kube.applied_in("app")] == ["db"]


async def test_a_new_generation_after_a_restart_is_applied() -> None:
    kube = FakeKube()
    await applied_once(kube, configmap("c", {"k": "v"}))
    works = restarted(kube)
    kube.applied.clear()
    works.receive(work(configmap("c", {"k": "v2"}), generation=2))
    await works.reconcile("w1")
    assert [m["data"] for m in kube.applied_in("app")] == [{"k": "v2"}]


async def test_drift_before_the_resend_waits_for_it() -> None:
    kube = FakeKube()
    cm = configmap("c", {"k": "v"})
    await applied_once(kube, cm)
    works = restarted(kube)
    kube.applied.clear()
    changed = kube.put({**kube.objects[("v1", "ConfigMap", "app", "c")], "data": {"k": "x"}})
    works.on_event("MODIFIED", changed)
    assert len(works.queue) == 0 and not kube.applied  # nothing to judge it by yet
    works.receive(work(cm))
    await works.reconcile("w1")
    assert kube.objects[("v1", "ConfigMap", "app", "c")]["data"] == {"k": "v"}
    # Now the contents are in memory: drift is repaired at once.
    changed = kube.put({**kube.objects[("v1", "ConfigMap", "app", "c")], "data": {"k": "y"}})
    works.on_event("MODIFIED", changed)
    assert "w1" in works.drifted
    await works.reconcile("w1")
    assert kube.objects[("v1", "ConfigMap", "app", "c")]["data"] == {"k": "v"}


# -- status reports ----------------------------------------------------------------------


def test_a_status_nested_too_deep_is_not_reflected() -> None:
    from agent.works import Observed
    from archipel import interpreter

    status: dict[str, Any] = {}
    level = status
    for _ in range(limits.MAX_MANIFEST_DEPTH + 5):
        level["x"] = {}
        level = level["x"]
    manifest = {**configmap("c", {}), "kind": "Widget", "apiVersion": "example.com/v1"}
    manifest["status"] = {"conditions": [status]}
    observed = Observed.of(manifest, interpreter.Registry())
    assert observed.status is None
    assert "deeper than" in observed.health_message


async def test_the_ledger_lives_in_the_agents_own_namespace() -> None:
    """Installed by the chart, the agent keeps its ledger where its Role lets it write:
    its own namespace (``--namespace``, from the pod's namespace)."""
    from agent.ledger import Ledger
    from archipel.core.names import LEDGER_LABEL

    kube = FakeKube()
    works, _ = manager(kube, Ledger(kube, namespace="archipel-agent"))  # type: ignore[arg-type]
    works.receive(work(configmap("c", {"k": "v"})))
    await works.reconcile("w1")
    ledgers = [m for m in kube.applied if m["metadata"].get("labels", {}).get(LEDGER_LABEL)]
    assert {m["metadata"]["namespace"] for m in ledgers} == {"archipel-agent"}
