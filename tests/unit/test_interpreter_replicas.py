"""Replica counts read from templates: int32 from 0 up, and anything else is an
interpretation failure that names the field (never a crash, a silent 0 or a huge count)."""

from __future__ import annotations

import math
from typing import Any

import pytest
from google.protobuf import json_format

from archipel import interpreter, limits
from archipel.core.workloads import member_manifest
from archipel.v1alpha1 import interpreter_pb2

WIDGETS = json_format.ParseDict(
    {
        "metadata": {"name": "widgets"},
        "spec": {
            "target": {"apiVersion": "example.io/v1", "kind": "Widget"},
            "customizations": {
                "replicaResource": {"replicas": ".spec.size"},
                "replicaRevision": {"replicas": ".spec.size"},
            },
        },
    },
    interpreter_pb2.ResourceInterpreterCustomization(),
)
REGISTRY = interpreter.Registry([WIDGETS])

BAD_VALUES = [
    pytest.param(-1, id="negative"),
    pytest.param(-(2**40), id="very-negative"),
    pytest.param(math.nan, id="nan"),
    pytest.param(math.inf, id="infinity"),
    pytest.param(-math.inf, id="minus-infinity"),
    pytest.param(2.5, id="fraction"),
    pytest.param(True, id="true"),
    pytest.param(False, id="false"),
    pytest.param("3", id="numeric-string"),
    pytest.param("three", id="string"),
    pytest.param(limits.MAX_REPLICAS + 1, id="over-int32"),
    pytest.param(20_000_000_000, id="twenty-billion"),
    pytest.param(1e300, id="huge-float"),
    pytest.param([3], id="list"),
    pytest.param({"value": 3}, id="object"),
]

# (template with the value at its replica field, the field the error must name)
KINDS = [
    pytest.param(
        lambda v: {"apiVersion": "apps/v1", "kind": "Deployment", "spec": {"replicas": v}},
        "spec.replicas",
        id="Deployment",
    ),
    pytest.param(
        lambda v: {"apiVersion": "apps/v1", "kind": "StatefulSet", "spec": {"replicas": v}},
        "spec.replicas",
        id="StatefulSet",
    ),
    pytest.param(
        lambda v: {"apiVersion": "batch/v1", "kind": "Job", "spec": {"parallelism": v}},
        "spec.parallelism",
        id="Job-parallelism",
    ),
    pytest.param(
        lambda v: {
            "apiVersion": "batch/v1",
            "kind": "Job",
            "spec": {"parallelism": 2, "completions": v},
        },
        "spec.completions",
        id="Job-completions",
    ),
    pytest.param(
        lambda v: {"apiVersion": "example.io/v1", "kind": "Widget", "spec": {"size": v}},
        ".spec.size",
        id="customization",
    ),
]


def template(build: Any, value: Any) -> dict[str, Any]:
    manifest: dict[str, Any] = build(value)
    manifest["metadata"] = {"name": "web", "namespace": "ns"}
    return manifest


@pytest.mark.parametrize(("build", "field"), KINDS)
@pytest.mark.parametrize("value", BAD_VALUES)
def test_a_bad_replica_count_is_an_interpreter_error_naming_the_field(
    build: Any, field: str, value: Any
) -> None:
    manifest = template(build, value)
    with pytest.raises(interpreter.InterpreterError, match="not a replica count") as raised:
        REGISTRY.of(manifest).replicas(manifest)
    assert f"{field} is " in str(raised.value)
    # The binding controller reports this as Interpreted=False for each cluster.
    with pytest.raises(interpreter.InterpreterError):
        member_manifest(manifest, replicas=1, interpreters=REGISTRY)


@pytest.mark.parametrize(("build", "field"), KINDS)
@pytest.mark.parametrize(
    ("value", "replicas"),
    [(0, 0), (3, 3), (3.0, 3), (limits.MAX_REPLICAS, limits.MAX_REPLICAS)],
)
def test_good_replica_counts_are_read(build: Any, field: str, value: Any, replicas: int) -> None:
    manifest = template(build, value)
    expected = 2 if field == "spec.completions" else replicas  # completions ride along
    assert REGISTRY.of(manifest).replicas(manifest) == expected


def test_an_unset_replica_count_is_one_as_in_kubernetes() -> None:
    deployment = {"apiVersion": "apps/v1", "kind": "Deployment", "spec": {"replicas": None}}
    assert REGISTRY.of(deployment).replicas(deployment) == 1
    job = {"apiVersion": "batch/v1", "kind": "Job", "spec": {}}
    assert REGISTRY.of(job).replicas(job) == 1


def test_the_error_quotes_a_huge_value_only_in_part() -> None:
    manifest = template(KINDS[0].values[0], "9" * 1_000_000)
    with pytest.raises(interpreter.InterpreterError) as raised:
        REGISTRY.of(manifest).replicas(manifest)
    assert len(str(raised.value)) < 2 * limits.MAX_ECHO_CHARS
