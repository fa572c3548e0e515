"""Karmada's failover fields are checked at apply time, each refusal naming its field."""

from __future__ import annotations

from typing import Any

import pytest
from google.protobuf import json_format

from archipel.core import validation
from archipel.core.errors import Invalid
from archipel.v1alpha1 import policy_pb2


def spec(failover: dict[str, Any]) -> policy_pb2.PropagationSpec:
    return json_format.ParseDict(
        {
            "resourceSelectors": [{"apiVersion": "apps/v1", "kind": "Deployment"}],
            "failover": failover,
        },
        policy_pb2.PropagationSpec(),
    )


KARMADA_EXAMPLE = {
    # As Karmada's documentation writes application failover.
    "application": {
        "decisionConditions": {"tolerationSeconds": 120},
        "purgeMode": "Gracefully",
        "gracePeriodSeconds": 600,
        "statePreservation": {
            "rules": [{"aliasLabelName": "failover.karmada.io/job-id", "jsonPath": "{.jobId}"}]
        },
    },
    "cluster": {"purgeMode": "Directly"},
}


def test_karmadas_failover_yaml_is_accepted() -> None:
    validation.check_propagation_spec(spec(KARMADA_EXAMPLE), policy_namespace="shop")


@pytest.mark.parametrize(
    ("application", "field"),
    [
        ({"decisionConditions": {"tolerationSeconds": -1}}, "decisionConditions.tolerationSeconds"),
        ({"gracePeriodSeconds": 0}, "gracePeriodSeconds"),
        ({"purgeMode": "Directly", "gracePeriodSeconds": 60}, "gracePeriodSeconds"),
        (
            {"statePreservation": {"rules": [{"aliasLabelName": "bad key!", "jsonPath": "{.a}"}]}},
            "statePreservation.rules[0].aliasLabelName",
        ),
        (
            {"statePreservation": {"rules": [{"aliasLabelName": "a", "jsonPath": "{.a["}]}},
            "statePreservation.rules[0].jsonPath",
        ),
        (
            {"statePreservation": {"rules": [{"aliasLabelName": "a"}]}},
            "statePreservation.rules[0].jsonPath",
        ),
    ],
)
def test_a_wrong_application_failover_is_refused_naming_the_field(
    application: dict[str, Any], field: str
) -> None:
    with pytest.raises(Invalid) as refused:
        validation.check_propagation_spec(
            spec({"application": application}), policy_namespace="shop"
        )
    assert refused.value.field == f"spec.failover.application.{field}"


def test_a_wrong_cluster_state_preservation_rule_is_refused_naming_the_field() -> None:
    failover = {
        "cluster": {"statePreservation": {"rules": [{"aliasLabelName": "a", "jsonPath": "{"}]}}
    }
    with pytest.raises(Invalid) as refused:
        validation.check_propagation_spec(spec(failover), policy_namespace="shop")
    assert refused.value.field == "spec.failover.cluster.statePreservation.rules[0].jsonPath"
