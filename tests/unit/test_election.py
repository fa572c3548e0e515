"""The agents' leader election (agent/election.py): its decisions as a table, its loop
on a fake Lease API, and the fence every write of the works goes through.

The loop tests use short timings and wait only for what must happen (a term won, a
term lost); nothing here waits to see that something does not happen.
"""

from __future__ import annotations

import asyncio
import copy
import datetime
import time
from collections.abc import Callable
from typing import Any, TypeVar

import pytest

from agent.election import (
    Elector,
    Seen,
    Term,
    Timing,
    Wait,
    Write,
    decide,
    default_identity,
    micro_time,
    observe,
    released,
)
from agent.kube import NotLeader, RefusedError
from agent.works import WorkManager
from tests.unit.agentfakes import FakeKube, MemberLedger, configmap, work

R = TypeVar("R")
WALL = datetime.datetime(2026, 12, 2, 9, 30, 0, tzinfo=datetime.UTC)
NAME, NAMESPACE = "archipel-agent-member1", "archipel-system"


def lease(holder: str, transitions: int, *, version: str = "7", duration: int = 15) -> Any:
    return {
        "apiVersion": "coordination.k8s.io/v1",
        "kind": "Lease",
        "metadata": {
            "name": NAME,
            "namespace": NAMESPACE,
            "resourceVersion": version,
            "uid": "u",
            "managedFields": [{"manager": "x"}],
        },
        "spec": {
            "holderIdentity": holder,
            "leaseDurationSeconds": duration,
            "acquireTime": "2026-12-02T09:00:00.000000Z",
            "renewTime": "2026-12-02T09:29:58.000000Z",
            "leaseTransitions": transitions,
        },
    }


def decide_for(found: Any, seen: Seen | None, *, me: str = "a", now: float = 100.0) -> Any:
    return decide(
        found,
        observe(seen, found, now),
        identity=me,
        name=NAME,
        namespace=NAMESPACE,
        lease_duration=15,
        now=now,
        wall=WALL,
    )


# -- decisions ---------------------------------------------------------------------------


def test_a_missing_lease_is_created_at_an_epoch_from_the_clock() -> None:
    decision = decide_for(None, None)
    assert isinstance(decision, Write) and decision.create
    # A Lease deleted and created again never goes back to an epoch already seen.
    assert decision.epoch == int(WALL.timestamp()) > 0
    spec = decision.body["spec"]
    assert spec["holderIdentity"] == "a"
    assert spec["leaseTransitions"] == decision.epoch
    assert spec["leaseDurationSeconds"] == 15
    assert spec["renewTime"] == spec["acquireTime"] == "2026-12-02T09:30:00.000000Z"
    assert "resourceVersion" not in decision.body["metadata"]


@pytest.mark.parametrize(
    ("holder", "seen_at", "now", "expected"),
    [
        # Mine: renewed at the same epoch, whatever the clock.
        ("a", 0.0, 100.0, ("write", 4)),
        # Another's, seen changing 10 s ago: 5 s left of its 15.
        ("b", 90.0, 100.0, ("wait", 4, 5.0)),
        # Another's, unchanged for the whole lease duration: taken, one transition on.
        ("b", 85.0, 100.0, ("write", 5)),
        ("b", 10.0, 100.0, ("write", 5)),
        # Released (no holder): taken at once.
        ("", 99.0, 100.0, ("write", 5)),
    ],
)
def test_what_a_candidate_does_with_the_lease(
    holder: str, seen_at: float, now: float, expected: tuple[Any, ...]
) -> None:
    found = lease(holder, 4)
    decision = decide_for(found, Seen("7", seen_at), now=now)
    if expected[0] == "wait":
        assert decision == Wait(holder=holder, epoch=expected[1], expires_in=expected[2])
        return
    assert isinstance(decision, Write) and not decision.create
    assert decision.epoch == expected[1]
    spec = decision.body["spec"]
    assert (spec["holderIdentity"], spec["leaseTransitions"]) == ("a", expected[1])
    # Optimistic concurrency: replaced at the version read, and nothing the server owns.
    assert decision.body["metadata"] == {
        "name": NAME,
        "namespace": NAMESPACE,
        "resourceVersion": "7",
    }
    if holder == "a":
        assert spec["acquireTime"] == "2026-12-02T09:00:00.000000Z"  # kept on renewal
    else:
        assert spec["acquireTime"] == "2026-12-02T09:30:00.000000Z"


def test_expiry_is_counted_from_when_the_candidate_saw_the_lease_change() -> None:
    # The renewTime says long ago (another node's clock), but this candidate has only
    # just seen the lease: it waits a whole duration, trusting no clock but its own.
    first = observe(None, lease("b", 4), 100.0)
    assert first == Seen("7", 100.0)
    assert isinstance(decide_for(lease("b", 4), first, now=100.0), Wait)
    # Unchanged: the first sighting counts. Changed (renewed): the clock starts again.
    assert observe(first, lease("b", 4), 110.0) == first
    assert observe(first, lease("b", 4, version="8"), 110.0) == Seen("8", 110.0)
    # The duration is the one in the Lease (a released one says 1 s).
    waiting = decide_for(lease("b", 4, duration=30), Seen("7", 90.0), now=100.0)
    assert waiting == Wait(holder="b", epoch=4, expires_in=20.0)


def test_releasing_leaves_no_holder_and_only_the_holder_releases() -> None:
    body = released(lease("a", 4), "a", WALL)
    assert body is not None
    assert body["spec"]["holderIdentity"] == ""
    assert body["spec"]["leaseDurationSeconds"] == 1
    assert body["spec"]["leaseTransitions"] == 4
    assert body["metadata"]["resourceVersion"] == "7"
    assert released(lease("b", 4), "a", WALL) is None


@pytest.mark.parametrize(
    ("timing", "problem"),
    [
        (Timing(), None),
        (Timing(4, 3, 1), None),
        (Timing(10, 10, 2), "longer than the renew deadline"),
        (Timing(15, 2, 2), "1.2 retry periods"),
        (Timing(1.5, 1, 0.2), "whole number"),
        (Timing(0, 0, 0), "whole number"),
    ],
)
def test_timings_are_checked_as_client_go_does(timing: Timing, problem: str | None) -> None:
    found = timing.problem()
    assert (found is None) if problem is None else (found is not None and problem in found)


def test_micro_time_always_has_six_digits() -> None:
    assert micro_time(WALL) == "2026-12-02T09:30:00.000000Z"
    later = WALL.replace(microsecond=5)
    assert micro_time(later) == "2026-12-02T09:30:00.000005Z"


def test_the_identity_is_the_pods_name_when_there_is_one() -> None:
    assert default_identity({"ARCHIPEL_POD_NAME": "agent-x1"}, "node", 7) == "agent-x1"
    assert default_identity({"POD_NAME": "agent-y"}, "node", 7) == "agent-y"
    assert default_identity({}, "node", 7) == "node-7"


def test_a_term_fences_at_its_deadline_and_when_ended() -> None:
    term = Term(identity="a", epoch=3, valid_until=time.monotonic() + 60)
    term.check()
    term.valid_until = time.monotonic() - 0.001
    with pytest.raises(NotLeader, match="epoch 3"):
        term.check()
    term = Term(identity="a", epoch=3, valid_until=time.monotonic() + 60)
    term.end()
    assert term.lost.is_set()
    with pytest.raises(NotLeader):
        term.check()


# -- the fence on the works' writes --------------------------------------------------------


async def test_a_fenced_agent_applies_nothing_and_records_nothing() -> None:
    kube = FakeKube()
    ledger = MemberLedger(kube)
    sent: list[Any] = []

    def fence() -> None:
        raise NotLeader("no longer leads")

    ledger.fence = fence
    works = WorkManager(
        kube,  # type: ignore[arg-type]
        ledger,
        send=sent.append,
        watch=kube.start_watch,
        fence=fence,
    )
    works.receive(work(configmap("one", {"k": "v"})))
    with pytest.raises(NotLeader):
        await works.reconcile("w1")
    assert kube.applied == []
    assert kube.ledger_maps() == []
    # No report of a failure: the next leader reports on the work.
    assert [m for m in sent if m.HasField("status")] == []


# -- the loop, on a fake Lease API -----------------------------------------------------------


class Leases:
    """One Lease, as the API server keeps it: a resourceVersion per write, 409 for a
    write at a stale one (or a create of one that exists), 404 when there is none."""

    def __init__(self) -> None:
        self.stored: dict[str, Any] | None = None
        self.version = 0

    def get(self) -> dict[str, Any]:
        if self.stored is None:
            raise RefusedError("404", 404)
        return copy.deepcopy(self.stored)

    def send(self, method: str, body: dict[str, Any]) -> dict[str, Any]:
        if method == "POST" and self.stored is not None:
            raise RefusedError("409 exists", 409)
        if method == "PUT":
            assert self.stored is not None
            if (
                body["metadata"].get("resourceVersion")
                != self.stored["metadata"]["resourceVersion"]
            ):
                raise RefusedError("409 conflict", 409)
        self.version += 1
        self.stored = copy.deepcopy(body)
        self.stored["metadata"]["resourceVersion"] = str(self.version)
        return copy.deepcopy(self.stored)


class LeaseKube:
    """What the elector uses of Kube, on a shared :class:`Leases`; ``cut`` makes every
    call fail as an unreachable API server would."""

    def __init__(self, leases: Leases) -> None:
        self.leases = leases
        self.cut = False

    async def call_lease(self, function: Callable[..., R], *args: Any, **kwargs: Any) -> R:
        await asyncio.sleep(0)
        return function(*args, **kwargs)

    def raw_get(self, path: str, *, timeout: float = 5) -> Any:
        if self.cut:
            raise OSError("connection refused")
        return self.leases.get()

    def raw_send(self, method: str, path: str, body: Any, *, timeout: float = 5) -> Any:
        if self.cut:
            raise OSError("connection refused")
        return self.leases.send(method, body)

    def ensure_namespace(self, name: str) -> bool:
        return False


def elector(kube: LeaseKube, identity: str) -> Elector:
    return Elector(
        kube,  # type: ignore[arg-type]
        name=NAME,
        namespace=NAMESPACE,
        identity=identity,
        timing=Timing(lease_duration=1, renew_deadline=0.5, retry_period=0.1),
    )


async def test_one_leads_the_other_takes_over_when_it_cannot_renew() -> None:
    leases = Leases()
    kube_a, kube_b = LeaseKube(leases), LeaseKube(leases)
    a = elector(kube_a, "a")
    running_a = asyncio.create_task(a.run())
    try:
        term_a = await asyncio.wait_for(a.next_term(), timeout=10)
        b = elector(kube_b, "b")
        running_b = asyncio.create_task(b.run())
        try:
            # b has seen a's lease before a loses it: its clock on the lease runs.
            await asyncio.wait_for(_until(lambda: b._seen is not None), timeout=10)
            assert b.term is None
            kube_a.cut = True  # a cannot reach the member any more
            await asyncio.wait_for(term_a.lost.wait(), timeout=10)
            with pytest.raises(NotLeader):
                term_a.check()
            term_b = await asyncio.wait_for(b.next_term(), timeout=10)
            assert term_b.epoch == term_a.epoch + 1
            assert leases.get()["spec"]["holderIdentity"] == "b"
            # a, back, stands by: the lease is b's.
            kube_a.cut = False
            await asyncio.wait_for(_until(lambda: a._last_holder == ("b", term_b.epoch)), 10)
            assert a.term is None
        finally:
            running_b.cancel()
            await asyncio.gather(running_b, return_exceptions=True)
            await b.release()
    finally:
        running_a.cancel()
        await asyncio.gather(running_a, return_exceptions=True)
    assert leases.get()["spec"]["holderIdentity"] == ""  # b released it on the way out


async def test_a_released_lease_is_taken_at_the_next_try() -> None:
    leases = Leases()
    a, b = elector(LeaseKube(leases), "a"), elector(LeaseKube(leases), "b")
    running_a = asyncio.create_task(a.run())
    running_b = asyncio.create_task(b.run())
    try:
        term_a = await asyncio.wait_for(a.next_term(), timeout=10)
        await asyncio.wait_for(_until(lambda: b._seen is not None), timeout=10)
        running_a.cancel()
        await asyncio.gather(running_a, return_exceptions=True)
        await a.release()
        assert term_a.lost.is_set()
        term_b = await asyncio.wait_for(b.next_term(), timeout=10)
        assert term_b.epoch == term_a.epoch + 1
    finally:
        for task in (running_a, running_b):
            task.cancel()
        await asyncio.gather(running_a, running_b, return_exceptions=True)


async def _until(check: Callable[[], bool]) -> None:
    """Until ``check()`` holds (the callers bound it with wait_for)."""
    for _ in iter(int, 1):
        if check():
            return
        await asyncio.sleep(0.01)


def test_the_agents_flags() -> None:
    from agent.main import parse_args, timing

    assert parse_args([]).leader_elect is False  # a lone agent run by hand
    assert parse_args(["--leader-elect"]).leader_elect is True
    assert parse_args(["--leader-elect=true"]).leader_elect is True
    assert parse_args(["--leader-elect=false"]).leader_elect is False
    assert timing(parse_args([])) == Timing(15, 10, 2)
    with pytest.raises(SystemExit):
        parse_args(["--leader-elect", "--leader-elect-renew-deadline=20"])
    with pytest.raises(SystemExit):
        parse_args(["--leader-elect=maybe"])
