"""Which replica holds which shard: the pure part of controlplane/shards.py."""

from __future__ import annotations

import collections

import pytest

from controlplane.shards import assignment, shard_of


def test_no_replica_holds_nothing() -> None:
    assert assignment([], 8) == {}


def test_one_replica_holds_every_shard() -> None:
    assert assignment(["a"], 8) == dict.fromkeys(range(8), "a")


def test_every_replica_computes_the_same_assignment_whatever_the_order() -> None:
    assert assignment(["a", "b", "c"], 32) == assignment(["c", "a", "b", "a"], 32)


@pytest.mark.parametrize("replicas", [2, 3, 5])
def test_shards_spread_over_the_replicas(replicas: int) -> None:
    names = [f"replica-{index}" for index in range(replicas)]
    counts = collections.Counter(assignment(names, 256).values())
    assert set(counts) == set(names)
    fair = 256 / replicas
    assert all(0.6 * fair <= count <= 1.4 * fair for count in counts.values()), counts


def test_a_replica_joining_takes_shards_only_from_the_others_never_moves_theirs() -> None:
    before = assignment(["a", "b"], 64)
    after = assignment(["a", "b", "c"], 64)
    moved = {shard for shard in before if before[shard] != after[shard]}
    assert moved and all(after[shard] == "c" for shard in moved)


def test_a_replica_leaving_hands_over_only_its_own_shards() -> None:
    before = assignment(["a", "b", "c"], 64)
    after = assignment(["a", "b"], 64)
    assert {shard for shard in before if before[shard] != after[shard]} == {
        shard for shard, replica in before.items() if replica == "c"
    }


@pytest.mark.parametrize(
    ("key", "count", "shard"),
    [
        # Fixed values: a key's shard must never change between versions or processes.
        ("propagationbindings/default/web-deployment", 32, 14),
        ("memberclusters/_/member1", 1, 0),
    ],
)
def test_a_keys_shard_is_stable(key: str, count: int, shard: int) -> None:
    assert shard_of(key, count) == shard
    assert 0 <= shard_of(key, count) < count


def test_keys_spread_over_the_shards() -> None:
    counts = collections.Counter(shard_of(f"templates/ns/t-{index}", 16) for index in range(1600))
    assert len(counts) == 16 and min(counts.values()) > 60
