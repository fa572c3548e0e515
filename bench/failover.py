"""Cluster failover on real parts: how long a failed member's workloads take to be
healthy elsewhere, how long its stale copies outlive its return, and whether anything
is lost or runs twice.

Starts etcd, 3 ``full`` members (kwok makes Pods Ready), the control plane and an agent
per member, then, for each setting (the defaults, and short timings):

* applies N Deployments spread Divided by static weights 1:1:1, 6 replicas each, and
  one Duplicated Deployment of 6 replicas, and waits until all are Ready everywhere;
* **fault**: stops member3's API server at t0 and times, per Divided workload, until
  its 6 replicas are all on member1/member2 and Ready there (readyReplicas, the
  members' own word). The floor the settings impose (failure threshold + failover
  grace) is reported next to it, with the NoExecute taint's observed time;
* **return**: restarts member3's API server at t1 and times until member3 holds none
  of the moved Divided workloads, and until the Duplicated one is back and Ready there;
* keeps watching until past the graceful eviction timeout, then counts workloads lost
  (none may be missing, or have other than 6 replicas, or have 0 replicas on the
  reachable members at any moment) and replicas that ran twice past the grace (a
  Divided workload still in a reachable member3 while member1+member2 hold all 6).

Every member's Deployments are watched (list, then watch from its resourceVersion);
member3's Ready condition and taints come from the control plane, polled every 0.5 s.
Each change is a timestamped event; the figures are computed from the recorded events
afterwards (:func:`figures`). The default timings take about 12 minutes (the graceful
eviction timeout is 600 s), the short ones about 2.

Run with ``make bench-failover``; results go to ``.local/bench/failover.json``.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import statistics
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

from kubernetes import client as k8s
from kubernetes import watch

from archipel.client import message_to_document
from archipel.core import kinds
from archipel.fleet.controlplane import AgentProcess, ControlPlaneProcess
from archipel.fleet.members import Fleet, Member, default_specs

MEMBERS = ("member1", "member2", "member3")
FAILED = "member3"
OTHERS = ("member1", "member2")
REPLICAS = 6
NAMESPACE = "failover"
DUPLICATED = "dup"
# The old copy must be gone this long after the grace deadline: the task's end, the
# work's deletion and the agent's delete in the member take a moment.
DELETION_ALLOWANCE = 5.0


@dataclasses.dataclass(frozen=True)
class Setting:
    name: str
    failure_threshold: float
    success_threshold: float
    failover_grace: float
    graceful_eviction_timeout: float
    heartbeat_interval: float
    cluster_grace_period: float

    @property
    def floor(self) -> float:
        """The least time from fault to eviction the settings allow."""
        return self.failure_threshold + self.failover_grace

    def args(self) -> tuple[str, ...]:
        return (
            f"--cluster-failure-threshold={self.failure_threshold:g}",
            f"--cluster-success-threshold={self.success_threshold:g}",
            f"--failover-grace-period={self.failover_grace:g}",
            f"--graceful-eviction-timeout={self.graceful_eviction_timeout:g}",
        )

    def describe(self) -> dict[str, Any]:
        return {
            **dataclasses.asdict(self),
            "floor_seconds": self.floor,
            "control_plane_flags": [
                f"--heartbeat-interval={self.heartbeat_interval:g}",
                f"--cluster-grace-period={self.cluster_grace_period:g}",
                *self.args(),
            ],
        }


DEFAULTS = Setting("defaults", 30, 30, 60, 600, 10, 40)
SHORT = Setting("short", 2, 2, 3, 30, 1, 4)
SETTINGS = {s.name: s for s in (DEFAULTS, SHORT)}


# -- what was seen, and when ------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Copy:
    """A Deployment in one member, as its API server said."""

    replicas: int
    ready: int
    uid: str = ""
    current: bool = True
    """The status is of the current spec (observedGeneration >= generation)."""

    @property
    def settled(self) -> bool:
        return self.current and self.ready == self.replicas


EventKind = Literal["set", "delete", "reset", "unreachable", "cluster"]


@dataclasses.dataclass(frozen=True)
class Event:
    t: float
    member: str
    kind: EventKind
    name: str = ""
    copy: Copy | None = None
    listing: Mapping[str, Copy] | None = None
    """For ``reset``: every Deployment the member holds (a fresh list)."""
    ready: str = ""
    """For ``cluster``: the control plane's Ready condition of the member."""
    tainted: bool = False
    """For ``cluster``: whether the member carries a NoExecute taint."""


@dataclasses.dataclass
class View:
    """The fleet at one moment, as the events so far tell it."""

    copies: dict[str, dict[str, Copy]] = dataclasses.field(default_factory=dict)
    reachable: dict[str, bool] = dataclasses.field(default_factory=dict)
    ready: dict[str, str] = dataclasses.field(default_factory=dict)
    tainted: dict[str, bool] = dataclasses.field(default_factory=dict)

    def apply(self, event: Event) -> None:
        held = self.copies.setdefault(event.member, {})
        if event.kind == "set" and event.copy is not None:
            held[event.name] = event.copy
            self.reachable[event.member] = True
        elif event.kind == "delete":
            held.pop(event.name, None)
            self.reachable[event.member] = True
        elif event.kind == "reset":
            self.copies[event.member] = dict(event.listing or {})
            self.reachable[event.member] = True
        elif event.kind == "unreachable":
            self.reachable[event.member] = False
        elif event.kind == "cluster":
            self.ready[event.member] = event.ready
            self.tainted[event.member] = event.tainted

    def copy_of(self, member: str, name: str) -> Copy | None:
        return self.copies.get(member, {}).get(name)

    def reachable_copies(self, name: str) -> list[Copy]:
        return [
            c
            for member, held in self.copies.items()
            if self.reachable.get(member) and (c := held.get(name)) is not None
        ]


def healthy_on(view: View, name: str, members: Sequence[str], total: int = REPLICAS) -> bool:
    """All ``total`` replicas of ``name`` are in these members, and Ready there."""
    if not all(view.reachable.get(m) for m in members):
        return False
    copies = [c for m in members if (c := view.copy_of(m, name)) is not None]
    return sum(c.replicas for c in copies) == total and all(c.settled for c in copies)


def holds_none(view: View, member: str, names: Iterable[str]) -> bool:
    held = view.copies.get(member, {})
    return bool(view.reachable.get(member)) and not any(n in held for n in names)


def duplicated_back(view: View, name: str, member: str, total: int = REPLICAS) -> bool:
    """The member is Ready again in the control plane, and holds ``name`` all Ready."""
    found = view.copy_of(member, name)
    return (
        bool(view.reachable.get(member))
        and view.ready.get(member) == "True"
        and found is not None
        and found.replicas == total
        and found.settled
    )


# -- the figures, from the events -------------------------------------------------------


def figures(
    events: Sequence[Event],
    *,
    t0: float,
    t1: float,
    end: float,
    floor: float,
    graceful_eviction_timeout: float,
    divided: Sequence[str],
    duplicated: str,
    failed: str = FAILED,
    others: Sequence[str] = OTHERS,
    total: int = REPLICAS,
) -> dict[str, Any]:
    """Replays the events and measures; every time is in seconds from t0 or t1.

    Each event starts an interval, up to the next event (or ``end``), in which the
    view it leaves holds; a condition is met at the start of the first interval where
    it holds (or at t0 / t1, when it already held then).
    """
    ordered = sorted(events, key=lambda e: e.t)
    view = View()
    moved: dict[str, float] = {}
    tainted_at: float | None = None
    ready_again: float | None = None
    returned: float | None = None
    stale_on_return = 0
    stale_gone: float | None = None
    dup_uid_before = ""
    dup_deleted: float | None = None
    dup_back: float | None = None
    dup_recreated = False
    lost_during: set[str] = set()
    min_ready_reachable: int | None = None
    twice_replicas = 0
    twice_names: set[str] = set()
    twice_first: float | None = None
    for index, event in enumerate(ordered):
        view.apply(event)
        start = event.t
        stop = ordered[index + 1].t if index + 1 < len(ordered) else end
        if stop <= start and index + 1 < len(ordered):
            continue  # several events at one instant: judge the view they leave together
        if start < t0:
            found = view.copy_of(failed, duplicated)
            if found is not None:
                dup_uid_before = found.uid
        if stop <= t0:
            continue
        since_t0 = max(start, t0) - t0
        for name in divided:
            if name not in moved and healthy_on(view, name, others, total):
                moved[name] = since_t0
        if tainted_at is None and view.tainted.get(failed):
            tainted_at = since_t0
        if start < end:
            for name in (*divided, duplicated):
                copies = view.reachable_copies(name)
                if sum(c.replicas for c in copies) == 0:
                    lost_during.add(name)
            for name in divided:
                ready = sum(c.ready for c in view.reachable_copies(name))
                min_ready_reachable = (
                    ready if min_ready_reachable is None else min(min_ready_reachable, ready)
                )
        if tainted_at is not None:
            deadline = t0 + tainted_at + graceful_eviction_timeout + DELETION_ALLOWANCE
            if stop > deadline and view.reachable.get(failed):
                running_twice = 0
                for name in divided:
                    stale = view.copy_of(failed, name)
                    elsewhere = sum(
                        c.replicas for m in others if (c := view.copy_of(m, name)) is not None
                    )
                    if stale is not None and stale.replicas > 0 and elsewhere == total:
                        running_twice += stale.replicas
                        twice_names.add(name)
                if running_twice and twice_first is None:
                    twice_first = max(start, deadline) - t0
                twice_replicas = max(twice_replicas, running_twice)
        if stop <= t1:
            continue
        since_t1 = max(start, t1) - t1
        if returned is None and view.reachable.get(failed):
            returned = since_t1
            stale_on_return = sum(
                c.replicas for n in divided if (c := view.copy_of(failed, n)) is not None
            )
        if ready_again is None and view.ready.get(failed) == "True":
            ready_again = since_t1
        if stale_gone is None and holds_none(view, failed, divided):
            stale_gone = since_t1
        dup_now = view.copy_of(failed, duplicated)
        if dup_deleted is None and view.reachable.get(failed) and dup_now is None:
            dup_deleted = since_t1
        if dup_back is None and duplicated_back(view, duplicated, failed, total):
            dup_back = since_t1
            dup_recreated = dup_now is not None and dup_now.uid != dup_uid_before

    final = view
    lost_after: list[str] = []
    for name in divided:
        copies = [c for m in final.copies if (c := final.copy_of(m, name)) is not None]
        if not copies or sum(c.replicas for c in copies) != total:
            lost_after.append(name)
    dup_copies = [c for m in final.copies if (c := final.copy_of(m, duplicated)) is not None]
    if not dup_copies or any(c.replicas != total for c in dup_copies):
        lost_after.append(duplicated)
    times = sorted(moved.values())
    missing = sorted(set(divided) - set(moved))
    return {
        "fault_to_healthy_elsewhere_seconds": {
            "workloads": len(divided),
            "moved": len(times),
            "not_moved": missing,
            "median": statistics.median(times) if times else None,
            "max": times[-1] if times and not missing else None,
            "min": times[0] if times else None,
            "floor": floor,
            "past_floor_median": statistics.median(times) - floor if times else None,
            "past_floor_max": times[-1] - floor if times and not missing else None,
            "per_workload": dict(sorted(moved.items())),
        },
        "noexecute_taint_seen_after_seconds": tainted_at,
        "return": {
            "member3_reachable_after_seconds": returned,
            "member3_ready_again_after_seconds": ready_again,
            "stale_replicas_on_return": stale_on_return,
            "stale_copies_gone_after_seconds": stale_gone,
            "duplicated_deleted_after_seconds": dup_deleted,
            "duplicated_back_and_ready_after_seconds": dup_back,
            "duplicated_recreated": dup_recreated,
        },
        "workloads_lost": {
            "count": len(set(lost_after) | lost_during),
            "after_recovery": lost_after,
            "zero_replicas_on_reachable_members": sorted(lost_during),
            "min_ready_replicas_on_reachable_members": min_ready_reachable,
        },
        "ran_twice_past_grace": {
            "replicas": twice_replicas,
            "workloads": sorted(twice_names),
            "first_seen_after_seconds": twice_first,
            "deadline_after_seconds": (
                tainted_at + graceful_eviction_timeout + DELETION_ALLOWANCE
                if tainted_at is not None
                else None
            ),
            "watched_until_seconds": end - t0,
        },
    }


# -- recording --------------------------------------------------------------------------


def _copy(deployment: Any) -> Copy:
    status = deployment.status
    meta = deployment.metadata
    return Copy(
        replicas=int(deployment.spec.replicas or 0),
        ready=int((status.ready_replicas if status else 0) or 0),
        uid=str(meta.uid or ""),
        current=bool(status) and (status.observed_generation or 0) >= (meta.generation or 0),
    )


class Recorder:
    """Timestamps every change of every member's Deployments (list, then watch) and of
    the failed member's Ready condition and taints (the control plane, polled)."""

    def __init__(self, members: list[Member], plane: ControlPlaneProcess, namespace: str) -> None:
        self.events: list[Event] = []
        self.view = View()
        self.changed = threading.Condition()
        self._stop = threading.Event()
        self._threads = [
            threading.Thread(target=self._watch, args=(m, namespace), daemon=True) for m in members
        ]
        self._threads.append(threading.Thread(target=self._poll, args=(plane,), daemon=True))
        for thread in self._threads:
            thread.start()

    def record(self, event: Event) -> None:
        with self.changed:
            self.events.append(event)
            self.view.apply(event)
            self.changed.notify_all()

    def wait(self, check: Callable[[View], bool], timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        with self.changed:
            while not check(self.view):
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self.changed.wait(timeout=min(left, 1.0))
            return True

    def stop(self) -> list[Event]:
        self._stop.set()
        with self.changed:
            return list(self.events)

    def _watch(self, member: Member, namespace: str) -> None:
        apps = k8s.AppsV1Api(member.api_client())
        down = False
        while not self._stop.is_set():
            try:
                listed: Any = apps.list_namespaced_deployment(namespace, _request_timeout=5)
                self.record(
                    Event(
                        time.monotonic(),
                        member.name,
                        "reset",
                        listing={d.metadata.name: _copy(d) for d in listed.items},
                    )
                )
                down = False
                stream = watch.Watch()  # type: ignore[no-untyped-call]
                for event in stream.stream(  # type: ignore[no-untyped-call]
                    apps.list_namespaced_deployment,
                    namespace,
                    resource_version=listed.metadata.resource_version,
                    timeout_seconds=30,
                    _request_timeout=60,
                ):
                    if self._stop.is_set():
                        stream.stop()  # type: ignore[no-untyped-call]
                        break
                    kind = event["type"]
                    found = event["object"]
                    if kind == "ERROR" or isinstance(found, dict):
                        break  # resourceVersion too old: list afresh
                    now = time.monotonic()
                    if kind == "DELETED":
                        self.record(Event(now, member.name, "delete", found.metadata.name))
                    else:
                        self.record(
                            Event(now, member.name, "set", found.metadata.name, _copy(found))
                        )
            except Exception:
                if not down:
                    self.record(Event(time.monotonic(), member.name, "unreachable"))
                    down = True
                time.sleep(0.2)

    def _poll(self, plane: ControlPlaneProcess) -> None:
        api = plane.client()
        last: tuple[str, bool] | None = None
        try:
            while not self._stop.wait(0.5):
                try:
                    found = message_to_document(api.get_object(kinds.MEMBER_CLUSTER, FAILED))
                except Exception:
                    continue
                state = (_ready(found), _tainted(found))
                if state != last:
                    last = state
                    self.record(
                        Event(time.monotonic(), FAILED, "cluster", ready=state[0], tainted=state[1])
                    )
        finally:
            api.close()


def _ready(cluster: dict[str, Any]) -> str:
    for condition in cluster.get("status", {}).get("conditions", []):
        if condition.get("type") == "Ready":
            return str(condition.get("status", "Unknown"))
    return "Unknown"


def _tainted(cluster: dict[str, Any]) -> bool:
    return any(t.get("effect") == "NoExecute" for t in cluster.get("spec", {}).get("taints", []))


# -- the scenario -----------------------------------------------------------------------


def deployment(name: str, replicas: int = REPLICAS) -> dict[str, Any]:
    labels = {"app": name}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "namespace": NAMESPACE, "labels": labels},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": labels},
            "template": {
                "metadata": {"labels": labels},
                "spec": {"containers": [{"name": "c", "image": "nginx:1.27"}]},
            },
        },
    }


def policies() -> list[dict[str, Any]]:
    """Every Deployment Divided 1:1:1; the one named ``dup`` Duplicated (a name selector
    is more specific than a kind-wide one)."""
    divided = {
        "clusterAffinity": {"clusterNames": list(MEMBERS)},
        "replicaScheduling": {
            "replicaSchedulingType": "Divided",
            "replicaDivisionPreference": "Weighted",
            "weightPreference": {
                "staticWeightList": [
                    {"targetCluster": {"clusterNames": [name]}, "weight": 1} for name in MEMBERS
                ]
            },
        },
    }
    duplicated = {
        "clusterAffinity": {"clusterNames": list(MEMBERS)},
        "replicaScheduling": {"replicaSchedulingType": "Duplicated"},
    }
    return [
        {
            "apiVersion": "policy.karmada.io/v1alpha1",
            "kind": "PropagationPolicy",
            "metadata": {"name": name, "namespace": NAMESPACE},
            "spec": {"resourceSelectors": [selector], "placement": placement},
        }
        for name, selector, placement in (
            ("divided", {"apiVersion": "apps/v1", "kind": "Deployment"}, divided),
            (
                "duplicated",
                {"apiVersion": "apps/v1", "kind": "Deployment", "name": DUPLICATED},
                duplicated,
            ),
        )
    ]


def _pending_tasks(plane: ControlPlaneProcess, names: Sequence[str]) -> dict[str, list[str]]:
    """The graceful eviction tasks still on each workload's binding, by source cluster."""
    api = plane.client()
    try:
        found: dict[str, list[str]] = {}
        for name in names:
            binding = api.binding_of("apps/v1", "Deployment", NAMESPACE, name)
            if binding is None:
                continue
            spec = message_to_document(binding).get("spec", {})
            tasks = [t.get("fromCluster", "") for t in spec.get("gracefulEvictionTasks", [])]
            if tasks:
                found[name] = tasks
        return found
    finally:
        api.close()


def _cluster_ready(plane: ControlPlaneProcess, name: str) -> bool:
    api = plane.client()
    try:
        return _ready(message_to_document(api.get_object(kinds.MEMBER_CLUSTER, name))) == "True"
    except Exception:
        return False
    finally:
        api.close()


def _wait(what: str, check: Callable[[], bool], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(0.5)


def run_setting(setting: Setting, *, workloads: int, root: Path) -> dict[str, Any]:
    log = _logger(setting.name)
    directory = root / setting.name
    fleet = Fleet(directory / "fleet", default_specs(len(MEMBERS), profile="full")).start()
    assert fleet.etcd is not None
    plane = ControlPlaneProcess(
        etcd_endpoint=fleet.etcd.endpoint,
        directory=directory / "cp",
        heartbeat_interval=setting.heartbeat_interval,
        cluster_grace_period=setting.cluster_grace_period,
        extra_args=setting.args(),
    )
    agents: list[AgentProcess] = []
    recorder: Recorder | None = None
    divided = [f"web-{index}" for index in range(workloads)]
    names = [*divided, DUPLICATED]
    try:
        plane.start()
        for member in fleet:
            agent = AgentProcess(
                control_plane=plane,
                member=member,
                token_file=plane.join(member),
                heartbeat_interval=setting.heartbeat_interval,
            )
            agent.start()
            agents.append(agent)
        for name in MEMBERS:
            _wait(f"{name} Ready", functools.partial(_cluster_ready, plane, name), timeout=120)
        log("members Ready")
        recorder = Recorder(list(fleet), plane, NAMESPACE)
        api = plane.client()
        try:
            for document in (*policies(), *(deployment(name) for name in names)):
                api.apply_document(document)
        finally:
            api.close()

        def spread(view: View) -> bool:
            return all(
                healthy_on(view, n, MEMBERS) and all(view.copy_of(m, n) for m in MEMBERS)
                for n in divided
            ) and all(healthy_on(view, DUPLICATED, (m,)) for m in MEMBERS)

        if not recorder.wait(spread, timeout=300):
            raise TimeoutError("the workloads never became Ready in every member")
        log(f"{workloads} Divided + 1 Duplicated Ready in every member")

        t0 = time.monotonic()
        fleet[FAILED].stop_apiserver()
        log("member3's API server stopped (t0)")
        recorder.wait(
            lambda view: all(healthy_on(view, n, OTHERS) for n in divided),
            timeout=setting.floor + setting.cluster_grace_period + 240,
        )
        log(f"moved: {time.monotonic() - t0:.1f}s after t0")
        tasks_after_move = _pending_tasks(plane, names)

        t1 = time.monotonic()
        fleet[FAILED].start_apiserver()
        log("member3's API server started (t1)")
        recorder.wait(
            lambda view: (
                holds_none(view, FAILED, divided) and duplicated_back(view, DUPLICATED, FAILED)
            ),
            timeout=setting.success_threshold + setting.cluster_grace_period + 240,
        )
        log(f"returned: {time.monotonic() - t1:.1f}s after t1")

        # Watch past the graceful eviction timeout, counted from the observed taint.
        with recorder.changed:
            tainted = next(
                (e.t for e in recorder.events if e.kind == "cluster" and e.tainted and e.t >= t0),
                t0 + setting.floor,
            )
        until = tainted + setting.graceful_eviction_timeout + DELETION_ALLOWANCE + 5
        if until > time.monotonic():
            log(f"watching until the grace deadline, {until - time.monotonic():.0f}s more")
        while time.monotonic() < until:
            time.sleep(min(30.0, until - time.monotonic()))
            log(f"{max(0.0, until - time.monotonic()):.0f}s to go")
        end = time.monotonic()
        events = recorder.stop()
        result = figures(
            events,
            t0=t0,
            t1=t1,
            end=end,
            floor=setting.floor,
            graceful_eviction_timeout=setting.graceful_eviction_timeout,
            divided=divided,
            duplicated=DUPLICATED,
        )
        result["setting"] = setting.describe()
        result["workloads"] = {"divided": workloads, "duplicated": 1, "replicas": REPLICAS}
        result["eviction_tasks_pending"] = {
            "when_moved": tasks_after_move,
            "at_end": _pending_tasks(plane, names),
        }
        result["events_recorded"] = len(events)
        result["member3_timeline"] = [
            {
                "after_t0_seconds": round(e.t - t0, 3),
                "event": e.kind,
                **(
                    {"ready": e.ready, "tainted": e.tainted}
                    if e.kind == "cluster"
                    else {"deployments": len(e.listing or {})}
                    if e.kind == "reset"
                    else {}
                ),
            }
            for e in events
            if e.member == FAILED and e.kind in ("cluster", "reset", "unreachable") and e.t >= t0
        ]
        result["t1_after_t0_seconds"] = t1 - t0
        return result
    finally:
        if recorder is not None:
            recorder.stop()
        for agent in agents:
            agent.stop()
        plane.stop()
        fleet.stop()


def _logger(prefix: str) -> Callable[[str], None]:
    started = time.monotonic()

    def log(message: str) -> None:
        print(f"[{prefix} {time.monotonic() - started:6.1f}s] {message}", flush=True)

    return log


def _seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def table(results: dict[str, Any]) -> str:
    rows = [("figure", *results["settings"])]

    def row(label: str, pick: Callable[[dict[str, Any]], str]) -> None:
        rows.append((label, *(pick(results["settings"][s]) for s in results["settings"])))

    def moved(r: dict[str, Any]) -> dict[str, Any]:
        found: dict[str, Any] = r["fault_to_healthy_elsewhere_seconds"]
        return found

    row("floor (failure threshold + failover grace)", lambda r: _seconds(moved(r)["floor"]))
    row(
        "NoExecute taint seen after t0", lambda r: _seconds(r["noexecute_taint_seen_after_seconds"])
    )
    row(
        "fault -> healthy elsewhere, median / max",
        lambda r: f"{_seconds(moved(r)['median'])} / {_seconds(moved(r)['max'])}",
    )
    row(
        "  past the floor, median / max",
        lambda r: (
            f"{_seconds(moved(r)['past_floor_median'])} / {_seconds(moved(r)['past_floor_max'])}"
        ),
    )
    row(
        "return -> member3 Ready",
        lambda r: _seconds(r["return"]["member3_ready_again_after_seconds"]),
    )
    row(
        "return -> stale Divided copies gone",
        lambda r: _seconds(r["return"]["stale_copies_gone_after_seconds"]),
    )
    row(
        "  stale replicas in member3 on return",
        lambda r: str(r["return"]["stale_replicas_on_return"]),
    )
    row(
        "return -> Duplicated back and Ready",
        lambda r: _seconds(r["return"]["duplicated_back_and_ready_after_seconds"]),
    )
    row("workloads lost", lambda r: str(r["workloads_lost"]["count"]))
    row("replicas ran twice past the grace", lambda r: str(r["ran_twice_past_grace"]["replicas"]))
    width = [max(len(str(r[i])) for r in rows) for i in range(len(rows[0]))]
    return "\n".join(
        "  ".join(str(c).ljust(w) for c, w in zip(r, width, strict=True)) for r in rows
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="5 Deployments instead of 20")
    parser.add_argument("--workloads", type=int, default=None)
    parser.add_argument(
        "--settings", nargs="+", choices=sorted(SETTINGS), default=["short", "defaults"]
    )
    parser.add_argument("--output", type=Path, default=Path(".local/bench/failover.json"))
    args = parser.parse_args()
    workloads = args.workloads or (5 if args.quick else 20)
    root = Path(tempfile.mkdtemp(prefix="archipel-bench-failover-"))
    results: dict[str, Any] = {"workloads": workloads, "settings": {}}
    for name in args.settings:
        results["settings"][name] = run_setting(SETTINGS[name], workloads=workloads, root=root)
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(json.dumps(results, indent=2))
    print(f"\n{workloads} Divided Deployments (6 replicas, 1:1:1) + 1 Duplicated, 3 full members")
    print(table(results))


if __name__ == "__main__":
    main()
