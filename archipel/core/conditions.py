"""Setting Kubernetes-style conditions: lastTransitionTime moves only on a status change."""

from __future__ import annotations

import datetime
from collections.abc import MutableSequence

from archipel.v1alpha1 import meta_pb2


def find(conditions: MutableSequence[meta_pb2.Condition], type_: str) -> meta_pb2.Condition | None:
    return next((c for c in conditions if c.type == type_), None)


def set_condition(
    conditions: MutableSequence[meta_pb2.Condition],
    type_: str,
    status: str,
    reason: str,
    message: str,
    observed_generation: int = 0,
    *,
    now: datetime.datetime | None = None,
) -> bool:
    """Set one condition; returns True when anything changed.

    ``now`` stamps a transition (a plan passes the time it observed, so that it is a
    function of its inputs); None reads the clock.
    """
    condition = find(conditions, type_)
    if condition is None:
        condition = meta_pb2.Condition(type=type_)
        conditions.append(condition)
        condition = conditions[-1]
    elif (
        condition.status == status
        and condition.reason == reason
        and condition.message == message
        and condition.observed_generation == observed_generation
    ):
        return False
    if condition.status != status or not condition.HasField("last_transition_time"):
        stamp = now or datetime.datetime.now(datetime.UTC)
        condition.last_transition_time.FromDatetime(stamp.replace(microsecond=0))
    condition.status = status
    condition.reason = reason
    condition.message = message
    condition.observed_generation = observed_generation
    return True
