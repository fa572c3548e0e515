"""The cluster controller's decisions as tables: Ready, taints, heartbeats, removal,
and the cluster side of failover (damping, NoExecute taints, halt, rate limit).

Each case is an observed cluster (with its liveness record and both clocks) and the
plan is checked write by write. Times are fixed, so every timestamp the plan writes
(condition transitions, taints, lastHeartbeatTime) is asserted exactly.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Any

import pytest
from google.protobuf import json_format
from prometheus_client import REGISTRY

from archipel.core import kinds, names
from archipel.core.conditions import find, set_condition
from archipel.core.names import CLUSTER_LABEL
from archipel.v1alpha1 import agent_pb2, cluster_pb2, policy_pb2, work_pb2
from controlplane.context import FINALIZER, WORK_FINALIZER
from controlplane.controllers.cluster import (
    CREDENTIALS,
    POLICY_EVICTION_REASON,
    Evictions,
    Liveness,
    Observed,
    RecordEviction,
    plan,
    version_skew,
)
from controlplane.plan import Delete, Plan, Purge, Update

NOW_MONOTONIC = 10_000.0
NOW_WALL = 1_750_000_000.0
LONG_AGO = NOW_MONOTONIC - 3_600  # the process started an hour ago
GRACE = 40.0
KEY = "memberclusters/_/member1"
NOT_READY = names.NOT_READY_TAINT
UNREACHABLE = names.UNREACHABLE_TAINT
OLD_WALL = 1_700_000_000  # what older writes stamped
FAILURE = 30.0
SUCCESS = 30.0
FAILOVER = 60.0
INTERVAL = 10.0
STEADY = 3_600.0  # the agent has reported what it reports for an hour


def member(
    *,
    ready: str | None = None,
    taints: Sequence[tuple[str, str]] = (),
    finalizers: Sequence[str] = (FINALIZER,),
    deleting: bool = False,
    ready_since: float = OLD_WALL,
    failover: tuple[str, str] | None = None,
) -> cluster_pb2.MemberCluster:
    """A stored cluster; ``ready_since`` is its Ready condition's lastTransitionTime
    (wall clock), ``failover`` its Failover condition's status and reason."""
    result = cluster_pb2.MemberCluster()
    result.metadata.name = "member1"
    result.metadata.resource_version = "41"
    result.metadata.generation = 2
    result.metadata.finalizers.extend(finalizers)
    for key, effect in taints:
        taint = result.spec.taints.add(key=key, effect=effect)
        taint.time_added.FromSeconds(OLD_WALL)
    if ready is not None:
        set_condition(result.status.conditions, "Ready", ready, "Before", "as it was")
        condition = find(result.status.conditions, "Ready")
        assert condition is not None
        condition.last_transition_time.FromNanoseconds(int(ready_since * 1e9))
        # A cluster with a Ready condition other than "waiting" has heard from its agent.
        result.status.agent.connected = True
        result.status.agent.version = "0.9.0"
        result.status.agent.last_heartbeat_time.FromSeconds(OLD_WALL)
    if failover is not None:
        set_condition(result.status.conditions, "Failover", *failover, "as it was")
    if deleting:
        result.metadata.deletion_timestamp.FromSeconds(OLD_WALL)
    return result


def beat(
    *, api_server_ready: bool = True, message: str = "", version: str = "v1.31.2"
) -> agent_pb2.Heartbeat:
    result = agent_pb2.Heartbeat(
        kubernetes_version=version,
        api_server_ready=api_server_ready,
        message=message,
        cluster_id="kube-system-uid",
    )
    result.node_summary.total_num = 3
    result.node_summary.ready_num = 3
    result.resource_summary.allocatable["cpu"] = "12"
    result.api_enablements.add(group_version="apps/v1").resources.add(
        name="deployments", kind="Deployment"
    )
    return result


def live(
    heartbeat: agent_pb2.Heartbeat | None = None, *, age: float = 1.0, steady: float = STEADY
) -> Liveness:
    """The liveness record of an agent whose last heartbeat came ``age`` seconds ago,
    reporting its API server's health as it does for ``steady`` seconds."""
    return Liveness(
        heartbeat=heartbeat,
        received_at=NOW_MONOTONIC - age,
        connected=heartbeat is not None,
        agent_version="0.9.0" if heartbeat is not None else "",
        steady_since=NOW_MONOTONIC - steady,
    )


def observe(
    cluster: cluster_pb2.MemberCluster,
    record: Liveness | None = None,
    *,
    started: float = LONG_AGO,
    works: Sequence[work_pb2.PropagationWork] = (),
    credential_revision: int = 0,
    liveness: dict[str, Liveness] | None = None,
    other_clusters: int = 1,
    other_not_ready: int = 0,
    next_eviction_at: float = -math.inf,
    evictions: Evictions | None = None,
    taint_policies: Sequence[policy_pb2.ClusterTaintPolicy] = (),
    default_failover_taints: bool = True,
) -> Observed:
    """By default one other cluster, Ready, and the rate limit allows an eviction."""
    return Observed(
        cluster=cluster,
        works=tuple(works),
        live=record if record is not None else Liveness(),
        now_monotonic=NOW_MONOTONIC,
        now_wall=NOW_WALL,
        started=started,
        grace_period=GRACE,
        credential_revision=credential_revision,
        liveness=liveness if liveness is not None else {},
        failure_threshold=FAILURE,
        success_threshold=SUCCESS,
        failover_grace_period=FAILOVER,
        unhealthy_threshold=0.55,
        eviction_interval=INTERVAL,
        other_clusters=other_clusters,
        other_not_ready=other_not_ready,
        next_eviction_at=next_eviction_at,
        evictions=evictions if evictions is not None else Evictions(),
        taint_policies=tuple(taint_policies),
        default_failover_taints=default_failover_taints,
    )


def update_of(result: Plan, *, requeue: float = GRACE / 4) -> cluster_pb2.MemberCluster | None:
    """The cluster as the plan writes it, or None when it writes nothing; the plan
    adds no NoExecute taint (its bookkeeping would be in ``committed``)."""
    assert result.requeue_after == requeue, "time passing must be noticed without a change"
    assert result.committed == []
    if not result.writes:
        return None
    (write,) = result.writes
    assert isinstance(write, Update)
    assert write.kind is kinds.MEMBER_CLUSTER
    assert result.keys() == [KEY]
    written: cluster_pb2.MemberCluster = write.obj
    assert written.metadata.resource_version == write.current.metadata.resource_version
    return written


def settled(record: Liveness) -> cluster_pb2.MemberCluster:
    """The cluster as the store keeps it after a first plan for ``record``."""
    first = update_of(plan(observe(member(), record)))
    assert first is not None
    first.metadata.resource_version = "42"
    return first


# -- Ready --------------------------------------------------------------------------

# (observed cluster, liveness, process start, Ready written (None: unchanged), taints)
READY = [
    pytest.param(
        member(),
        live(beat()),
        LONG_AGO,
        ("True", "ClusterReady", "cluster is healthy and ready to accept workloads"),
        [],
        id="ready",
    ),
    pytest.param(
        member(ready="Unknown", taints=[(UNREACHABLE, "NoSchedule")]),
        live(beat()),
        LONG_AGO,
        ("True", "ClusterReady", "cluster is healthy and ready to accept workloads"),
        [],
        id="back-from-unknown",
    ),
    pytest.param(
        member(ready="True"),
        live(beat(api_server_ready=False)),
        LONG_AGO,
        ("False", "ClusterNotReachable", "API server not ready"),
        [NOT_READY],
        id="api-server-not-ready",
    ),
    pytest.param(
        member(ready="True"),
        live(beat(api_server_ready=False, message="readyz: etcd failed")),
        LONG_AGO,
        ("False", "ClusterNotReachable", "readyz: etcd failed"),
        [NOT_READY],
        id="api-server-not-ready-says-why",
    ),
    pytest.param(
        member(ready="True"),
        live(beat(), age=GRACE + 1),
        LONG_AGO,
        ("Unknown", "ClusterStatusUnknown", "the cluster agent stopped posting status"),
        [UNREACHABLE],
        id="silent-past-grace",
    ),
    pytest.param(
        member(ready="True"),
        live(),
        LONG_AGO,
        ("Unknown", "ClusterStatusUnknown", "the cluster agent stopped posting status"),
        [UNREACHABLE],
        id="no-heartbeat-since-restart-past-grace",
    ),
    pytest.param(
        member(),
        live(),
        LONG_AGO,
        ("Unknown", "ClusterStatusUnknown", "waiting for the cluster agent to connect"),
        [UNREACHABLE],
        id="waiting-for-first-connect",
    ),
    pytest.param(
        member(),
        live(),
        NOW_MONOTONIC - 5,
        ("Unknown", "ClusterStatusUnknown", "waiting for the cluster agent to connect"),
        [UNREACHABLE],
        id="waiting-for-first-connect-just-restarted",
    ),
    pytest.param(
        member(ready="True"),
        live(),
        NOW_MONOTONIC - 5,
        None,
        [],
        id="just-restarted-keeps-ready",
    ),
    pytest.param(
        member(ready="False", taints=[(NOT_READY, "NoSchedule")]),
        live(),
        NOW_MONOTONIC - 5,
        None,
        [NOT_READY],
        id="just-restarted-keeps-not-ready",
    ),
]


@pytest.mark.parametrize(("observed", "record", "started", "ready", "taints"), READY)
def test_ready_follows_the_agent(
    observed: cluster_pb2.MemberCluster,
    record: Liveness,
    started: float,
    ready: tuple[str, str, str] | None,
    taints: list[str],
) -> None:
    before = kinds.MEMBER_CLUSTER.copy(observed)
    written = update_of(plan(observe(observed, record, started=started)))
    assert observed == before, "the plan edits a copy, never what it observed"
    assert written is not None
    if ready is None:
        # What was known stays; only that no agent is connected to this process yet.
        assert written.status.conditions == observed.status.conditions
        assert written.spec == observed.spec
        assert (written.status.agent.connected, written.status.agent.version) == (False, "")
        return
    condition = find(written.status.conditions, "Ready")
    assert condition is not None
    assert (condition.status, condition.reason, condition.message) == ready
    assert condition.last_transition_time.seconds == int(NOW_WALL)
    assert [t.key for t in written.spec.taints] == taints
    assert all(t.effect == "NoSchedule" for t in written.spec.taints)


def test_a_heartbeat_becomes_status() -> None:
    written = update_of(plan(observe(member(), live(beat(), age=3.0))))
    assert written is not None
    status = written.status
    assert status.kubernetes_version == "v1.31.2"
    assert written.spec.id == "kube-system-uid"
    assert (status.node_summary.total_num, status.node_summary.ready_num) == (3, 3)
    assert dict(status.resource_summary.allocatable) == {"cpu": "12"}
    assert [e.group_version for e in status.api_enablements] == ["apps/v1"]
    assert (status.agent.connected, status.agent.version) == (True, "0.9.0")
    # When it was received, on the wall clock.
    assert status.agent.last_heartbeat_time.seconds == int(NOW_WALL - 3.0)


def test_a_stale_heartbeat_is_not_status() -> None:
    """Past the grace period the last figures are not repeated as current."""
    written = update_of(plan(observe(member(ready="True"), live(beat(), age=GRACE + 1))))
    assert written is not None
    assert written.status.kubernetes_version == ""
    assert written.spec.id == ""
    assert written.status.agent.last_heartbeat_time.seconds == int(NOW_WALL - GRACE - 1)


# -- taints -------------------------------------------------------------------------

# (taints before, Ready as the agent reports it, taints after as (key, effect, time))
TAINTS = [
    pytest.param(
        [("maintenance", "NoExecute")],
        live(beat()),
        [("maintenance", "NoExecute", OLD_WALL)],
        id="ready-keeps-user-taints",
    ),
    pytest.param(
        [("maintenance", "NoExecute"), (NOT_READY, "NoSchedule")],
        live(beat()),
        [("maintenance", "NoExecute", OLD_WALL)],
        id="ready-removes-not-ready",
    ),
    pytest.param(
        [(UNREACHABLE, "NoSchedule"), ("maintenance", "NoExecute")],
        live(beat()),
        [("maintenance", "NoExecute", OLD_WALL)],
        id="ready-removes-unreachable",
    ),
    pytest.param(
        [("maintenance", "NoExecute")],
        live(beat(api_server_ready=False)),
        [("maintenance", "NoExecute", OLD_WALL), (NOT_READY, "NoSchedule", int(NOW_WALL))],
        id="not-ready-added",
    ),
    pytest.param(
        [(NOT_READY, "NoSchedule"), ("maintenance", "NoExecute")],
        live(beat(), age=GRACE + 1),
        [("maintenance", "NoExecute", OLD_WALL), (UNREACHABLE, "NoSchedule", int(NOW_WALL))],
        id="not-ready-becomes-unreachable",
    ),
    pytest.param(
        [(UNREACHABLE, "NoSchedule")],
        live(beat(api_server_ready=False)),
        [(NOT_READY, "NoSchedule", int(NOW_WALL))],
        id="unreachable-becomes-not-ready",
    ),
    pytest.param(
        [(NOT_READY, "NoSchedule")],
        live(beat(api_server_ready=False)),
        [(NOT_READY, "NoSchedule", OLD_WALL)],
        id="still-not-ready-keeps-its-time",
    ),
]


@pytest.mark.parametrize(("before", "record", "after"), TAINTS)
def test_taints_follow_ready(
    before: list[tuple[str, str]], record: Liveness, after: list[tuple[str, str, int]]
) -> None:
    written = update_of(plan(observe(member(taints=before), record)))
    assert written is not None
    assert [(t.key, t.effect, t.time_added.seconds) for t in written.spec.taints] == after


# -- lastHeartbeatTime --------------------------------------------------------------

# (seconds since lastHeartbeatTime was written, kubernetes version now, time written)
HEARTBEAT_TIMES = [
    pytest.param(10, "v1.31.2", None, id="recent-and-unchanged-no-write"),
    pytest.param(29, "v1.31.2", None, id="just-under-interval-no-write"),
    pytest.param(30, "v1.31.2", int(NOW_WALL - 1), id="interval-passed"),
    pytest.param(10, "v1.32.0", int(NOW_WALL - 1), id="status-changed"),
]


@pytest.mark.parametrize(("since", "version", "written_time"), HEARTBEAT_TIMES)
def test_heartbeat_time_is_written_only_every_so_often(
    since: int, version: str, written_time: int | None
) -> None:
    stored = settled(live(beat()))
    stored.status.agent.last_heartbeat_time.FromSeconds(int(NOW_WALL - 1) - since)
    written = update_of(plan(observe(stored, live(beat(version=version)))))
    if written_time is None:
        assert written is None
        return
    assert written is not None
    assert written.status.agent.last_heartbeat_time.seconds == written_time
    assert written.status.kubernetes_version == version


@pytest.mark.parametrize(
    "record",
    [
        pytest.param(live(beat()), id="ready"),
        pytest.param(live(beat(api_server_ready=False)), id="not-ready"),
        pytest.param(live(beat(), age=GRACE + 1), id="silent"),
        pytest.param(live(), id="never-connected"),
    ],
)
def test_what_a_plan_wrote_plans_nothing(record: Liveness) -> None:
    """The cluster as the first plan left it needs no further write while nothing
    changes (only the periodic look again)."""
    assert update_of(plan(observe(settled(record), record))) is None


# -- finalizer ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("finalizers", "expected"),
    [
        pytest.param([], [FINALIZER], id="added"),
        pytest.param(["example.com/keep"], ["example.com/keep", FINALIZER], id="added-beside"),
    ],
)
def test_the_finalizer_is_added(finalizers: list[str], expected: list[str]) -> None:
    stored = settled(live(beat()))
    stored.metadata.ClearField("finalizers")
    stored.metadata.finalizers.extend(finalizers)
    written = update_of(plan(observe(stored, live(beat()))))
    assert written is not None
    assert list(written.metadata.finalizers) == expected
    written.metadata.ClearField("finalizers")
    stored.metadata.ClearField("finalizers")
    assert written == stored, "nothing but the finalizer changed"


# -- removal ------------------------------------------------------------------------


def work(
    name: str, finalizers: Sequence[str], *, deleting: bool = False
) -> work_pb2.PropagationWork:
    result = work_pb2.PropagationWork()
    result.metadata.name = name
    result.metadata.namespace = kinds.execution_namespace("member1")
    result.metadata.resource_version = "30"
    result.metadata.labels[CLUSTER_LABEL] = "member1"
    result.metadata.finalizers.extend(finalizers)
    if deleting:
        result.metadata.deletion_timestamp.FromSeconds(OLD_WALL)
    return result


def work_key(name: str) -> str:
    return kinds.PROPAGATION_WORK.key(kinds.execution_namespace("member1"), name)


OTHER = "example.com/audit"
# (works of the cluster, the deletes planned: (work, finalizers left on it))
WORKS = [
    pytest.param([], [], id="no-works"),
    pytest.param(
        [work("default.web", [WORK_FINALIZER])],
        [("default.web", [])],
        id="held-by-the-agent",
    ),
    pytest.param(
        [work("default.web", [])],
        [("default.web", [])],
        id="held-by-nobody",
    ),
    pytest.param(
        [work("default.web", [WORK_FINALIZER, OTHER], deleting=True)],
        [("default.web", [OTHER])],
        id="deleting-released-keeps-others",
    ),
    pytest.param(
        [work("default.web", [WORK_FINALIZER], deleting=True)],
        [("default.web", [])],
        id="deleting-released",
    ),
    pytest.param(
        [work("default.web", [OTHER], deleting=True)],
        [],
        id="deleting-waits-for-someone-else",
    ),
    pytest.param(
        [
            work("default.web", [WORK_FINALIZER]),
            work("default.db", [WORK_FINALIZER, OTHER]),
            work("_.crd", [OTHER], deleting=True),
        ],
        [("default.web", []), ("default.db", [OTHER])],
        id="several",
    ),
]


@pytest.mark.parametrize(("works", "deletes"), WORKS)
@pytest.mark.parametrize("credential_revision", [0, 57], ids=["no-credential", "credential"])
@pytest.mark.parametrize(
    ("finalizers", "kept"),
    [
        pytest.param([FINALIZER], [], id="ours"),
        pytest.param([OTHER, FINALIZER], [OTHER], id="ours-and-another"),
        pytest.param([OTHER], None, id="already-let-go"),
    ],
)
def test_a_deleting_cluster_is_removed_in_one_plan(
    works: list[work_pb2.PropagationWork],
    deletes: list[tuple[str, list[str]]],
    credential_revision: int,
    finalizers: list[str],
    kept: list[str] | None,
) -> None:
    observed = member(ready="True", finalizers=finalizers, deleting=True)
    records = {"member1": Liveness(connected=True), "member2": Liveness()}
    result = plan(
        observe(
            observed,
            live(beat()),
            works=works,
            credential_revision=credential_revision,
            liveness=records,
        )
    )
    assert result.requeue_after == 0
    writes = list(result.writes)

    # Each work lets go of the agent's finalizer and is deleted.
    by_name = {w.metadata.name: w for w in works}
    for name, left in deletes:
        write = writes.pop(0)
        assert isinstance(write, Delete)
        assert write.kind is kinds.PROPAGATION_WORK
        assert write.current is by_name[name]
        marked = write.marked if write.marked is not None else write.current
        assert list(marked.metadata.finalizers) == left
        assert kinds.PROPAGATION_WORK.key_of(write.current) == work_key(name)
    # Then the credential, as it was read.
    if credential_revision:
        assert writes.pop(0) == Purge(CREDENTIALS + "member1", credential_revision)
    # Last the cluster's own finalizer, so nothing of it outlives it.
    if kept is not None:
        write = writes.pop(0)
        assert isinstance(write, Update)
        assert write.kind is kinds.MEMBER_CLUSTER
        assert write.current is observed
        assert list(write.obj.metadata.finalizers) == kept
        expected = kinds.MEMBER_CLUSTER.copy(observed)
        expected.metadata.ClearField("finalizers")
        expected.metadata.finalizers.extend(kept)
        assert write.obj == expected, "removal writes no status"
    assert writes == []
    assert len(set(result.keys())) == len(result.keys())

    # The liveness record goes only once the plan landed.
    assert set(records) == {"member1", "member2"}
    for bookkeeping in result.committed:
        bookkeeping()
    assert set(records) == {"member2"}


@pytest.mark.parametrize(
    ("control_plane", "agent", "compatible"),
    [
        ("0.1.0", "0.1.0", True),
        ("0.2.3", "0.1.9", True),  # one minor older: allowed, as kubelets are
        ("0.3.0", "0.1.0", False),  # two minors older
        ("0.1.0", "0.2.0", False),  # newer than the control plane
        ("1.0.0", "0.9.0", False),  # another major
        ("v1.4.0", "v1.4.2", True),
        ("0.1.0", "dev", True),  # unreadable: not judged
    ],
)
def test_version_skew_follows_kubernetes_rule_for_kubelets(
    control_plane: str, agent: str, compatible: bool
) -> None:
    assert (version_skew(control_plane, agent) == "") is compatible


@pytest.mark.parametrize(("agent", "status"), [("0.1.0", "True"), ("0.3.0", "False")])
def test_the_agents_version_is_judged_on_the_cluster(agent: str, status: str) -> None:
    record = live(beat())
    record.agent_version = agent
    observed = dataclasses.replace(observe(member(), record), control_plane_version="0.1.0")
    updated = update_of(plan(observed))
    assert updated is not None
    assert updated.status.agent.version == agent
    condition = find(updated.status.conditions, "AgentVersionCompatible")
    assert condition is not None and condition.status == status
    assert (condition.reason == "VersionSkew") is (status == "False")


def test_no_version_no_judgement() -> None:
    updated = update_of(plan(observe(member())))
    assert updated is not None
    assert find(updated.status.conditions, "AgentVersionCompatible") is None


# -- damping ------------------------------------------------------------------------

HEALTHY = ("True", "ClusterReady", "cluster is healthy and ready to accept workloads")
FAILED = ("False", "ClusterNotReachable", "API server not ready")
AS_IT_WAS = ("Before", "as it was")

# (stored cluster, liveness, Ready after: a written one, or the stored one's status,
#  taint keys after, seconds until the plan looks again)
DAMPING = [
    pytest.param(
        member(ready="True"),
        live(beat(api_server_ready=False), steady=FAILURE - 5),
        ("True", *AS_IT_WAS),
        [],
        5.0,
        id="not-ready-for-less-than-the-failure-threshold-stays-ready",
    ),
    pytest.param(
        member(ready="True"),
        live(beat(api_server_ready=False), steady=FAILURE),
        FAILED,
        [NOT_READY],
        GRACE / 4,
        id="not-ready-for-the-failure-threshold-fails",
    ),
    pytest.param(
        member(ready="False", taints=[(NOT_READY, "NoSchedule")]),
        live(beat(), steady=SUCCESS - 12),
        ("False", *AS_IT_WAS),
        [NOT_READY],
        GRACE / 4,  # the threshold is 12 s away, the look at silence 10 s
        id="ready-for-less-than-the-success-threshold-stays-not-ready",
    ),
    pytest.param(
        member(ready="False", taints=[(NOT_READY, "NoSchedule")]),
        live(beat(), steady=SUCCESS - 3),
        ("False", *AS_IT_WAS),
        [NOT_READY],
        3.0,
        id="the-success-threshold-is-looked-at-when-it-passes",
    ),
    pytest.param(
        member(ready="False", taints=[(NOT_READY, "NoSchedule")]),
        live(beat(), steady=SUCCESS),
        HEALTHY,
        [],
        GRACE / 4,
        id="ready-for-the-success-threshold-recovers",
    ),
    pytest.param(
        member(ready="Unknown", taints=[(UNREACHABLE, "NoSchedule")]),
        live(beat(), steady=1),
        ("Unknown", *AS_IT_WAS),
        [UNREACHABLE],
        GRACE / 4,
        id="back-from-silence-waits-for-the-success-threshold",
    ),
    pytest.param(
        member(ready="Unknown", taints=[(UNREACHABLE, "NoSchedule")]),
        live(beat(api_server_ready=False), steady=1),
        FAILED,
        [NOT_READY],
        GRACE / 4,
        id="unknown-to-false-at-once",
    ),
    pytest.param(
        member(),
        live(beat(), steady=0),
        HEALTHY,
        [],
        GRACE / 4,
        id="first-heartbeat-joins-at-once",
    ),
]


@pytest.mark.parametrize(("observed", "record", "ready", "taints", "requeue"), DAMPING)
def test_ready_changes_once_the_report_has_lasted(
    observed: cluster_pb2.MemberCluster,
    record: Liveness,
    ready: tuple[str, str, str],
    taints: list[str],
    requeue: float,
) -> None:
    written = update_of(plan(observe(observed, record)), requeue=requeue)
    assert written is not None  # the heartbeat's figures are status either way
    condition = find(written.status.conditions, "Ready")
    assert condition is not None
    assert (condition.status, condition.reason, condition.message) == ready
    assert [t.key for t in written.spec.taints] == taints


def test_a_cluster_waiting_for_its_agent_joins_on_its_first_heartbeat() -> None:
    """Ready Unknown "waiting for the cluster agent to connect" is not a recovery."""
    waiting = settled(live())
    condition = find(waiting.status.conditions, "Ready")
    assert condition is not None and condition.status == "Unknown"
    written = update_of(plan(observe(waiting, live(beat(), steady=0))))
    assert written is not None
    condition = find(written.status.conditions, "Ready")
    assert condition is not None
    assert (condition.status, condition.reason, condition.message) == HEALTHY
    assert list(written.spec.taints) == []


# -- NoExecute taints ----------------------------------------------------------------


def failing(
    ready: str = "False",
    *,
    since: float = FAILOVER,
    taints: Sequence[tuple[str, str]] | None = None,
    failover: tuple[str, str] | None = None,
) -> cluster_pb2.MemberCluster:
    """A cluster not Ready for ``since`` seconds, with its NoSchedule taint."""
    key = NOT_READY if ready == "False" else UNREACHABLE
    return member(
        ready=ready,
        ready_since=NOW_WALL - since,
        taints=[(key, "NoSchedule")] if taints is None else taints,
        failover=failover,
    )


FAILED_BEAT = live(beat(api_server_ready=False))
SILENT = live(beat(), age=GRACE + 1)


def evicting(result: Plan, reason: str) -> cluster_pb2.MemberCluster:
    """The cluster as a plan that adds a NoExecute taint writes it, having checked
    the plan's bookkeeping."""
    (record,) = result.committed
    assert isinstance(record, RecordEviction)
    assert (record.key, record.at, record.reason) == (KEY, NOW_MONOTONIC, reason)
    (write,) = result.writes
    assert isinstance(write, Update)
    written: cluster_pb2.MemberCluster = write.obj
    return written


def failover_of(cluster: cluster_pb2.MemberCluster) -> tuple[str, str] | None:
    condition = find(cluster.status.conditions, "Failover")
    return (condition.status, condition.reason) if condition is not None else None


def taints_of(cluster: cluster_pb2.MemberCluster) -> list[tuple[str, str, int]]:
    return [(t.key, t.effect, t.time_added.seconds) for t in cluster.spec.taints]


@pytest.mark.parametrize(
    ("ready", "record", "key", "reason"),
    [
        pytest.param("False", FAILED_BEAT, NOT_READY, "NotReady", id="not-ready"),
        pytest.param("Unknown", SILENT, UNREACHABLE, "Unreachable", id="unreachable"),
    ],
)
def test_no_execute_after_the_failover_grace_period(
    ready: str, record: Liveness, key: str, reason: str
) -> None:
    written = evicting(plan(observe(failing(ready), record)), reason)
    assert taints_of(written) == [(key, "NoSchedule", OLD_WALL), (key, "NoExecute", int(NOW_WALL))]
    assert failover_of(written) == ("True", "Evicting")


@pytest.mark.parametrize(
    ("ready", "record"),
    [
        pytest.param("False", FAILED_BEAT, id="not-ready"),
        pytest.param("Unknown", SILENT, id="unreachable"),
    ],
)
def test_no_execute_not_before_the_failover_grace_period(ready: str, record: Liveness) -> None:
    observed = failing(ready, since=FAILOVER - 4)
    # The plan looks again when the grace runs out.
    written = update_of(plan(observe(observed, record)), requeue=4.0)
    assert written is not None  # the heartbeat's time and figures
    assert taints_of(written) == taints_of(observed)
    assert failover_of(written) is None


@pytest.mark.parametrize(
    "record",
    [
        pytest.param(live(beat(), steady=1), id="reported-healthy-not-yet-ready"),
        pytest.param(live(), id="just-restarted-nothing-heard"),
    ],
)
def test_no_new_no_execute_unless_this_pass_heard_the_cluster_is_unhealthy(
    record: Liveness,
) -> None:
    """Ready False for long, but the agent now reports the cluster healthy (damping
    holds Ready back) or the process has not heard from it since it started."""
    result = plan(observe(failing(), record, started=NOW_MONOTONIC - 5))
    written = update_of(result)
    assert written is None or not any(t.effect == "NoExecute" for t in written.spec.taints)


def test_no_execute_goes_when_ready_again() -> None:
    observed = failing(
        taints=[("maintenance", "NoExecute"), (NOT_READY, "NoSchedule"), (NOT_READY, "NoExecute")],
        failover=("True", "Evicting"),
    )
    written = update_of(plan(observe(observed, live(beat()))))
    assert written is not None
    assert taints_of(written) == [("maintenance", "NoExecute", OLD_WALL)]
    assert failover_of(written) == ("False", "ClusterReady")


def test_no_execute_stays_while_damping_holds_ready_back() -> None:
    taints = [(NOT_READY, "NoSchedule"), (NOT_READY, "NoExecute")]
    observed = failing(taints=taints, failover=("True", "Evicting"))
    written = update_of(plan(observe(observed, live(beat(), steady=SUCCESS - 20))))
    assert written is not None  # the heartbeat's figures
    assert taints_of(written) == [(k, e, OLD_WALL) for k, e in taints]


# The NoExecute taint follows Ready between False and Unknown, keeping its time, and
# never waits for the halt or the rate limit: the cluster never stopped failing.
# (Ready before, liveness, taints after)
STAYS_UNHEALTHY = [
    pytest.param(
        "False",
        FAILED_BEAT,
        [(NOT_READY, "NoSchedule", OLD_WALL), (NOT_READY, "NoExecute", OLD_WALL)],
        id="still-not-ready",
    ),
    pytest.param(
        "False",
        SILENT,
        [(UNREACHABLE, "NoExecute", OLD_WALL), (UNREACHABLE, "NoSchedule", int(NOW_WALL))],
        id="not-ready-becomes-unreachable",
    ),
    pytest.param(
        "Unknown",
        FAILED_BEAT,
        [(NOT_READY, "NoExecute", OLD_WALL), (NOT_READY, "NoSchedule", int(NOW_WALL))],
        id="unreachable-becomes-not-ready",
    ),
    pytest.param(
        "False",
        live(),
        [(NOT_READY, "NoSchedule", OLD_WALL), (NOT_READY, "NoExecute", OLD_WALL)],
        id="just-restarted",
    ),
]


@pytest.mark.parametrize(("ready", "record", "after"), STAYS_UNHEALTHY)
@pytest.mark.parametrize(
    ("other_not_ready", "next_eviction_at"),
    [
        pytest.param(0, -math.inf, id="free"),
        pytest.param(1, -math.inf, id="halted"),
        pytest.param(0, NOW_MONOTONIC + 5, id="rate-limited"),
    ],
)
def test_a_cluster_that_stays_unhealthy_keeps_its_no_execute_taint(
    ready: str,
    record: Liveness,
    after: list[tuple[str, str, int]],
    other_not_ready: int,
    next_eviction_at: float,
) -> None:
    key = NOT_READY if ready == "False" else UNREACHABLE
    observed = failing(
        ready,
        since=10 * FAILOVER,
        taints=[(key, "NoSchedule"), (key, "NoExecute")],
        failover=("True", "Evicting"),
    )
    result = plan(
        observe(
            observed,
            record,
            started=NOW_MONOTONIC - 5,
            other_not_ready=other_not_ready,
            next_eviction_at=next_eviction_at,
        )
    )
    written = update_of(result)  # and no eviction recorded
    assert written is not None
    assert taints_of(written) == after
    assert failover_of(written) == ("True", "Evicting")


def test_user_taints_on_automatic_keys_with_other_effects_are_kept() -> None:
    observed = failing(taints=[(NOT_READY, "PreferNoSchedule"), (NOT_READY, "NoSchedule")])
    written = evicting(plan(observe(observed, FAILED_BEAT)), "NotReady")
    assert taints_of(written) == [
        (NOT_READY, "PreferNoSchedule", OLD_WALL),
        (NOT_READY, "NoSchedule", OLD_WALL),
        (NOT_READY, "NoExecute", int(NOW_WALL)),
    ]


def test_an_eviction_is_recorded_only_once_committed() -> None:
    evictions = Evictions(last=NOW_MONOTONIC - 100, in_flight=KEY)
    result = plan(observe(failing(), FAILED_BEAT, evictions=evictions))
    evicting(result, "NotReady")
    assert evictions == Evictions(last=NOW_MONOTONIC - 100, in_flight=KEY)

    def count() -> float:
        value = REGISTRY.get_sample_value(
            "archipel_cluster_evictions_total", {"reason": "NotReady"}
        )
        return value or 0.0

    before = count()
    for bookkeeping in result.committed:
        bookkeeping()
    assert evictions == Evictions(last=NOW_MONOTONIC, in_flight="")
    assert count() == before + 1


# -- halt ---------------------------------------------------------------------------

# (other clusters, how many of them are not Ready, halted): this one is not Ready too.
HALT = [
    pytest.param(0, 0, True, id="the-only-cluster"),
    pytest.param(1, 0, False, id="1-of-2"),
    pytest.param(1, 1, True, id="2-of-2"),
    pytest.param(10, 5, False, id="6-of-11-below"),
    pytest.param(19, 10, False, id="11-of-20-at-the-threshold"),
    pytest.param(10, 6, True, id="7-of-11-above"),
]


@pytest.mark.parametrize(("others", "others_not_ready", "halted"), HALT)
def test_no_new_no_execute_while_too_many_clusters_fail(
    others: int, others_not_ready: int, halted: bool
) -> None:
    observed = observe(
        failing(), FAILED_BEAT, other_clusters=others, other_not_ready=others_not_ready
    )
    result = plan(observed)
    if not halted:
        assert failover_of(evicting(result, "NotReady")) == ("True", "Evicting")
        return
    # A halt lifts when another cluster's readiness changes: no timed look.
    written = update_of(result)
    assert written is not None
    assert not any(t.effect == "NoExecute" for t in written.spec.taints)
    condition = find(written.status.conditions, "Failover")
    assert condition is not None
    assert (condition.status, condition.reason) == ("False", "EvictionHalted")
    assert condition.message.startswith(
        f"{others_not_ready + 1} of {others + 1} member clusters are not Ready, more than 55%"
    )
    # Once the halt is written, it is not written again.
    written.metadata.resource_version = "42"
    assert update_of(plan(dataclasses.replace(observed, cluster=written))) is None


# -- rate limit ---------------------------------------------------------------------


def test_no_execute_waits_for_the_rate_limit() -> None:
    observed = observe(failing(), FAILED_BEAT, next_eviction_at=NOW_MONOTONIC + 4)
    written = update_of(plan(observed), requeue=4.0)
    assert written is not None
    assert not any(t.effect == "NoExecute" for t in written.spec.taints)
    assert failover_of(written) == ("False", "EvictionRateLimited")
    # Still limited: nothing more to write. Its turn: the taint.
    written.metadata.resource_version = "42"
    assert update_of(plan(dataclasses.replace(observed, cluster=written)), requeue=4.0) is None
    turn = dataclasses.replace(observed, cluster=written, next_eviction_at=NOW_MONOTONIC)
    assert failover_of(evicting(plan(turn), "NotReady")) == ("True", "Evicting")


# -- the Failover condition ---------------------------------------------------------


@pytest.mark.parametrize(
    ("observed", "record", "failover"),
    [
        pytest.param(member(), live(beat()), None, id="healthy-never-has-one"),
        pytest.param(failing(since=1), FAILED_BEAT, None, id="within-the-grace-none-yet"),
        pytest.param(
            failing(since=1, failover=("False", "ClusterReady")),
            FAILED_BEAT,
            ("False", "Pending"),
            id="within-the-grace-after-an-earlier-failover",
        ),
        pytest.param(
            failing(failover=("False", "EvictionHalted")),
            live(beat(), steady=1),
            ("False", "Pending"),
            id="halted-then-reported-healthy",
        ),
        pytest.param(
            member(ready="True", failover=("False", "EvictionHalted")),
            live(beat()),
            ("False", "ClusterReady"),
            id="halted-then-ready",
        ),
    ],
)
def test_the_failover_condition_says_where_the_cluster_stands(
    observed: cluster_pb2.MemberCluster, record: Liveness, failover: tuple[str, str] | None
) -> None:
    written = update_of(plan(observe(observed, record)))
    assert failover_of(written if written is not None else observed) == failover


def test_an_evicting_cluster_as_written_plans_nothing() -> None:
    written = evicting(plan(observe(failing(), FAILED_BEAT)), "NotReady")
    written.metadata.resource_version = "42"
    assert update_of(plan(observe(written, FAILED_BEAT))) is None


def test_the_failover_grace_counts_fractions_of_a_second() -> None:
    # Ready turned False 59.5 s ago: whole seconds would make it 60 and taint early.
    observed = failing(since=FAILOVER - 0.5)
    written = update_of(plan(observe(observed, FAILED_BEAT)), requeue=0.5)
    assert written is not None
    assert not any(t.effect == "NoExecute" for t in written.spec.taints)


# -- ClusterTaintPolicy -------------------------------------------------------------

NOT_TRUE: list[dict[str, Any]] = [
    {"conditionType": "Ready", "operator": "NotIn", "statusValues": ["True"]}
]
TRUE: list[dict[str, Any]] = [
    {"conditionType": "Ready", "operator": "In", "statusValues": ["True"]}
]
SCHEDULER_DOWN: list[dict[str, Any]] = [
    {"conditionType": "SchedulerDown", "operator": "In", "statusValues": ["True"]}
]
SCHEDULER_UP: list[dict[str, Any]] = [
    {"conditionType": "SchedulerDown", "operator": "NotIn", "statusValues": ["True"]}
]


def taint_policy(
    name: str = "detect",
    *,
    add: list[dict[str, Any]] | None = None,
    remove: list[dict[str, Any]] | None = None,
    taints: Sequence[tuple[str, str]] = (("not-ready", "NoSchedule"),),
    targets: dict[str, object] | None = None,
    created: int = OLD_WALL,
) -> policy_pb2.ClusterTaintPolicy:
    """A ClusterTaintPolicy as Karmada's YAML writes it."""
    spec: dict[str, object] = {"taints": [{"key": k, "effect": e} for k, e in taints]}
    if add is not None:
        spec["addOnConditions"] = add
    if remove is not None:
        spec["removeOnConditions"] = remove
    if targets is not None:
        spec["targetClusters"] = targets
    policy = json_format.ParseDict(
        {
            "apiVersion": "policy.karmada.io/v1alpha1",
            "kind": "ClusterTaintPolicy",
            "metadata": {"name": name},
            "spec": spec,
        },
        policy_pb2.ClusterTaintPolicy(),
    )
    policy.metadata.creation_timestamp.FromSeconds(created)
    return policy


def with_condition(
    cluster: cluster_pb2.MemberCluster, type_: str, status: str
) -> cluster_pb2.MemberCluster:
    """The cluster with a condition another system set (as Karmada's SchedulerDown)."""
    set_condition(cluster.status.conditions, type_, status, "Reported", "by a third party")
    return cluster


BEATING = live(beat())

# (cluster, policies, taints after; None: the plan writes nothing). The cluster is
# Ready (its agent reports it healthy), so the built-in rule wants no taint.
POLICY_TAINTS = [
    pytest.param(
        with_condition(member(ready="True"), "SchedulerDown", "True"),
        [taint_policy(add=SCHEDULER_DOWN, remove=SCHEDULER_UP)],
        [("not-ready", "NoSchedule", int(NOW_WALL))],
        id="add-on-conditions-match",
    ),
    pytest.param(
        with_condition(
            member(ready="True", taints=[("not-ready", "NoSchedule")]), "SchedulerDown", "True"
        ),
        [taint_policy(add=SCHEDULER_DOWN, remove=SCHEDULER_UP)],
        None,
        id="already-there-keeps-its-time",
    ),
    pytest.param(
        with_condition(
            member(ready="True", taints=[("not-ready", "NoSchedule")]), "SchedulerDown", "False"
        ),
        [taint_policy(add=SCHEDULER_DOWN, remove=SCHEDULER_UP)],
        [],
        id="remove-on-conditions-match",
    ),
    pytest.param(
        with_condition(
            member(ready="True", taints=[("not-ready", "NoSchedule")]), "SchedulerDown", "False"
        ),
        [taint_policy(add=SCHEDULER_DOWN)],
        None,
        id="neither-matches-unchanged",
    ),
    pytest.param(
        member(ready="True"),
        [taint_policy(add=SCHEDULER_UP)],
        None,
        id="a-missing-condition-matches-neither-in-nor-not-in",
    ),
    pytest.param(
        with_condition(member(ready="True"), "SchedulerDown", "True"),
        [
            taint_policy(
                add=[
                    *SCHEDULER_DOWN,
                    {"conditionType": "Ready", "operator": "In", "statusValues": ["False"]},
                ]
            )
        ],
        None,
        id="conditions-are-anded",
    ),
    pytest.param(
        with_condition(member(ready="True"), "SchedulerDown", "True"),
        [taint_policy(add=SCHEDULER_DOWN, targets={"clusterNames": ["member2"]})],
        None,
        id="not-targeted",
    ),
    pytest.param(
        with_condition(
            member(ready="True", taints=[("not-ready", "NoSchedule")]), "SchedulerDown", "False"
        ),
        [taint_policy(remove=SCHEDULER_UP, targets={"exclude": ["member1"]})],
        None,
        id="no-longer-targeted-keeps-its-taints",
    ),
    pytest.param(
        with_condition(member(ready="True"), "SchedulerDown", "True"),
        [
            taint_policy(add=SCHEDULER_DOWN, targets={"clusterNames": ["member1"]}),
            taint_policy("later", remove=SCHEDULER_DOWN, created=OLD_WALL + 1),
        ],
        None,
        id="policies-apply-oldest-first",
    ),
    pytest.param(
        with_condition(member(ready="True"), "SchedulerDown", "True"),
        [
            taint_policy("later", add=SCHEDULER_DOWN, created=OLD_WALL + 1),
            taint_policy(remove=SCHEDULER_DOWN, targets={"clusterNames": ["member1"]}),
        ],
        [("not-ready", "NoSchedule", int(NOW_WALL))],
        id="policies-apply-oldest-first-whatever-the-list-order",
    ),
    pytest.param(
        with_condition(
            member(ready="True", taints=[("not-ready", "NoSchedule")]), "SchedulerDown", "False"
        ),
        [],
        None,
        id="a-deleted-policy-leaves-its-taints",
    ),
    pytest.param(
        with_condition(member(ready="True"), "SchedulerDown", "True"),
        [taint_policy(add=SCHEDULER_DOWN, taints=[("cluster.karmada.io/not-ready", "NoSchedule")])],
        None,
        id="the-built-in-taints-are-left-to-the-built-in-rule",
    ),
]


@pytest.mark.parametrize(("observed", "policies", "after"), POLICY_TAINTS)
def test_taint_policies_add_and_remove_their_taints(
    observed: cluster_pb2.MemberCluster,
    policies: list[policy_pb2.ClusterTaintPolicy],
    after: list[tuple[str, str, int]] | None,
) -> None:
    settled_cluster = update_of(plan(observe(observed, BEATING)))
    assert settled_cluster is not None  # the heartbeat
    settled_cluster.metadata.resource_version = "42"
    written = update_of(plan(observe(settled_cluster, BEATING, taint_policies=policies)))
    if after is None:
        assert written is None
        return
    assert written is not None
    assert taints_of(written) == after
    # And once written, the policies want nothing more.
    written.metadata.resource_version = "43"
    assert update_of(plan(observe(written, BEATING, taint_policies=policies))) is None


def test_a_policy_taint_follows_ready_as_karmadas_example() -> None:
    """Karmada's example: taint when Ready is not True, untaint when it is."""
    policy = taint_policy(add=NOT_TRUE, remove=TRUE, taints=[("not-ready", "NoSchedule")])
    written = update_of(plan(observe(failing(since=1), FAILED_BEAT, taint_policies=[policy])))
    assert written is not None
    assert taints_of(written) == [
        (NOT_READY, "NoSchedule", OLD_WALL),
        ("not-ready", "NoSchedule", int(NOW_WALL)),
    ]
    written.metadata.resource_version = "42"
    recovered = update_of(plan(observe(written, BEATING, taint_policies=[policy])))
    assert recovered is not None
    assert taints_of(recovered) == []


def test_a_policy_no_execute_taint_is_an_eviction() -> None:
    policy = taint_policy(
        "scheduler-down", add=SCHEDULER_DOWN, remove=SCHEDULER_UP, taints=[("sched", "NoExecute")]
    )
    observed = with_condition(member(ready="True"), "SchedulerDown", "True")
    written = evicting(
        plan(observe(observed, BEATING, taint_policies=[policy])), POLICY_EVICTION_REASON
    )
    assert taints_of(written) == [("sched", "NoExecute", int(NOW_WALL))]
    condition = find(written.status.conditions, "Failover")
    assert condition is not None
    assert (condition.status, condition.reason) == ("True", "Evicting")
    assert "ClusterTaintPolicy scheduler-down" in condition.message
    # Once written, it stays, and is not counted again.
    written.metadata.resource_version = "42"
    assert update_of(plan(observe(written, BEATING, taint_policies=[policy]))) is None


@pytest.mark.parametrize(
    ("other_not_ready", "next_eviction_at", "reason", "requeue"),
    [
        pytest.param(1, -math.inf, "EvictionHalted", GRACE / 4, id="halted"),
        pytest.param(0, NOW_MONOTONIC + 4, "EvictionRateLimited", 4.0, id="rate-limited"),
    ],
)
def test_a_policy_no_execute_taint_waits_for_the_halt_and_the_rate_limit(
    other_not_ready: int, next_eviction_at: float, reason: str, requeue: float
) -> None:
    policy = taint_policy(add=NOT_TRUE, remove=TRUE, taints=[("down", "NoExecute")])
    observed = observe(
        failing(since=1),
        FAILED_BEAT,
        taint_policies=[policy],
        other_not_ready=other_not_ready,
        next_eviction_at=next_eviction_at,
        default_failover_taints=False,
    )
    written = update_of(plan(observed), requeue=requeue)
    assert written is not None
    assert taints_of(written) == [(NOT_READY, "NoSchedule", OLD_WALL)]
    assert failover_of(written) == ("False", reason)


def test_without_default_failover_taints_only_the_no_schedule_ones_stay() -> None:
    observed = observe(failing(), FAILED_BEAT, default_failover_taints=False)
    written = update_of(plan(observed))
    assert written is not None  # the heartbeat
    assert taints_of(written) == [(NOT_READY, "NoSchedule", OLD_WALL)]
    assert failover_of(written) is None


def test_without_default_failover_taints_a_policy_owns_the_built_in_no_execute() -> None:
    """The default failover written as a policy, in Karmada's keys: no grace period,
    and it goes once Ready again."""
    policy = taint_policy(
        add=NOT_TRUE, remove=TRUE, taints=[("cluster.karmada.io/not-ready", "NoExecute")]
    )
    observed = observe(
        failing(since=1), FAILED_BEAT, taint_policies=[policy], default_failover_taints=False
    )
    written = evicting(plan(observed), POLICY_EVICTION_REASON)
    assert taints_of(written) == [
        (NOT_READY, "NoSchedule", OLD_WALL),
        (NOT_READY, "NoExecute", int(NOW_WALL)),
    ]
    written.metadata.resource_version = "42"
    recovered = update_of(
        plan(observe(written, BEATING, taint_policies=[policy], default_failover_taints=False))
    )
    assert recovered is not None
    assert taints_of(recovered) == []
    assert failover_of(recovered) == ("False", "ClusterReady")


def test_without_default_failover_taints_one_left_from_before_goes_once_ready() -> None:
    taints = [(NOT_READY, "NoSchedule"), (NOT_READY, "NoExecute")]
    observed = failing(taints=taints, failover=("True", "Evicting"))
    still = update_of(plan(observe(observed, FAILED_BEAT, default_failover_taints=False)))
    assert still is not None
    assert taints_of(still) == [(k, e, OLD_WALL) for k, e in taints]
    recovered = update_of(plan(observe(observed, BEATING, default_failover_taints=False)))
    assert recovered is not None
    assert taints_of(recovered) == []
