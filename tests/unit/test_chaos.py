"""The chaos run's pure parts: the seeded history replays, and the check tells lost,
extra, misplaced and wrong objects apart."""

from __future__ import annotations

import dataclasses
import random
from pathlib import Path
from typing import Any

import pytest

from archipel import structs
from archipel.client import to_message
from archipel.v1alpha1 import work_pb2
from bench.chaos import (
    History,
    Model,
    Placement,
    Seen,
    Step,
    Template,
    compare,
    duplicate_applies,
    expected,
    model_differences,
    pick_replica,
    policy_document,
    replica_name,
    stored_model,
    template_document,
)

MEMBERS = ("member1", "member2", "member3")


def steps(seed: int, count: int) -> list[Step]:
    history = History(seed, MEMBERS)
    taken = []
    for _ in range(count):
        step = history.next()
        history.commit(step)
        taken.append(step)
    return taken


def test_a_seed_replays_the_same_history() -> None:
    assert steps(7, 200) == steps(7, 200)
    assert steps(7, 200) != steps(8, 200)


def test_the_history_keeps_its_model_consistent() -> None:
    history = History(3, MEMBERS, most_templates=10)
    for _ in range(500):
        history.commit(history.next())
        assert len(history.model.templates) <= 10
        for template in history.model.templates.values():
            assert template.policy in history.model.placements
            if template.kind == "Deployment":
                assert template.replicas >= len(MEMBERS)


def model() -> Model:
    return Model(
        placements={
            "p0": Placement(("member1", "member2"), divided=False),
            "p1": Placement(("member2", "member3"), divided=True),
        },
        templates={
            "chaos-cm-0001": Template("ConfigMap", "chaos-cm-0001", "p0", 2),
            "chaos-dp-0002": Template("Deployment", "chaos-dp-0002", "p1", 1, replicas=5),
        },
    )


def settled() -> dict[str, dict[tuple[str, str], Seen]]:
    return {
        "member1": {("ConfigMap", "chaos-cm-0001"): Seen("2")},
        "member2": {
            ("ConfigMap", "chaos-cm-0001"): Seen("2"),
            ("Deployment", "chaos-dp-0002"): Seen("registry.local/app:v1", 3),
        },
        "member3": {("Deployment", "chaos-dp-0002"): Seen("registry.local/app:v1", 2)},
    }


def test_what_the_model_says_is_clean() -> None:
    assert compare(model(), settled()).clean


@pytest.mark.parametrize(
    ("change", "field"),
    [
        pytest.param(lambda s: s["member1"].clear(), "lost", id="missing"),
        pytest.param(
            lambda s: s["member3"].update({("ConfigMap", "chaos-cm-0001"): Seen("2")}),
            "misplaced",
            id="outside-its-placement",
        ),
        pytest.param(
            lambda s: s["member3"].update({("ConfigMap", "chaos-cm-0999"): Seen("1")}),
            "extra",
            id="its-template-deleted",
        ),
        pytest.param(
            lambda s: s["member1"].update({("ConfigMap", "chaos-cm-0001"): Seen("1")}),
            "wrong",
            id="old-content",
        ),
        pytest.param(
            lambda s: s["member3"].update(
                {("Deployment", "chaos-dp-0002"): Seen("registry.local/app:v1", 1)}
            ),
            "wrong",
            id="divided-total-off",
        ),
    ],
)
def test_each_difference_is_told_apart(change: object, field: str) -> None:
    observed = settled()
    change(observed)  # type: ignore[operator]
    found = compare(model(), observed)
    assert {k: v for k, v in found.counts().items() if v} == {field: 1}


def test_duplicated_replicas_are_checked_per_member() -> None:
    duplicated = model()
    duplicated.placements["p1"] = dataclasses.replace(duplicated.placements["p1"], divided=False)
    assert expected(duplicated)["member3"][("Deployment", "chaos-dp-0002")].replicas == 5


def test_documents_select_by_the_policy_label() -> None:
    template = template_document(Template("Deployment", "chaos-dp-0003", "p2", 4, replicas=3))
    policy = policy_document("p2", Placement(("member1",), divided=True))
    label = template["metadata"]["labels"]
    for selector in policy["spec"]["resourceSelectors"]:
        assert selector["labelSelector"]["matchLabels"].items() <= label.items()
    weights = policy["spec"]["placement"]["replicaScheduling"]["weightPreference"]
    assert weights["staticWeightList"] == [
        {"targetCluster": {"clusterNames": ["member1"]}, "weight": 1}
    ]


def test_duplicate_applies_are_counted_from_the_agents_logs(tmp_path: Path) -> None:
    (tmp_path / "member1-agent-0.log").write_text(
        "INFO agent.works: work chaos.a: restored objects changed in the member\n"
        "INFO agent.works: work chaos.b: checked after a restart, 2 of 3 objects applied again\n"
    )
    (tmp_path / "member2-agent-1.log").write_text(
        "INFO agent.works: work chaos.c: checked after a restart, 0 of 4 objects applied again\n"
    )
    assert duplicate_applies(tmp_path) == {
        "drift_corrections": 1,
        "applied_again_after_restart": 2,
    }


class StoredClient:
    """What the control plane answers for namespace chaos: the documents the load
    wrote, read back."""

    def __init__(self, policies: list[dict[str, Any]], templates: list[dict[str, Any]]):
        self.policies = policies
        self.templates = templates

    def list_objects(self, api_kind: Any, namespace: str = "") -> list[Any]:
        return [to_message(api_kind, document) for document in self.policies]

    def list_templates(self, namespace: str = "") -> list[work_pb2.ResourceTemplate]:
        return [work_pb2.ResourceTemplate(manifest=structs.to_struct(t)) for t in self.templates]


def test_the_stored_model_reads_back_what_the_load_wrote() -> None:
    written = model()
    client = StoredClient(
        [policy_document(name, placement) for name, placement in written.placements.items()],
        [template_document(template) for template in written.templates.values()],
    )
    stored = stored_model(client)  # type: ignore[arg-type]
    assert model_differences(written, stored) == []


def test_a_late_write_is_told_apart() -> None:
    written = model()
    stored = model()
    stored.templates["chaos-cm-0009"] = Template("ConfigMap", "chaos-cm-0009", "p0", 1)
    del stored.templates["chaos-dp-0002"]
    assert model_differences(written, stored) == [
        "template chaos-cm-0009",
        "template chaos-dp-0002",
    ]


def test_one_replica_draws_nothing_so_a_seed_replays_the_same_faults() -> None:
    chooser, untouched = random.Random(5), random.Random(5)
    assert [pick_replica(chooser, 1) for _ in range(10)] == [0] * 10
    assert chooser.random() == untouched.random()
    assert replica_name(0, 1) == "controlplane"


def test_a_fault_on_several_replicas_hits_each_of_them_reproducibly() -> None:
    chooser = random.Random(9)
    drawn = [pick_replica(chooser, 3) for _ in range(60)]
    assert set(drawn) == {0, 1, 2}
    again = random.Random(9)
    assert drawn == [pick_replica(again, 3) for _ in range(60)]
    assert [replica_name(i, 3) for i in range(3)] == [
        "controlplane-0",
        "controlplane-1",
        "controlplane-2",
    ]
