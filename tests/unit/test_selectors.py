"""Label selectors: the string form and the structured form, as Kubernetes defines them."""

from __future__ import annotations

import pytest

from archipel.core import selectors
from archipel.core.errors import Invalid
from archipel.v1alpha1 import meta_pb2

LABELS = {"app": "web", "tier": "gold", "env": "prod"}


@pytest.mark.parametrize(
    ("text", "matches"),
    [
        ("", True),
        ("app=web", True),
        ("app==web", True),
        ("app!=web", False),
        ("app=api", False),
        ("tier in (gold,silver)", True),
        ("tier notin (gold)", False),
        ("missing notin (x)", True),
        ("env", True),
        ("!env", False),
        ("!missing", True),
        ("app=web,tier in (gold, silver),!legacy", True),
        ("app=web,env=dev", False),
    ],
)
def test_string_selectors(text: str, matches: bool) -> None:
    assert selectors.parse(text).matches(LABELS) is matches


@pytest.mark.parametrize("text", ["app=", "=web", "a b", "app in (", "app=web,,x=y", "bad key=v"])
def test_bad_string_selectors_name_the_field(text: str) -> None:
    if text == "app=":
        assert selectors.parse(text).matches({"app": ""})
        return
    with pytest.raises(Invalid) as error:
        selectors.parse(text, field="labelSelector")
    assert error.value.field == "labelSelector"


def test_structured_selector() -> None:
    selector = meta_pb2.LabelSelector(
        match_labels={"app": "web"},
        match_expressions=[
            meta_pb2.LabelSelectorRequirement(key="tier", operator="In", values=["gold"]),
            meta_pb2.LabelSelectorRequirement(key="legacy", operator="DoesNotExist"),
        ],
    )
    parsed = selectors.from_proto(selector)
    assert parsed.matches(LABELS)
    assert not parsed.matches({**LABELS, "legacy": "yes"})


@pytest.mark.parametrize(
    ("requirement", "field"),
    [
        (
            meta_pb2.LabelSelectorRequirement(key="a", operator="Near"),
            "x.matchExpressions[0].operator",
        ),
        (meta_pb2.LabelSelectorRequirement(key="a", operator="In"), "x.matchExpressions[0].values"),
        (
            meta_pb2.LabelSelectorRequirement(key="a", operator="Exists", values=["v"]),
            "x.matchExpressions[0].values",
        ),
        (meta_pb2.LabelSelectorRequirement(key="", operator="Exists"), "x.matchExpressions[0].key"),
    ],
)
def test_bad_structured_selectors_name_the_field(
    requirement: meta_pb2.LabelSelectorRequirement, field: str
) -> None:
    with pytest.raises(Invalid) as error:
        selectors.from_proto(meta_pb2.LabelSelector(match_expressions=[requirement]), field="x")
    assert error.value.field == field
