"""The failover benchmark's figures, computed from recorded events."""

from __future__ import annotations

from typing import Any

from bench.failover import Copy, Event, figures

DIVIDED = ("a", "b")


def _spread(t: float, member: str, replicas: int, ready: int | None = None) -> list[Event]:
    found = Copy(replicas, replicas if ready is None else ready, uid=f"{member}-{replicas}")
    return [Event(t, member, "set", name, found) for name in DIVIDED]


def _start() -> list[Event]:
    events: list[Event] = [Event(0.0, "member3", "cluster", ready="True")]
    for member in ("member1", "member2", "member3"):
        events += _spread(0.0, member, 2)
        events.append(Event(0.0, member, "set", "dup", Copy(6, 6, uid=f"{member}-dup")))
    return events


def _measure(events: list[Event], **overrides: Any) -> dict[str, Any]:
    arguments: dict[str, Any] = {
        "t0": 10.0,
        "t1": 30.0,
        "end": 100.0,
        "floor": 5.0,
        "graceful_eviction_timeout": 30.0,
        "divided": DIVIDED,
        "duplicated": "dup",
    }
    arguments.update(overrides)
    return figures(events, **arguments)


def _failover() -> list[Event]:
    """member3 fails at 10, is tainted at 16, the replicas move (Ready at 19) and it
    returns at 31; its stale copies go at 32 and the Duplicated one is back at 40."""
    events = _start()
    events.append(Event(11.0, "member3", "unreachable"))
    events.append(Event(12.0, "member3", "cluster", ready="False"))
    events.append(Event(16.0, "member3", "cluster", ready="False", tainted=True))
    events += _spread(17.0, "member1", 3, ready=2)
    events += _spread(17.0, "member2", 3, ready=2)
    events += _spread(18.0, "member1", 3)
    events.append(Event(19.0, "member2", "set", "a", Copy(3, 3)))
    events.append(Event(19.5, "member2", "set", "b", Copy(3, 3)))
    stale = {n: Copy(2, 2) for n in DIVIDED} | {"dup": Copy(6, 6, uid="member3-dup")}
    events.append(Event(31.0, "member3", "reset", listing=stale))
    for name in (*DIVIDED, "dup"):
        events.append(Event(32.0, "member3", "delete", name))
    events.append(Event(36.0, "member3", "cluster", ready="True"))
    events.append(Event(38.0, "member3", "set", "dup", Copy(6, 0, uid="new")))
    events.append(Event(40.0, "member3", "set", "dup", Copy(6, 6, uid="new")))
    return events


def test_a_clean_failover_is_timed_from_the_fault_and_the_return() -> None:
    result = _measure(_failover())
    moved = result["fault_to_healthy_elsewhere_seconds"]
    assert moved["per_workload"] == {"a": 9.0, "b": 9.5}
    assert (moved["median"], moved["max"], moved["past_floor_max"]) == (9.25, 9.5, 4.5)
    assert result["noexecute_taint_seen_after_seconds"] == 6.0
    back = result["return"]
    assert back["member3_reachable_after_seconds"] == 1.0
    assert back["stale_replicas_on_return"] == 4
    assert back["stale_copies_gone_after_seconds"] == 2.0
    assert back["member3_ready_again_after_seconds"] == 6.0
    assert back["duplicated_deleted_after_seconds"] == 2.0
    assert back["duplicated_back_and_ready_after_seconds"] == 10.0
    assert back["duplicated_recreated"] is True
    assert result["workloads_lost"]["count"] == 0
    assert result["workloads_lost"]["min_ready_replicas_on_reachable_members"] == 4
    assert result["ran_twice_past_grace"]["replicas"] == 0
    assert result["ran_twice_past_grace"]["deadline_after_seconds"] == 6.0 + 30.0 + 5.0


def test_a_stale_copy_kept_past_the_grace_counts_its_replicas() -> None:
    events = [e for e in _failover() if not (e.kind == "delete" and e.name == "a")]
    result = _measure(events)
    twice = result["ran_twice_past_grace"]
    assert (twice["replicas"], twice["workloads"]) == (2, ["a"])
    # Seen from the deadline on: the copy was there before it, too.
    assert twice["first_seen_after_seconds"] == 41.0
    # Not counted before the deadline (the taint + the timeout + the allowance).
    assert _measure(events, end=50.0)["ran_twice_past_grace"]["replicas"] == 0
    long_grace = _measure(events, graceful_eviction_timeout=600.0)
    assert long_grace["ran_twice_past_grace"]["replicas"] == 0


def test_a_workload_with_no_replicas_left_on_reachable_members_is_lost() -> None:
    events = _failover()
    # member1 and member2 dropped "b" for a moment while member3 was away.
    events.append(Event(25.0, "member1", "delete", "b"))
    events.append(Event(25.0, "member2", "delete", "b"))
    events.append(Event(26.0, "member1", "set", "b", Copy(6, 6)))
    lost = _measure(events)["workloads_lost"]
    assert lost["zero_replicas_on_reachable_members"] == ["b"]
    assert lost["after_recovery"] == []
    assert lost["count"] == 1


def test_a_workload_left_with_other_than_its_replicas_is_lost_after_recovery() -> None:
    events = _failover()
    events.append(Event(50.0, "member2", "set", "a", Copy(1, 1)))
    lost = _measure(events)["workloads_lost"]
    assert lost["after_recovery"] == ["a"]
    assert lost["zero_replicas_on_reachable_members"] == []


def test_a_workload_that_never_moved_has_no_max() -> None:
    events = [e for e in _failover() if not (e.member == "member2" and e.name == "b")]
    moved = _measure(events)["fault_to_healthy_elsewhere_seconds"]
    assert moved["not_moved"] == ["b"]
    assert moved["max"] is None
    assert moved["median"] == 9.0
