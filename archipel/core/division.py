"""Replica division: how a Divided binding's replicas are split over its clusters.

Pure functions, following Karmada's division semantics:

* static weights are apportioned with the Webster (Sainte-Laguë) method: each next
  replica goes to the cluster with the highest ``weight / (2 * seats + 1)``; ties go to
  the cluster with fewer seats, then by name, ascending, or descending when the
  binding's tie-break seed is odd (Karmada hashes the binding's UID for it), so equal
  clusters do not always favour the same name;
* dynamic weights use each cluster's available replicas as its weight and never give
  a cluster more than it has room for;
* Aggregated uses the fewest clusters whose room covers the request;
* *steady* division (the default) changes as little as possible: scaling up spreads
  only the new replicas, scaling down shrinks every cluster in proportion; *fresh*
  division (a manual reschedule) starts over.

Division costs O(clusters log clusters) however many replicas there are (a
bisection adds a factor of log(replicas) when clusters' room caps them): it runs on
the event loop, and replica counts go up to 2**31 - 1.
"""

from __future__ import annotations

import dataclasses
import heapq
from collections.abc import Mapping, Sequence


class Unschedulable(Exception):
    """The clusters cannot hold the replicas; the message says why."""


@dataclasses.dataclass(frozen=True)
class Previous:
    """A binding's earlier result: cluster name to replicas."""

    replicas: Mapping[str, int]

    @property
    def total(self) -> int:
        return sum(self.replicas.values())


def tie_break_seed(uid: str) -> int:
    """Karmada's FNV-32a of the binding UID; the parity picks the name order for ties."""
    if not uid:
        return 0
    value = 0x811C9DC5
    for byte in uid.encode():
        value = ((value ^ byte) * 0x01000193) & 0xFFFFFFFF
    return value


def webster(
    total: int,
    weights: Mapping[str, int],
    *,
    seed: int = 0,
    capacity: Mapping[str, int] | None = None,
) -> dict[str, int]:
    """Apportion ``total`` seats by weight; ``capacity`` caps what a cluster can take.

    Clusters with no weight take no seats, unless every weight is zero, in which case
    they count equally (Karmada's rule for weight lists that match nothing).

    The result is the one handing out seats one at a time would give (each to the
    highest ``weight / (2 * seats + 1)``, ties as the module says, a full cluster
    leaving the race), but it costs O(clusters * log) whatever ``total`` is: a
    divisor gives every cluster its seats at once, and a heap hands out the few
    (fewer than one per cluster) that are left.
    """
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
    racing = [n for n in names if effective[n] > 0]
    # Without a capacity nobody can take more than everything.
    cap = {n: total if capacity is None else max(0, capacity.get(n, 0)) for n in racing}
    if sum(cap.values()) < total:
        room = sum((capacity or {}).get(n, 0) for n in names)
        raise Unschedulable(f"{total} replicas requested but the clusters have room for {room}")
    if not total:
        return seats
    if total > len(racing):
        # Only then is there anything to give at once; fewer seats than clusters go
        # one at a time below, which is cheaper than finding the threshold.
        for name, count in _below_threshold(total, {n: effective[n] for n in racing}, cap).items():
            seats[name] = count
    remaining = total - sum(seats.values())
    descending = seed % 2 == 1
    # Name order for ties: rank 0 wins; heapq pops the smallest key first. Priorities
    # are floats, as they always were (and as cheap as they must be on this hot
    # path); two different ones only round to the same float with weights and seats
    # near 2**26 each, and then the tie rule decides.
    rank = {n: (-i if descending else i) for i, n in enumerate(names)}
    heap = [
        (-effective[n] / (2 * seats[n] + 1), seats[n], rank[n], n)
        for n in racing
        if seats[n] < cap[n]
    ]
    heapq.heapify(heap)
    while remaining:
        _, _, _, name = heapq.heappop(heap)
        seats[name] += 1
        remaining -= 1
        if seats[name] < cap[name]:  # a full cluster leaves the race
            priority = -effective[name] / (2 * seats[name] + 1)
            heapq.heappush(heap, (priority, seats[name], rank[name], name))
    return seats


def _below_threshold(
    total: int, weights: Mapping[str, int], cap: Mapping[str, int]
) -> dict[str, int]:
    """Seats every cluster is sure to win, at most one per cluster short of ``total``.

    Handing out seats one at a time gives the ``total`` highest priorities
    ``w / (2k + 1)`` (k = 0 .. cap - 1) of all clusters. Every priority above a
    threshold ``t`` is among them as long as there are at most ``total`` such
    priorities, so they are safe to give at once: a cluster has ``ceil(w / t) // 2``
    of them, or its cap. With ``t = W / (2m)`` (``W`` the sum of the weights) that
    is ``ceil(2mw / W) // 2``, all in integers. Without caps, ``m = total - n // 2``
    fits and leaves at most ``n`` seats over; caps take seats away, and then ``m`` is
    the largest that still fits, found by bisection (one more would give each cluster
    at most one seat more, so again fewer than ``n`` are left).
    """
    whole = sum(weights.values())

    def sure(m: int) -> dict[str, int]:
        return {n: min(cap[n], -(-2 * m * w // whole) // 2) for n, w in weights.items()}

    low = max(0, total - len(weights) // 2)
    seats = sure(low)
    if total - sum(seats.values()) <= len(weights):
        return seats
    # At ``high`` every cluster reaches its cap (weights are whole numbers, at least 1).
    high = max(cap.values()) * whole
    if sum(sure(high).values()) <= total:
        return sure(high)
    while high - low > 1:  # invariant: sure(low) fits in total, sure(high) does not
        middle = (low + high) // 2
        if sum(sure(middle).values()) <= total:
            low = middle
        else:
            high = middle
    return sure(low)


def static(total: int, weights: Mapping[str, int], *, seed: int = 0) -> dict[str, int]:
    """Static weights (Karmada's staticWeightList), not sticky to earlier results."""
    return {n: r for n, r in webster(total, weights, seed=seed).items() if r}


def dynamic(
    total: int,
    available: Mapping[str, int],
    *,
    previous: Previous | None = None,
    fresh: bool = False,
    seed: int = 0,
) -> dict[str, int]:
    """Weights from available replicas; no cluster gets more than it has room for.

    ``available`` is each cluster's room for *new* replicas; what a cluster already
    runs for this binding (``previous``) counts as room too.
    """
    held = dict(previous.replicas) if previous is not None else {}
    room = {n: max(0, available.get(n, 0)) + held.get(n, 0) for n in available}
    if sum(room.values()) < total:
        raise Unschedulable(
            f"{total} replicas requested but the clusters have room for {sum(room.values())}"
        )
    kept = {n: r for n, r in held.items() if n in room}
    if fresh or not kept:
        return _nonzero(webster(total, room, seed=seed, capacity=room))
    current = sum(kept.values())
    if total <= current:
        # Scale down: every cluster shrinks in proportion to what it holds.
        return _nonzero(webster(total, kept, seed=seed, capacity=kept))
    # Scale up: only the new replicas are divided, by the room that is left.
    spare = {n: room[n] - kept.get(n, 0) for n in room}
    extra = webster(total - current, spare, seed=seed, capacity=spare)
    return _nonzero({n: kept.get(n, 0) + extra.get(n, 0) for n in room})


def aggregated(
    total: int,
    available: Mapping[str, int],
    *,
    previous: Previous | None = None,
    seed: int = 0,
) -> dict[str, int]:
    """The fewest clusters that fit, preferring those already used, then the roomiest."""
    held = dict(previous.replicas) if previous is not None else {}
    room = {n: max(0, available.get(n, 0)) + held.get(n, 0) for n in available}
    if sum(room.values()) < total:
        raise Unschedulable(
            f"{total} replicas requested but the clusters have room for {sum(room.values())}"
        )
    order = sorted(room, key=lambda n: (0 if held.get(n) else 1, -room[n], n))
    chosen: list[str] = []
    covered = 0
    for name in order:
        if covered >= total:
            break
        if room[name] > 0:
            chosen.append(name)
            covered += room[name]
    picked = {n: room[n] for n in chosen}
    return _nonzero(webster(total, picked, seed=seed, capacity=picked))


def duplicated(total: int, clusters: Sequence[str]) -> dict[str, int]:
    return dict.fromkeys(clusters, total)


def _nonzero(division: Mapping[str, int]) -> dict[str, int]:
    return {n: r for n, r in sorted(division.items()) if r}
