"""Fencing agent streams by their leader's epoch.

A member's agents elect a leader through a Lease in the member (``agent/election.py``);
its ``leaseTransitions`` when the leader acquired it is the leader's epoch, and the
Hello carries it with the holder's identity. The Lease already keeps two agents from
acting at once inside the member, as long as each sees it; this is the same rule where
the works come from: a deposed leader that has not noticed yet (paused, partitioned
from its member's API server but not from the control plane) must not take the stream
back from the leader that replaced it. So the control plane keeps the stream of the
newest epoch it has seen for the cluster, refuses an older one, and lets a newer one
replace the current stream, instead of letting whichever agent connected last evict
the other.

The execution controller keeps the newest epoch seen in memory, to judge two hellos of
one cluster on one replica in order; the stream's claim in etcd
(:meth:`controlplane.shards.Shards.claim_stream`) applies the same rule across replicas
and restarts, with the newest epoch stored per cluster (written only when it grows).
"""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class Leader:
    """An elected agent, as its Hello names it."""

    identity: str
    epoch: int


def refusal(newest: Leader | None, hello: Leader) -> str | None:
    """Why a Hello from ``hello`` is refused, given the newest leader seen for its
    cluster; None when it is admitted (and then replaces the current stream).

    Epoch 0 is an agent that does not elect: it is admitted, as every agent was before
    agents elected (and replaces the stream, elected or not; mixing the two is a
    misconfiguration the control plane logs).
    """
    if hello.epoch == 0 or newest is None:
        return None
    if hello.epoch > newest.epoch:
        return None
    this = who(hello.identity)
    if hello.epoch < newest.epoch:
        return (
            f"agent {who(newest.identity)} holds lease epoch {newest.epoch}; "
            f"this agent's ({this}) epoch {hello.epoch} is older: it is no longer the leader"
        )
    if hello.identity == newest.identity:
        return None  # the same leader reconnecting
    return (
        f"agent {who(newest.identity)} holds lease epoch {newest.epoch}; this agent ({this}) "
        "claims the same epoch: only one agent can have acquired the lease at an epoch"
    )


def newest(current: Leader | None, admitted: Leader) -> Leader | None:
    """The newest leader after ``admitted`` was let in (epoch 0 changes nothing)."""
    if admitted.epoch == 0:
        return current
    if current is None or admitted.epoch >= current.epoch:
        return admitted
    return current


def who(identity: str) -> str:
    # What an agent says is echoed in a status message: bounded, and never empty.
    return (identity[:120] or "<no identity>").replace("\n", " ")
