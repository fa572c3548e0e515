"""Replica division: Karmada's examples as tables, and properties that always hold."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from controlplane import division
from controlplane.division import Previous, Unschedulable


@pytest.mark.parametrize(
    ("total", "weights", "expected"),
    [
        pytest.param(12, {"a": 3, "b": 2, "c": 1}, {"a": 6, "b": 4, "c": 2}, id="3:2:1-of-12"),
        pytest.param(13, {"a": 3, "b": 2, "c": 1}, {"a": 7, "b": 4, "c": 2}, id="3:2:1-of-13"),
        pytest.param(12, {"a": 1, "b": 1, "c": 1}, {"a": 4, "b": 4, "c": 4}, id="equal"),
        pytest.param(3, {"a": 2, "b": 1}, {"a": 2, "b": 1}, id="2:1-of-3"),
        # Webster, not largest remainder: 2 replicas at 2:1 give 1/1 (karmada#6424).
        pytest.param(2, {"a": 2, "b": 1}, {"a": 1, "b": 1}, id="2:1-of-2"),
        pytest.param(5, {"a": 0, "b": 1}, {"b": 5}, id="zero-weight-dropped"),
        pytest.param(6, {"a": 0, "b": 0, "c": 0}, {"a": 2, "b": 2, "c": 2}, id="all-zero-equal"),
        pytest.param(0, {"a": 1}, {}, id="nothing"),
    ],
)
def test_static_weights(total: int, weights: dict[str, int], expected: dict[str, int]) -> None:
    assert division.static(total, weights) == expected


def test_ties_go_to_fewer_seats_then_name_order_by_seed() -> None:
    assert division.static(1, {"a": 1, "b": 1}, seed=0) == {"a": 1}
    assert division.static(1, {"a": 1, "b": 1}, seed=1) == {"b": 1}
    assert division.tie_break_seed("some-uid") == division.tie_break_seed("some-uid")


@pytest.mark.parametrize(
    ("total", "available", "expected"),
    [
        pytest.param(12, {"a": 18, "b": 12, "c": 6}, {"a": 6, "b": 4, "c": 2}, id="18/12/6"),
        pytest.param(4, {"a": 1, "b": 100}, {"b": 4}, id="proportional-to-room"),
    ],
)
def test_dynamic_fresh(total: int, available: dict[str, int], expected: dict[str, int]) -> None:
    assert division.dynamic(total, available) == expected


def test_dynamic_refuses_what_does_not_fit() -> None:
    with pytest.raises(Unschedulable, match="room for 9"):
        division.dynamic(12, {"a": 3, "b": 3, "c": 3})


def test_steady_scale_up_adds_only_the_delta() -> None:
    before = Previous({"a": 6, "b": 4, "c": 2})
    after = division.dynamic(15, {"a": 18, "b": 12, "c": 6}, previous=before)
    assert sum(after.values()) == 15
    assert all(after[n] >= before.replicas[n] for n in before.replicas)


def test_steady_scale_down_shrinks_in_proportion() -> None:
    before = Previous({"a": 6, "b": 4, "c": 2})
    assert division.dynamic(6, {"a": 0, "b": 0, "c": 0}, previous=before) == {
        "a": 3,
        "b": 2,
        "c": 1,
    }


def test_fresh_starts_over() -> None:
    before = Previous({"a": 10})
    fresh = division.dynamic(10, {"a": 0, "b": 10}, previous=before, fresh=True)
    assert fresh == {"a": 5, "b": 5}


@pytest.mark.parametrize(
    ("total", "available", "clusters"),
    [
        pytest.param(12, {"a": 6, "b": 8, "c": 10}, {"b", "c"}, id="two-clusters"),
        pytest.param(12, {"a": 12, "b": 8, "c": 10}, {"a"}, id="one-fits"),
        pytest.param(3, {"a": 1, "b": 1, "c": 1}, {"a", "b", "c"}, id="needs-all"),
    ],
)
def test_aggregated_uses_the_fewest_clusters(
    total: int, available: dict[str, int], clusters: set[str]
) -> None:
    result = division.aggregated(total, available)
    assert set(result) == clusters
    assert sum(result.values()) == total


def test_aggregated_prefers_clusters_already_used() -> None:
    result = division.aggregated(4, {"a": 10, "b": 2}, previous=Previous({"b": 2}))
    assert result["b"] >= 2


names = st.sampled_from([f"c{i}" for i in range(8)])
weights = st.dictionaries(names, st.integers(min_value=0, max_value=50), min_size=1, max_size=8)
rooms = st.dictionaries(names, st.integers(min_value=0, max_value=40), min_size=1, max_size=8)


@settings(max_examples=300, deadline=None)
@given(total=st.integers(min_value=0, max_value=200), weights=weights, seed=st.integers(0, 3))
def test_static_division_adds_up_and_is_deterministic(
    total: int, weights: dict[str, int], seed: int
) -> None:
    result = division.static(total, weights, seed=seed)
    assert sum(result.values()) == total
    assert result == division.static(total, dict(reversed(list(weights.items()))), seed=seed)


@settings(max_examples=300, deadline=None)
@given(
    total=st.integers(min_value=0, max_value=200), room=rooms, fresh=st.booleans(), data=st.data()
)
def test_dynamic_division_respects_room(
    total: int, room: dict[str, int], fresh: bool, data: st.DataObject
) -> None:
    held = data.draw(st.dictionaries(st.sampled_from(sorted(room)), st.integers(0, 10), max_size=3))
    previous = Previous(held)
    capacity = {n: room[n] + held.get(n, 0) for n in room}
    if sum(capacity.values()) < total:
        with pytest.raises(Unschedulable):
            division.dynamic(total, room, previous=previous, fresh=fresh)
        return
    result = division.dynamic(total, room, previous=previous, fresh=fresh)
    assert sum(result.values()) == total
    assert all(result[n] <= capacity[n] for n in result)
    assert result == division.dynamic(total, room, previous=previous, fresh=fresh)


@settings(max_examples=300, deadline=None)
@given(total=st.integers(min_value=0, max_value=200), room=rooms)
def test_aggregated_division_respects_room(total: int, room: dict[str, int]) -> None:
    if sum(room.values()) < total:
        with pytest.raises(Unschedulable):
            division.aggregated(total, room)
        return
    result = division.aggregated(total, room)
    assert sum(result.values()) == total
    assert all(result[n] <= room[n] for n in result)
    # No smaller set of clusters would have fit.
    largest = sorted(room.values(), reverse=True)
    assert sum(largest[: len(result) - 1]) < total or len(result) <= 1
