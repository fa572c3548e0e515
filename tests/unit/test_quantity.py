"""Kubernetes quantities: one parser and one formatter for the control plane and the agent.

The accepted values and canonical strings below were checked against
k8s.io/apimachinery v0.35.4 ``resource.ParseQuantity`` and ``Quantity.String``.
"""

from __future__ import annotations

from fractions import Fraction
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from kubernetes import client

from agent.facts import summarize
from archipel import quantity
from archipel.core import scheduling
from archipel.core.errors import Invalid
from archipel.quantity import QuantityError, canonical, parse
from archipel.v1alpha1 import cluster_pb2

F = Fraction

ACCEPTED = [
    ("0", F(0)),
    ("1", F(1)),
    ("1.", F(1)),
    (".5", F(1, 2)),
    ("1.5", F(3, 2)),
    ("+1", F(1)),
    ("-1", F(-1)),
    ("-0", F(0)),
    ("00010", F(10)),
    ("0.0", F(0)),
    ("1e3", F(1000)),
    ("1E3", F(1000)),
    ("1e+3", F(1000)),
    ("1e-3", F(1, 1000)),
    ("1E-3", F(1, 1000)),
    ("1.e3", F(1000)),
    ("1.5e3", F(1500)),
    ("12e6", F(12_000_000)),
    ("1e003", F(1000)),
    ("100m", F(1, 10)),
    ("1500m", F(3, 2)),
    ("-1.5m", F(-3, 2000)),
    ("1.2345m", F(12345, 10**7)),
    ("1n", F(1, 10**9)),
    ("0.1n", F(1, 10**10)),  # Kubernetes rounds this up to 1n; we keep it exact
    ("1u", F(1, 10**6)),
    ("1k", F(1000)),
    ("1.5k", F(1500)),
    ("1M", F(10**6)),
    ("1.G", F(10**9)),
    ("1T", F(10**12)),
    ("1P", F(10**15)),
    ("1E", F(10**18)),
    ("1Ki", F(1024)),
    ("0.5Ki", F(512)),
    ("1.1Ki", F(5632, 5)),
    ("1Mi", F(2**20)),
    ("1.5Gi", F(3 * 2**29)),
    ("2Gi", F(2**31)),
    ("1Ti", F(2**40)),
    ("1Pi", F(2**50)),
    ("1Ei", F(2**60)),
    ("9223372036854775808", F(2**63)),
    ("1e20", F(10**20)),
    ("1e-20", F(1, 10**20)),
]

REFUSED = [
    "",
    " 1",
    "1 ",
    " 1 ",
    "1\t",
    "\n1",
    "1\n",
    "1.5.5",
    "Ki",
    "1KiB",
    "1e",
    "1E+",
    "1e-",
    "e3",
    "E3",
    "1.0Mi0",
    "1Gi5",
    "1e3m",
    "1mm",
    "1K",  # kilo is a lower-case k
    "1i",
    "0.1mi",
    "1EI",
    "1e--3",
    "++1",
    "-+1",
    "0x10",
    "1_000",
    "\uff11",  # a full-width digit one: Go reads ASCII digits only
    "1,5",
    "abc",
    # Go's scanner reads these as 0 because the number has no digits; the grammar
    # Kubernetes documents (and we follow) needs at least one.
    "-",
    "+",
    ".",
    "+.",
    "m",
    ".e3",
    "1e1001",  # beyond MAX_EXPONENT
]


@pytest.mark.parametrize(("text", "value"), ACCEPTED)
def test_accepts_what_kubernetes_accepts(text: str, value: Fraction) -> None:
    assert parse(text) == value
    assert isinstance(parse(text), Fraction)


@pytest.mark.parametrize("text", REFUSED)
def test_refuses_what_kubernetes_refuses(text: str) -> None:
    with pytest.raises(QuantityError) as raised:
        parse(text, field="spec.cpu")
    assert raised.value.field == "spec.cpu"
    assert str(raised.value).startswith("spec.cpu: ")
    assert isinstance(raised.value, ValueError)


def test_numbers_as_yaml_gives_them() -> None:
    assert parse(2) == 2
    assert parse(0.5) == F(1, 2)
    assert parse(0.1) == F(1, 10)  # the decimal written, not the binary float
    assert parse(1e20) == 10**20
    bad_values: list[Any] = [True, float("inf"), float("nan"), None, ["1"]]
    for bad in bad_values:
        with pytest.raises(QuantityError):
            parse(bad)


def test_exponent_limit() -> None:
    assert parse(f"1e{quantity.MAX_EXPONENT}") == 10**quantity.MAX_EXPONENT
    assert parse(f"1e-{quantity.MAX_EXPONENT}") == F(1, 10**quantity.MAX_EXPONENT)
    with pytest.raises(QuantityError):
        parse("1e2147483648")


CANONICAL = [
    (F(0), "0"),
    (F(1), "1"),
    (F(3, 2), "1500m"),
    (F(1, 2), "500m"),
    (F(1, 10), "100m"),
    (F(1, 10**4), "100u"),
    (F(1, 10**9), "1n"),
    (F(1000), "1k"),
    (F(1500), "1500"),
    (F(12_000_000), "12M"),
    (F(10**12), "1T"),  # a whole number of Ki, but "976562500Ki" is longer
    (F(10**18), "1E"),
    (F(10**21), "1000E"),
    (F(2048000), "2048k"),  # "2000Ki" is longer
    (F(1024000), "1024k"),  # "1000Ki" is longer
    (F(110), "110"),
    (F(512), "512"),
    (F(1024), "1Ki"),
    (F(2**31), "2Gi"),
    (F(3 * 2**29), "1536Mi"),
    (F(16318940 * 1024), "16318940Ki"),
    (F(2**60), "1Ei"),
    (F(2**70), "1024Ei"),
    (F(5632, 5), "1126400m"),  # 1.1Ki: not whole, so decimal
    (F(-3, 2), "-1500m"),
    (F(-2048), "-2Ki"),
    (F(12345, 10**7), "1234500n"),
    # Below a nano: rounded up (away from zero), as Kubernetes rounds.
    (F(1, 10**10), "1n"),
    (F(1, 3), "333333334n"),
    (F(-1, 3), "-333333334n"),
    (F(2, 3) + 4, "4666666667n"),
]


@pytest.mark.parametrize(("value", "text"), CANONICAL)
def test_canonical(value: Fraction, text: str) -> None:
    assert canonical(value) == text


@pytest.mark.parametrize(
    ("text", "expected"),
    [("1.5", "1500m"), ("1500m", "1500m"), ("2Gi", "2Gi"), ("1000", "1k"), ("1.5Gi", "1536Mi")],
)
def test_canonical_of_parsed(text: str, expected: str) -> None:
    assert canonical(parse(text)) == expected


def test_canonical_accepts_int() -> None:
    assert canonical(4096) == "4Ki"


@given(st.integers(min_value=-(10**30), max_value=10**30))
def test_round_trip_exact_for_whole_nanos(nanos: int) -> None:
    value = Fraction(nanos, 10**9)
    text = canonical(value)
    assert parse(text) == value
    assert canonical(parse(text)) == text


@given(st.integers(min_value=-(10**6), max_value=10**6), st.integers(min_value=0, max_value=40))
def test_round_trip_exact_for_binary(multiple: int, shift: int) -> None:
    value = Fraction(multiple << shift)
    assert parse(canonical(value)) == value


@given(st.fractions(max_denominator=10**12))
def test_round_trip_rounds_up_below_a_nano(value: Fraction) -> None:
    back = parse(canonical(value))
    assert abs(back) >= abs(value)
    assert abs(back) - abs(value) < Fraction(1, 10**9)
    assert (back > 0) == (value > 0) or value == 0
    assert back * 10**9 == int(back * 10**9)


# -- the agent and the control plane read the same node the same way ---------------------


def node(name: str, allocatable: dict[str, str], *, ready: bool = True) -> Any:
    return client.V1Node(
        metadata=client.V1ObjectMeta(name=name),
        status=client.V1NodeStatus(
            allocatable=allocatable,
            conditions=[client.V1NodeCondition(type="Ready", status=str(ready))],
        ),
    )


def pod(name: str, node_name: str, *requests: dict[str, str]) -> Any:
    return client.V1Pod(
        metadata=client.V1ObjectMeta(name=name),
        spec=client.V1PodSpec(
            node_name=node_name,
            containers=[
                client.V1Container(
                    name=f"c{i}", resources=client.V1ResourceRequirements(requests=r)
                )
                for i, r in enumerate(requests)
            ],
        ),
    )


def test_agent_and_scheduler_agree_on_node_allocatable() -> None:
    nodes = [
        node("a", {"cpu": "3920m", "memory": "16318940Ki", "pods": "110", "gpu": "1"}),
        node("b", {"cpu": "4", "memory": "1.5Gi", "pods": "1.1e2"}, ready=False),
        node("c", {"cpu": "0.5", "memory": "1e9", "pods": "10"}),
        client.V1Node(metadata=client.V1ObjectMeta(name="new")),  # no status yet
    ]
    pods = [
        pod("p1", "a", {"cpu": "250m", "memory": "128Mi"}, {"cpu": "0.1"}),
        pod("p2", "c", {"memory": "1G"}),
        pod("pending", "", {"cpu": "8"}),  # not on a node: not allocated
    ]
    node_summary, summary = summarize(nodes, pods)
    assert (node_summary.total_num, node_summary.ready_num) == (4, 2)
    assert "gpu" not in summary.allocatable

    cpu = F(3920, 1000) + 4 + F(1, 2)
    memory = 16318940 * 1024 + 3 * 2**29 + 10**9
    expected_allocatable = {"cpu": cpu, "memory": F(memory), "pods": F(230)}
    expected_allocated = {"cpu": F(35, 100), "memory": F(128 * 2**20 + 10**9), "pods": F(2)}
    assert {r: parse(v) for r, v in summary.allocatable.items()} == expected_allocatable
    assert {r: parse(v) for r, v in summary.allocated.items()} == expected_allocated
    assert dict(summary.allocatable) == {"cpu": "8420m", "memory": "19321207296", "pods": "230"}
    assert dict(summary.allocated) == {"cpu": "350m", "memory": "1134217728", "pods": "2"}

    member = cluster_pb2.MemberCluster()
    member.metadata.name = "m1"
    member.status.resource_summary.CopyFrom(summary)
    member.status.resource_summary.allocating["cpu"] = "1"
    info = scheduling.ClusterInfo.from_proto(member)
    assert info.free == {
        "cpu": cpu - F(35, 100) - 1,
        "memory": F(memory) - expected_allocated["memory"],
        "pods": F(228),
    }


def test_agent_sums_binary_memory_in_binary_form() -> None:
    nodes = [node(n, {"memory": "8Gi", "cpu": "2"}) for n in ("a", "b")]
    _, summary = summarize(nodes, [])
    assert dict(summary.allocatable) == {"memory": "16Gi", "cpu": "4"}
    assert dict(summary.allocated) == {"pods": "0"}


def test_scheduler_skips_a_quantity_it_cannot_read() -> None:
    member = cluster_pb2.MemberCluster()
    member.status.resource_summary.allocatable["cpu"] = "4"
    member.status.resource_summary.allocatable["memory"] = " 1Gi"
    member.status.resource_summary.allocated["cpu"] = "1."
    info = scheduling.ClusterInfo.from_proto(member)
    assert info.free == {"cpu": F(3)}


def test_scheduler_requests_report_invalid_with_the_field() -> None:
    assert scheduling.parse_requests({"cpu": "500m"}) == {"cpu": F(1, 2)}
    with pytest.raises(Invalid) as raised:
        scheduling.parse_requests({"cpu": "1 "})
    assert raised.value.field == "replicaRequirements.resourceRequest[cpu]"
