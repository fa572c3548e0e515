"""Replica division: Karmada's examples as tables, and properties that always hold."""

from __future__ import annotations

import heapq
import random
from collections.abc import Callable
from fractions import Fraction
from unittest import mock

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from archipel import limits
from archipel.core import division
from archipel.core.division import Previous, Unschedulable


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


# -- the arithmetic division gives what handing out one replica at a time gave --------


def one_at_a_time(
    total: int,
    weights: dict[str, int],
    *,
    seed: int = 0,
    capacity: dict[str, int] | None = None,
) -> dict[str, int]:
    """The division as it was first written, one heap step per replica: the reference."""
    if total < 0:
        raise ValueError("total must not be negative")
    names = sorted(weights)
    if not names:
        if total:
            raise Unschedulable("no cluster to place replicas on")
        return {}
    effective = {n: max(0, weights[n]) for n in names}
    if not any(effective.values()):
        effective = dict.fromkeys(names, 1)
    seats = dict.fromkeys(names, 0)
    descending = seed % 2 == 1
    rank = {n: (-i if descending else i) for i, n in enumerate(names)}
    heap = [(-effective[n] / 1.0, 0, rank[n], n) for n in names if effective[n] > 0]
    heapq.heapify(heap)
    remaining = total
    while remaining:
        if not heap:
            room = sum((capacity or {}).get(n, 0) for n in names)
            raise Unschedulable(f"{total} replicas requested but the clusters have room for {room}")
        _, _, _, name = heapq.heappop(heap)
        if capacity is not None and seats[name] >= capacity.get(name, 0):
            continue
        seats[name] += 1
        remaining -= 1
        priority = effective[name] / (2 * seats[name] + 1)
        heapq.heappush(heap, (-priority, seats[name], rank[name], name))
    return seats


def outcome(divide: Callable[[], dict[str, int]]) -> dict[str, int] | str:
    """A division's result, or the refusal's message, so that both can be compared."""
    try:
        return divide()
    except Unschedulable as error:
        return f"Unschedulable: {error}"


many_names = st.sampled_from([f"m{i:02}" for i in range(40)])
# Small weights make many exact ties (the tie rule decides); large ones make few.
any_weight = st.one_of(st.integers(0, 4), st.integers(0, 1000), st.integers(0, 10**6))
uids = st.one_of(st.just(""), st.uuids().map(str))


@settings(max_examples=400, deadline=None)
@given(
    total=st.integers(min_value=0, max_value=3000),
    weights=st.dictionaries(many_names, any_weight, min_size=1, max_size=40),
    uid=uids,
    data=st.data(),
)
def test_webster_equals_one_replica_at_a_time(
    total: int, weights: dict[str, int], uid: str, data: st.DataObject
) -> None:
    seed = division.tie_break_seed(uid)
    capacity = data.draw(
        st.none()
        | st.dictionaries(
            st.sampled_from(sorted(weights)), st.integers(-1, 3000) | st.integers(0, 5)
        )
    )
    expected = outcome(lambda: one_at_a_time(total, weights, seed=seed, capacity=capacity))
    assert outcome(lambda: division.webster(total, weights, seed=seed, capacity=capacity)) == (
        expected
    )


@settings(max_examples=300, deadline=None)
@given(
    total=st.integers(min_value=0, max_value=3000),
    room=st.dictionaries(many_names, st.integers(0, 2000) | st.integers(0, 5), min_size=1),
    uid=uids,
    fresh=st.booleans(),
    data=st.data(),
)
def test_steady_dynamic_and_aggregated_equal_one_replica_at_a_time(
    total: int, room: dict[str, int], uid: str, fresh: bool, data: st.DataObject
) -> None:
    seed = division.tie_break_seed(uid)
    held = data.draw(
        st.dictionaries(st.sampled_from(sorted(room)) | many_names, st.integers(1, 2000))
    )
    previous = Previous(held)

    def both() -> tuple[dict[str, int] | str, dict[str, int] | str]:
        return (
            outcome(
                lambda: division.dynamic(total, room, previous=previous, fresh=fresh, seed=seed)
            ),
            outcome(lambda: division.aggregated(total, room, previous=previous, seed=seed)),
        )

    with mock.patch.object(division, "webster", one_at_a_time):
        expected = both()
    assert both() == expected


def is_webster(seats: dict[str, int], weights: dict[str, int], capacity: dict[str, int]) -> bool:
    """Webster's own criterion, checked without dividing again: no seat can move from
    one cluster to another with room and leave a higher priority behind than it took."""
    lowest_won = min(
        (Fraction(weights[n], 2 * s - 1) for n, s in seats.items() if s and weights[n]),
        default=None,
    )
    highest_lost = max(
        (
            Fraction(w, 2 * seats.get(n, 0) + 1)
            for n, w in weights.items()
            if w and seats.get(n, 0) < capacity.get(n, 0)
        ),
        default=None,
    )
    return lowest_won is None or highest_lost is None or lowest_won >= highest_lost


MOST = limits.MAX_REPLICAS  # 2**31 - 1: one step per replica would never finish


@pytest.mark.parametrize("clusters", [3, 1000])
def test_the_most_replicas_divide_over_static_weights(clusters: int) -> None:
    rng = random.Random(clusters)
    weights = {f"m{i:04}": rng.randint(1, 100) for i in range(clusters)}
    result = division.static(MOST, weights, seed=division.tie_break_seed("uid"))
    assert sum(result.values()) == MOST
    assert is_webster(result, weights, dict.fromkeys(weights, MOST))


@pytest.mark.parametrize("clusters", [3, 1000])
def test_the_most_replicas_divide_when_room_caps_clusters(clusters: int) -> None:
    rng = random.Random(clusters)
    weights = {f"m{i:04}": rng.randint(1, 100) for i in range(clusters)}
    # Every other cluster has almost no room, so the rest must take its share.
    capacity = {n: rng.randint(0, 3) if i % 2 else MOST for i, n in enumerate(weights)}
    result = division.webster(MOST, weights, seed=2, capacity=capacity)
    assert sum(result.values()) == MOST
    assert all(result[n] <= capacity[n] for n in result)
    assert is_webster(result, weights, capacity)


@pytest.mark.parametrize("clusters", [3, 1000])
def test_the_most_replicas_divide_over_dynamic_weights(clusters: int) -> None:
    rng = random.Random(clusters)
    # Room for a little more than asked, unevenly spread: some clusters fill up.
    available = {f"m{i:04}": rng.randint(0, 3 * MOST // clusters) for i in range(clusters)}
    available["m0000"] = MOST
    result = division.dynamic(MOST, available, fresh=True, seed=1)
    assert sum(result.values()) == MOST
    assert all(result[n] <= available[n] for n in result)
    assert is_webster(result, available, available)
    aggregated = division.aggregated(MOST, available)
    assert aggregated == {"m0000": MOST}


@pytest.mark.parametrize("clusters", [3, 1000])
def test_the_most_replicas_scale_up_and_down_steadily(clusters: int) -> None:
    names = [f"m{i:04}" for i in range(clusters)]
    # Down: from the most replicas on every cluster to the most replicas in all.
    huge = Previous(dict.fromkeys(names, MOST))
    down = division.dynamic(MOST, dict.fromkeys(names, 0), previous=huge, seed=7)
    assert sum(down.values()) == MOST
    assert max(down.values()) - min(down.values()) <= 1  # equal holdings shrink equally
    # Up: from a few replicas each to the most; only the new ones are divided.
    few = Previous(dict.fromkeys(names, 5))
    room = dict.fromkeys(names, MOST)
    up = division.dynamic(MOST, room, previous=few, seed=7)
    assert sum(up.values()) == MOST
    assert all(up[n] >= 5 for n in names)
