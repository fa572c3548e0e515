"""Per-identity rate limits on mutating calls: a token bucket for each caller.

Every call that changes something (any method of an ``archipel.*`` service whose name
does not start with Get, List or Watch: Apply, Delete, Join, and whatever mutating
RPC is added later) takes one token from its caller's bucket. A bucket holds at most
``burst`` tokens and refills at ``rate`` per second; a call that finds it empty is
refused with ``RESOURCE_EXHAUSTED``, a message naming the limit and when to retry,
and that hint in the trailing metadata ``retry-after-ms`` (the CLI waits as long and
tries again). Reads are never limited: they cost etcd no writes.

Each call costs O(1): a dictionary lookup and a little arithmetic. Memory is bounded:
a bucket idle long enough to have refilled is the same as no bucket, so it is
dropped, and past :data:`~archipel.limits.MAX_RATE_LIMITED_IDENTITIES` busy ones the
least recently seen goes (which can only ever be lenient to it).

The authentication interceptor (:mod:`controlplane.auth`) calls
:meth:`RateLimitInterceptor.check` once it knows who is calling: a person or program is
limited by its name (``user:<name>``; the admin is ``user:admin``), so rotating a token
does not reset a bucket. Calls that authenticate themselves (an agent's stream, an
agent registering) are limited by a hash of their bearer token, or as ``anonymous``.
"""

from __future__ import annotations

import collections
import hashlib
import math
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import grpc

from archipel import limits
from controlplane import handlers, metrics

RETRY_AFTER_KEY = "retry-after-ms"
"""Trailing metadata of a rate-limited call: milliseconds until a retry can succeed."""

READ_VERBS = ("Get", "List", "Watch")
"""Methods whose name starts with one of these only read; every other method of an
Archipel service is a mutating call."""

Metadata = Sequence[tuple[str, str | bytes]] | None


def is_mutating(method: str) -> bool:
    """Whether ``/package.Service/Method`` changes something: any method of an Archipel
    service but its reads (health checks and reflection are not Archipel's)."""
    service, _, name = method.rpartition("/")
    return service.startswith("/archipel.") and not name.startswith(READ_VERBS)


def identity_key(metadata: Metadata) -> str:
    """Who is calling, as far as rate limits go: a hash of the bearer token (never the
    token itself, which then stays out of memory dumps and logs), or ``anonymous``."""
    for key, value in metadata or ():
        if key.lower() == "authorization":
            text = value.decode(errors="replace") if isinstance(value, bytes) else value
            return "token:" + hashlib.sha256(text.encode()).hexdigest()[:32]
    return "anonymous"


class RateLimiter:
    """Token buckets by identity key; ``rate`` 0 means unlimited.

    ``clock`` is monotonic seconds (tests pass a fake one).
    """

    def __init__(
        self,
        rate: float,
        burst: float,
        *,
        clock: Callable[[], float] = time.monotonic,
        max_identities: int = limits.MAX_RATE_LIMITED_IDENTITIES,
    ) -> None:
        if rate < 0 or not math.isfinite(rate):
            raise ValueError(f"the rate must be a finite number from 0, not {rate}")
        if rate > 0 and burst < 1:
            raise ValueError(f"the burst must be at least 1 call, not {burst}")
        self.rate = rate
        self.burst = float(burst)
        self._clock = clock
        self._max_identities = max_identities
        # identity -> [tokens, when they were counted]; least recently used first.
        self._buckets: collections.OrderedDict[str, list[float]] = collections.OrderedDict()
        # A bucket untouched for this long is full again, as good as no bucket.
        self._refill_seconds = self.burst / rate if rate > 0 else 0.0

    @property
    def unlimited(self) -> bool:
        return self.rate == 0

    def __len__(self) -> int:
        """How many identities are tracked now."""
        return len(self._buckets)

    def acquire(self, identity: str) -> float:
        """Take a token for ``identity``: 0.0 when it had one, else the seconds until it
        will have one (and nothing is taken: a refused call costs no token)."""
        if self.rate == 0:
            return 0.0
        now = self._clock()
        self._forget_idle(now)
        bucket = self._buckets.get(identity)
        if bucket is None:
            bucket = self._buckets[identity] = [self.burst, now]
            if len(self._buckets) > self._max_identities:
                self._buckets.popitem(last=False)
        else:
            self._buckets.move_to_end(identity)
            bucket[0] = min(self.burst, bucket[0] + (now - bucket[1]) * self.rate)
            bucket[1] = now
        # (The epsilon forgives float rounding in the refill, never a real shortfall.)
        if bucket[0] >= 1 - 1e-9:
            bucket[0] = max(0.0, bucket[0] - 1)
            return 0.0
        return (1 - bucket[0]) / self.rate

    def _forget_idle(self, now: float) -> None:
        # The least recently used come first, so the scan stops at the first bucket
        # still refilling: each bucket is dropped once, O(1) per call on average.
        while self._buckets:
            oldest = next(iter(self._buckets.values()))
            if now - oldest[1] < self._refill_seconds:
                return
            self._buckets.popitem(last=False)


class RateLimitInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[type-arg]
    """Refuses a mutating call whose caller is over its rate, before any servicer code
    runs (the request is not even decoded).

    ``identity`` turns a call's metadata into its identity key (:func:`identity_key`).
    """

    def __init__(
        self,
        limiter: RateLimiter,
        *,
        identity: Callable[[Metadata], str] = identity_key,
    ) -> None:
        self.limiter = limiter
        self._identity = identity

    async def intercept_service(
        self,
        continuation: Callable[
            [grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any]]
        ],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any]:
        handler = await continuation(handler_call_details)
        if handler is None or self.limiter.unlimited:
            return handler
        identity = self._identity(handler_call_details.invocation_metadata)
        return self.check(identity, handler_call_details.method, handler)

    def check(
        self, identity: str, method: str, handler: grpc.RpcMethodHandler[Any, Any]
    ) -> grpc.RpcMethodHandler[Any, Any]:
        """``handler`` when ``identity`` may make this call of ``method`` now, else a
        handler of the same shape that refuses it (RESOURCE_EXHAUSTED, retry hint).

        For an authentication layer that knows the caller's name: call this with that
        name, once the caller is authenticated, instead of installing the interceptor.
        """
        if not is_mutating(method):
            return handler
        wait = self.limiter.acquire(identity)
        if not wait:
            return handler
        metrics.RATE_LIMITED.labels(method=method.rpartition("/")[2]).inc()
        wait_ms = max(1, math.ceil(wait * 1000))
        return handlers.refusing(
            handler,
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            self.message(wait_ms),
            trailing_metadata=((RETRY_AFTER_KEY, str(wait_ms)),),
        )

    def message(self, wait_ms: int) -> str:
        limiter = self.limiter
        return (
            f"rate limit: more than {limiter.rate:g} mutating calls per second (bursts of "
            f"{limiter.burst:g}) from this identity (--mutation-rate, --mutation-burst); "
            f"retry in {wait_ms} ms"
        )
