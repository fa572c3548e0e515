"""The agent's reconnect backoff grows while connecting fails, and starts over once a
session was established."""

from __future__ import annotations

from tenacity import AsyncRetrying, RetryCallState

from agent.main import ReconnectBackoff


def state(attempt: int) -> RetryCallState:
    made = RetryCallState(AsyncRetrying(), fn=None, args=(), kwargs={})
    made.attempt_number = attempt
    return made


def test_the_backoff_grows_while_no_session_is_established() -> None:
    backoff = ReconnectBackoff(lambda: 0)
    waits = [backoff(state(attempt)) for attempt in range(1, 9)]
    floors = [min(20.0, 0.5 * 2**n) for n in range(8)]
    assert all(floor <= wait <= floor + 1 for wait, floor in zip(waits, floors, strict=True))
    assert waits[-1] >= 20


def test_a_session_established_starts_the_backoff_over() -> None:
    sessions = [0]
    backoff = ReconnectBackoff(lambda: sessions[0])
    for attempt in range(1, 9):
        backoff(state(attempt))  # the control plane was unreachable a long time
    sessions[0] += 1  # then a session was established, and ended
    assert backoff(state(9)) <= 0.5 + 1
    assert 1.0 <= backoff(state(10)) <= 1.0 + 1
