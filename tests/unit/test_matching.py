"""Which policy wins a template: Karmada's precedence, as a table."""

from __future__ import annotations

from typing import Any

import pytest

from archipel.core import matching
from archipel.v1alpha1 import meta_pb2, policy_pb2

DEPLOYMENT: dict[str, Any] = {
    "apiVersion": "apps/v1",
    "kind": "Deployment",
    "metadata": {"name": "web", "namespace": "shop", "labels": {"app": "web"}},
}


def pp(
    name: str,
    *,
    selector: str = "kind",
    priority: int | None = None,
    preemption: str = "",
    namespace: str = "shop",
) -> policy_pb2.PropagationPolicy:
    policy = policy_pb2.PropagationPolicy()
    policy.metadata.name = name
    policy.metadata.namespace = namespace
    rs = policy.spec.resource_selectors.add(api_version="apps/v1", kind="Deployment")
    if selector == "name":
        rs.name = "web"
    elif selector == "labels":
        rs.label_selector.CopyFrom(meta_pb2.LabelSelector(match_labels={"app": "web"}))
    elif selector == "other-name":
        rs.name = "api"
    if priority is not None:
        policy.spec.priority = priority
    policy.spec.preemption = preemption
    return policy


def cpp(
    name: str, *, priority: int | None = None, preemption: str = ""
) -> policy_pb2.ClusterPropagationPolicy:
    policy = policy_pb2.ClusterPropagationPolicy()
    policy.metadata.name = name
    policy.spec.resource_selectors.add(api_version="apps/v1", kind="Deployment")
    if priority is not None:
        policy.spec.priority = priority
    policy.spec.preemption = preemption
    return policy


@pytest.mark.parametrize(
    ("namespaced", "cluster", "winner"),
    [
        pytest.param([pp("a")], [], "a", id="only-match"),
        pytest.param([pp("a", selector="other-name")], [], None, id="no-match"),
        pytest.param([pp("b"), pp("a")], [], "a", id="tie-goes-to-first-name"),
        pytest.param([pp("a"), pp("b", priority=5)], [], "b", id="priority"),
        pytest.param([pp("a"), pp("b", selector="labels")], [], "b", id="labels-beat-kind"),
        pytest.param(
            [pp("a", selector="labels"), pp("b", selector="name")], [], "b", id="name-beats-labels"
        ),
        pytest.param(
            [pp("a", priority=1), pp("b", selector="name")],
            [],
            "a",
            id="priority-beats-specificity",
        ),
        pytest.param([pp("a")], [cpp("c", priority=100)], "a", id="namespaced-beats-cluster"),
        pytest.param([], [cpp("c"), cpp("d", priority=2)], "d", id="cluster-priority"),
        pytest.param([pp("a", namespace="other")], [cpp("c")], "c", id="other-namespace-ignored"),
    ],
)
def test_precedence(
    namespaced: list[policy_pb2.PropagationPolicy],
    cluster: list[policy_pb2.ClusterPropagationPolicy],
    winner: str | None,
) -> None:
    chosen = matching.choose(DEPLOYMENT, namespaced, cluster)
    assert (chosen.policy.metadata.name if chosen else None) == winner


def test_claimed_template_stays_without_preemption() -> None:
    claimed = ("PropagationPolicy", "shop", "a")
    chosen = matching.choose(DEPLOYMENT, [pp("a"), pp("b", priority=9)], [], claimed_by=claimed)
    assert chosen is not None and chosen.policy.metadata.name == "a"


def test_preemption_always_takes_over() -> None:
    claimed = ("PropagationPolicy", "shop", "a")
    chosen = matching.choose(
        DEPLOYMENT, [pp("a"), pp("b", priority=9, preemption="Always")], [], claimed_by=claimed
    )
    assert chosen is not None and chosen.policy.metadata.name == "b"


def test_claim_ends_when_policy_stops_matching() -> None:
    claimed = ("PropagationPolicy", "shop", "a")
    chosen = matching.choose(
        DEPLOYMENT, [pp("a", selector="other-name"), pp("b")], [], claimed_by=claimed
    )
    assert chosen is not None and chosen.policy.metadata.name == "b"
