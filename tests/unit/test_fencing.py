"""The control plane's fence on agent streams (controlplane/fencing.py), as a table:
which hello is admitted, given the newest elected agent seen for its cluster."""

from __future__ import annotations

import pytest

from controlplane.fencing import Leader, newest, refusal

A5 = Leader("agent-a", 5)


@pytest.mark.parametrize(
    ("seen", "hello", "refused", "after"),
    [
        # No leader seen yet (a first connect, a restarted control plane): admitted.
        (None, Leader("agent-a", 5), None, A5),
        # The same leader reconnecting: admitted, replacing its stream as before.
        (A5, Leader("agent-a", 5), None, A5),
        # A newer epoch: the new leader, admitted; it replaces the current stream.
        (A5, Leader("agent-b", 6), None, Leader("agent-b", 6)),
        (A5, Leader("agent-a", 9), None, Leader("agent-a", 9)),
        # An older epoch: a deposed leader, refused, whoever it is.
        (A5, Leader("agent-b", 4), "agent agent-a holds lease epoch 5; this agent's", A5),
        (A5, Leader("agent-a", 4), "epoch 4 is older", A5),
        # Two agents cannot have acquired the lease at one epoch.
        (A5, Leader("agent-b", 5), "claims the same epoch", A5),
        # An agent that does not elect: admitted as before, and the fence stays.
        (A5, Leader("", 0), None, A5),
        (None, Leader("", 0), None, None),
    ],
)
def test_which_hello_is_admitted(
    seen: Leader | None, hello: Leader, refused: str | None, after: Leader | None
) -> None:
    why = refusal(seen, hello)
    if refused is None:
        assert why is None
        assert newest(seen, hello) == after
    else:
        assert why is not None and refused in why
        assert seen == after


def test_a_refusal_names_both_agents_and_both_epochs() -> None:
    why = refusal(A5, Leader("agent-b", 3))
    assert why == (
        "agent agent-a holds lease epoch 5; this agent's (agent-b) epoch 3 is older: "
        "it is no longer the leader"
    )
    # What an agent says is bounded in what is echoed back.
    long = refusal(Leader("x" * 1000, 5), Leader("y\nz", 3))
    assert long is not None and len(long) < 400 and "\n" not in long
