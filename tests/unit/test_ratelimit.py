"""Per-identity rate limits on mutating calls (controlplane/ratelimit.py), and the CLI
client's patience with them (archipel/client.py), on a fake clock."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import grpc
import pytest

from archipel import client as client_module
from archipel.client import Client, ClientError, Config
from controlplane import ratelimit
from controlplane.ratelimit import RateLimiter


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_burst_then_the_rate() -> None:
    clock = Clock()
    limiter = RateLimiter(10, 3, clock=clock)
    assert [limiter.acquire("a") for _ in range(3)] == [0.0, 0.0, 0.0]
    # Empty: the next token comes in 1/10 s, and a refusal takes nothing.
    assert limiter.acquire("a") == pytest.approx(0.1)
    assert limiter.acquire("a") == pytest.approx(0.1)
    clock.now += 0.05
    assert limiter.acquire("a") == pytest.approx(0.05)
    clock.now += 0.05
    assert limiter.acquire("a") == 0.0
    # Never more than the burst, however long the quiet spell.
    clock.now += 3600
    assert [limiter.acquire("a") for _ in range(4)][-1] > 0


def test_identities_have_buckets_of_their_own() -> None:
    clock = Clock()
    limiter = RateLimiter(1, 1, clock=clock)
    assert limiter.acquire("a") == 0.0
    assert limiter.acquire("a") > 0
    assert limiter.acquire("b") == 0.0


def test_zero_is_unlimited() -> None:
    limiter = RateLimiter(0, 0, clock=Clock())
    assert limiter.unlimited
    assert all(limiter.acquire("a") == 0.0 for _ in range(10_000))
    assert len(limiter) == 0


def test_bad_settings_are_refused() -> None:
    with pytest.raises(ValueError, match="burst"):
        RateLimiter(5, 0)
    with pytest.raises(ValueError, match="rate"):
        RateLimiter(-1, 5)


def test_idle_buckets_are_forgotten_and_memory_is_bounded() -> None:
    clock = Clock()
    limiter = RateLimiter(100, 10, clock=clock, max_identities=50)
    for index in range(1000):
        limiter.acquire(f"caller-{index}")
        assert len(limiter) <= 50
    # Full again after burst/rate = 0.1 s: such a bucket is the same as none.
    clock.now += 0.1
    limiter.acquire("another")
    assert len(limiter) == 1


def test_evicting_a_busy_identity_is_only_ever_lenient() -> None:
    clock = Clock()
    limiter = RateLimiter(1, 2, clock=clock, max_identities=2)
    limiter.acquire("a")
    limiter.acquire("a")
    assert limiter.acquire("a") > 0
    limiter.acquire("b")
    limiter.acquire("c")  # "a" is the least recently seen: forgotten
    assert limiter.acquire("a") == 0.0


@pytest.mark.parametrize(
    ("method", "mutating"),
    [
        ("/archipel.v1alpha1.ResourceTemplateService/Apply", True),
        ("/archipel.v1alpha2.PropagationPolicyService/Delete", True),
        ("/archipel.v1alpha2.ClusterAdminService/Join", True),
        ("/archipel.v1alpha1.AgentService/Connect", True),
        ("/archipel.v1alpha2.SomeNewService/Approve", True),
        ("/archipel.v1alpha2.ResourceTemplateService/GetScope", False),
        ("/archipel.v1alpha2.InfoService/GetVersion", False),
        ("/archipel.v1alpha1.PropagationWorkService/List", False),
        ("/archipel.v1alpha1.PropagationWorkService/Watch", False),
        ("/grpc.health.v1.Health/Check", False),
        ("/grpc.reflection.v1.ServerReflection/ServerReflectionInfo", False),
    ],
)
def test_which_calls_are_mutating(method: str, mutating: bool) -> None:
    assert ratelimit.is_mutating(method) is mutating


def test_the_identity_is_a_hash_of_the_credential() -> None:
    admin = ratelimit.identity_key((("authorization", "Bearer secret"),))
    assert admin.startswith("token:") and "secret" not in admin
    assert admin == ratelimit.identity_key((("Authorization", b"Bearer secret"),))
    assert admin != ratelimit.identity_key((("authorization", "Bearer other"),))
    assert ratelimit.identity_key(()) == ratelimit.identity_key(None) == "anonymous"


# -- the CLI's client waits as it is told ----------------------------------------------


class _Refused(grpc.RpcError):
    def __init__(self, code: grpc.StatusCode, trailing: tuple[tuple[str, str], ...]) -> None:
        self._code = code
        self._trailing = trailing

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return "rate limit: more than 5 mutating calls per second"

    def trailing_metadata(self) -> Any:
        return self._trailing


class _Method:
    def __init__(self, errors: list[grpc.RpcError]) -> None:
        self.errors = errors
        self.calls = 0

    def __call__(self, request: Any, *, metadata: Any, timeout: float) -> Any:
        self.calls += 1
        if self.errors:
            raise self.errors.pop(0)
        return "answer"


@pytest.fixture
def slept(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    recorded: list[float] = []
    monkeypatch.setattr(
        client_module,
        "RATE_LIMIT_RETRIES",
        client_module.RATE_LIMIT_RETRIES.copy(sleep=recorded.append),
    )
    monkeypatch.setattr(
        client_module,
        "CONNECTION_RETRIES",
        client_module.CONNECTION_RETRIES.copy(sleep=recorded.append),
    )
    return recorded


@pytest.fixture
def client() -> Iterator[Client]:
    made = Client(Config(server="127.0.0.1:9", token="t"))
    yield made
    made.close()


def _limited(milliseconds: str) -> _Refused:
    return _Refused(grpc.StatusCode.RESOURCE_EXHAUSTED, (("retry-after-ms", milliseconds),))


def test_the_client_waits_as_long_as_the_server_says(client: Client, slept: list[float]) -> None:
    method = _Method([_limited("250"), _limited("40")])
    assert client.call(method, object()) == "answer"
    assert method.calls == 3
    assert len(slept) == 2
    assert 0.25 <= slept[0] <= 0.25 * 1.1
    assert 0.04 <= slept[1] <= 0.04 * 1.1


def test_other_resource_exhausted_answers_are_not_retried(
    client: Client, slept: list[float]
) -> None:
    # A message over a size limit: sending it again changes nothing.
    method = _Method([_Refused(grpc.StatusCode.RESOURCE_EXHAUSTED, ())])
    with pytest.raises(ClientError, match="RESOURCE_EXHAUSTED") as raised:
        client.call(method, object())
    assert raised.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert method.calls == 1
    assert slept == []


def test_the_client_gives_up_after_its_patience(
    client: Client, slept: list[float], monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = Clock()
    monkeypatch.setattr(
        client_module,
        "RATE_LIMIT_RETRIES",
        client_module.RATE_LIMIT_RETRIES.copy(
            sleep=lambda seconds: setattr(clock, "now", clock.now + seconds)
        ),
    )
    monkeypatch.setattr("tenacity.time.monotonic", clock)
    method = _Method([_limited("60000") for _ in range(100)])
    with pytest.raises(ClientError, match="rate limit") as raised:
        client.call(method, object())
    assert raised.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert 2 <= method.calls <= 4  # 120 s of patience, a minute a wait
