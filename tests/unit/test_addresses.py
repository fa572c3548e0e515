"""Several addresses for one server: how flags and configs give them, and how the CLI's
channel and the agent move from one to the next (no server here: fakes only)."""

from __future__ import annotations

from typing import Any

import grpc
import pytest
from tenacity import RetryCallState

from agent.main import Agent
from archipel import addresses
from archipel.client import Config, FailoverChannel


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("a:1", ["a:1"]),
        ("a:1,b:2", ["a:1", "b:2"]),
        (" a:1 , b:2 ,", ["a:1", "b:2"]),
        (["a:1", "b:2,c:3"], ["a:1", "b:2", "c:3"]),
        ([], []),
    ],
)
def test_addresses_come_comma_separated_repeated_or_both(
    given: str | list[str], expected: list[str]
) -> None:
    assert addresses.split(given) == expected


def test_a_config_names_its_servers() -> None:
    assert Config(server="a:1,b:2", token="t").servers == ["a:1", "b:2"]


class _Unavailable(grpc.RpcError):
    def code(self) -> grpc.StatusCode:
        return grpc.StatusCode.UNAVAILABLE


class _FakeChannel:
    """One server: its unary methods answer with the server's name, or fail."""

    def __init__(self, server: str, down: set[str]) -> None:
        self.server = server
        self.down = down
        self.closed = False

    def unary_unary(self, method: str, *args: Any) -> Any:
        def call(request: Any, **kwargs: Any) -> str:
            if self.server in self.down:
                raise _Unavailable()
            return self.server

        return call

    def close(self) -> None:
        self.closed = True


def test_the_channel_moves_on_from_a_server_that_does_not_answer() -> None:
    down = {"a:1"}
    made: list[_FakeChannel] = []

    def connect(server: str) -> Any:
        made.append(_FakeChannel(server, down))
        return made[-1]

    channel = FailoverChannel(["a:1", "b:2", "c:3"], connect)
    method = channel.unary_unary("/svc/Method")
    with pytest.raises(grpc.RpcError):
        method(object())
    assert method(object()) == "b:2"
    assert method(object()) == "b:2"  # it stays with the one that answers
    down.add("b:2")
    with pytest.raises(grpc.RpcError):
        method(object())
    assert method(object()) == "c:3"
    down.clear()
    channel.close()
    assert [c.server for c in made] == ["a:1", "b:2", "c:3"]
    assert all(c.closed for c in made)


def test_the_agent_tries_the_next_address_after_a_failed_session() -> None:
    agent = Agent(server="a:1,b:2", token="t", cluster="m", kube=object())  # type: ignore[arg-type]
    assert agent.servers == ["a:1", "b:2"]
    assert agent.server == "a:1"
    state = RetryCallState(retry_object=None, fn=None, args=(), kwargs={})  # type: ignore[arg-type]
    state.upcoming_sleep = 0.5
    agent._next_server(state)
    assert agent.server == "b:2"
    agent._next_server(state)
    assert agent.server == "a:1"
