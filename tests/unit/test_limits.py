"""Everything derived from the deepest template admission accepts stays decodable.

A template nested exactly to the old limit was accepted, and the work built from it,
one level deeper, could not be decoded: it stopped all propagation. These tests
build the deepest accepted template and every message that carries it or its status,
and decode each with protobuf's own parser (upb refuses more than 100 levels, as the
Java and C++ runtimes do by default).
"""

from __future__ import annotations

from typing import Any

import pytest

from archipel import limits, structs
from archipel.core import validation
from archipel.core.errors import Invalid
from archipel.v1alpha1 import agent_pb2, service_pb2, work_pb2


def nested(levels: int) -> Any:
    """A value ``levels`` deep by :func:`limits.depth` (objects, with a list inside)."""
    value: Any = "leaf"
    for index in range(levels - 1):
        value = [value] if index % 5 == 4 else {"a": value}
    return value


def deepest_template() -> dict[str, Any]:
    # The manifest is level 1 and "spec" level 2: the value inside fills the rest.
    manifest = {
        "apiVersion": "example.com/v1",
        "kind": "Widget",
        "metadata": {"name": "deep", "namespace": "default"},
        "spec": nested(limits.MAX_MANIFEST_DEPTH - 1),
    }
    assert limits.depth(manifest) == limits.MAX_MANIFEST_DEPTH
    return manifest


def roundtrip(message: Any) -> None:
    type(message).FromString(message.SerializeToString())


def test_the_deepest_accepted_template_yields_decodable_messages() -> None:
    manifest = validation.check_template(deepest_template())
    struct = structs.to_struct(manifest)
    roundtrip(work_pb2.ResourceTemplate(manifest=struct))

    work = work_pb2.PropagationWork()
    work.spec.workload.manifests.append(struct)
    roundtrip(work)
    roundtrip(service_pb2.PropagationWorkEvent(type="ADDED", object=work))
    stream = agent_pb2.ControlMessage()
    stream.batch.works.append(work)
    roundtrip(stream)

    # Its status, as deep as the template, reflected by an agent and aggregated.
    report = agent_pb2.AgentMessage()
    status = report.batch.statuses.add(name="w")
    status.manifest_statuses.add().status.CopyFrom(struct)
    roundtrip(report)
    binding = work_pb2.PropagationBinding()
    binding.status.aggregated_status.add(cluster_name="c").status.CopyFrom(struct)
    roundtrip(service_pb2.PropagationBindingEvent(type="MODIFIED", object=binding))


def test_one_level_more_is_refused_at_admission() -> None:
    manifest = deepest_template()
    manifest["spec"] = {"more": manifest["spec"]}
    with pytest.raises(Invalid) as refused:
        validation.check_template(manifest)
    assert "nested" in str(refused.value)


@pytest.mark.parametrize("levels", [1, 2, 10, limits.MAX_MANIFEST_DEPTH])
def test_depth_counts_levels(levels: int) -> None:
    assert limits.depth(nested(levels)) == levels


def test_depth_stops_early_and_never_recurses() -> None:
    value: Any = "leaf"
    for _ in range(100_000):  # far past Python's recursion limit
        value = [value]
    assert limits.depth(value) == limits.MAX_MANIFEST_DEPTH + 1


def test_echo_cuts_long_values() -> None:
    assert limits.echo("short") == "'short'"
    cut = limits.echo("x" * 100_000)
    assert len(cut) < limits.MAX_ECHO_CHARS + 40 and cut.endswith("(100002 characters)")
