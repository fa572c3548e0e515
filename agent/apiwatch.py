"""Watching which APIs the member serves, so discovery reruns as soon as they change.

Discovery (a GET per group-version) is too costly for every heartbeat, yet a CRD
removed from the member must leave the cluster's ``apiEnablements`` within a heartbeat,
or the scheduler keeps choosing the cluster for a kind it no longer serves. Every API
group-version the member serves has an APIService (the API server registers one for
each built-in and each CRD group-version; an aggregated API brings its own), and every
custom kind a CustomResourceDefinition. Watching both is the cheap change signal: an
event that changes what an object says about serving (see :func:`serving`) marks
discovery due at the next heartbeat (:meth:`agent.facts.Facts.rediscover`). Other
events (a schema edit, status churn) change nothing that discovery reports, and cost
nothing more than reading them.

Each kind is listed, then watched from the list's resourceVersion; a watch that the
API server ends (its timeout) resumes from the last version seen, one that expired
(410 Gone) is listed again at once, and one that failed is listed again after an
exponential backoff. A list is compared with what was known, so what changed while no
watch was open is noticed too. Anything but an error talking to the member ends the
task, and :meth:`agent.main.Agent.run` ends the process with it.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import threading
from collections.abc import Callable, Hashable, Iterable
from typing import Any, TypeVar

import urllib3
from kubernetes.client.exceptions import ApiException
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception_type,
    stop_never,
    wait_exponential_jitter,
)
from tenacity.wait import wait_base

from agent.kube import Kube, KubeError, RefusedError, describe

log = logging.getLogger(__name__)
R = TypeVar("R")
Manifest = dict[str, Any]

# How long the API server keeps one watch open; it then ends it, and the watch resumes
# from the last resourceVersion (no list). Also the longest a stopped watch thread
# lingers (it is a daemon, and delivers nothing once stopped).
WATCH_SECONDS = 60
# Errors talking to the member: retried after a backoff, the member may be restarting.
# Any other error is a bug, and ends the agent loudly.
TRANSIENT = (KubeError, ApiException, urllib3.exceptions.HTTPError, OSError, json.JSONDecodeError)
# A watch that failed is listed again after 0.5 s, doubling (with jitter) up to 30 s.
BACKOFF = wait_exponential_jitter(multiplier=0.5, max=30)


class Expired(Exception):
    """The watch's resourceVersion is too old (410 Gone): list again."""


@dataclasses.dataclass(frozen=True)
class Watched:
    kind: str
    path: str


CRDS = Watched(
    "CustomResourceDefinition", "/apis/apiextensions.k8s.io/v1/customresourcedefinitions"
)
API_SERVICES = Watched("APIService", "/apis/apiregistration.k8s.io/v1/apiservices")
WATCHED = (CRDS, API_SERVICES)


def _condition(manifest: Manifest, type_: str) -> str:
    for condition in (manifest.get("status") or {}).get("conditions") or []:
        if condition.get("type") == type_:
            return str(condition.get("status", ""))
    return ""


def serving(kind: str, manifest: Manifest) -> Hashable:
    """What of a CRD or an APIService decides what the member's discovery lists; two
    versions of an object with the same value serve the same APIs.

    A CRD: its group, scope, the names discovery lists (the accepted ones, which lag
    the spec's until the API server accepts them), the versions it serves, whether it
    is Established, and whether it is being deleted. An APIService: its group-version
    and whether it is Available (an aggregated API whose backend is down is not
    listed).
    """
    if kind == CRDS.kind:
        spec = manifest.get("spec") or {}
        accepted = (manifest.get("status") or {}).get("acceptedNames") or {}
        served = sorted(
            str(version.get("name"))
            for version in spec.get("versions") or []
            if version.get("served")
        )
        return (
            spec.get("group"),
            spec.get("scope"),
            accepted.get("plural"),
            accepted.get("kind"),
            tuple(served),
            _condition(manifest, "Established"),
            bool((manifest.get("metadata") or {}).get("deletionTimestamp")),
        )
    if kind == API_SERVICES.kind:
        spec = manifest.get("spec") or {}
        return (spec.get("group"), spec.get("version"), _condition(manifest, "Available"))
    raise ValueError(f"not a kind that decides discovery: {kind}")


class Served:
    """What the objects of one watched kind say about serving, by name; each method
    says whether what the member serves may have changed."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self.known: dict[str, Hashable] = {}

    def listed(self, items: Iterable[Manifest]) -> bool:
        """A full listing: anything added, gone or changed since is a change (the
        first listing always is, unless the kind has no objects: nothing was known)."""
        fresh = {_name(item): serving(self.kind, item) for item in items}
        changed = fresh != self.known
        self.known = fresh
        return changed

    def event(self, type_: str, manifest: Manifest) -> bool:
        """One watch event (ADDED, MODIFIED or DELETED)."""
        name = _name(manifest)
        if type_ == "DELETED":
            self.known.pop(name, None)
            return True
        state = serving(self.kind, manifest)
        changed = name not in self.known or self.known[name] != state
        self.known[name] = state
        return changed


def _name(manifest: Manifest) -> str:
    return str((manifest.get("metadata") or {}).get("name", ""))


class APIWatch:
    """Watches the member's CRDs and APIServices; ``on_change`` is called on the event
    loop whenever what the member serves may have changed."""

    def __init__(
        self, kube: Kube, on_change: Callable[[], None], *, backoff: wait_base = BACKOFF
    ) -> None:
        self.kube = kube
        self.on_change = on_change
        self.backoff = backoff
        self.changes = 0

    async def run(self) -> None:
        async with asyncio.TaskGroup() as group:
            for watched in WATCHED:
                group.create_task(self._watch(watched), name=f"watch-{watched.kind}")

    async def _watch(self, watched: Watched) -> None:
        served = Served(watched.kind)
        resource_version: list[str | None] = [None]

        def log_retry(state: RetryCallState) -> None:
            error = state.outcome.exception() if state.outcome else None
            # Forbidden means the agent's RBAC lacks list/watch on the kind: only the
            # heartbeats' periodic discovery then sees its changes. Other errors are the
            # member's API server being away, which the heartbeats already report.
            forbidden = isinstance(error, RefusedError | ApiException) and error.status in (
                401,
                403,
            )
            log.log(
                logging.WARNING if forbidden else logging.DEBUG,
                "watching %ss: %s; retrying in %.1fs",
                watched.kind,
                describe(error) if isinstance(error, Exception) else error,
                state.upcoming_sleep,
            )

        while True:
            # A fresh backoff after every watch that ended well: one that breaks after an
            # hour is retried after the shortest delay.
            retrying = AsyncRetrying(
                wait=self.backoff,
                stop=stop_never,
                retry=retry_if_exception_type(TRANSIENT),
                before_sleep=log_retry,
                reraise=True,
            )
            async for attempt in retrying:
                with attempt:
                    if attempt.retry_state.attempt_number > 1:
                        resource_version[0] = None  # after a failure, a fresh list
                    await Handoff.run(
                        f"watch-{watched.kind}",
                        self._list_and_watch,
                        watched,
                        served,
                        resource_version,
                    )

    def _list_and_watch(
        self,
        handoff: Handoff,
        watched: Watched,
        served: Served,
        resource_version: list[str | None],
    ) -> None:
        """List (unless a resourceVersion is known), then watch until the API server
        ends the watch; blocking, run in a thread of its own. ``resource_version`` holds
        the version to resume from, kept across calls."""
        since = resource_version[0]
        if since is None:
            listing = self.kube.raw_get(watched.path, timeout=30)
            if served.listed(listing.get("items") or []):
                handoff.call_soon(self._changed, f"{watched.kind}s", "listed")
            since = resource_version[0] = str((listing.get("metadata") or {})["resourceVersion"])
        try:
            for event in self.kube.watch_events(
                watched.path, resource_version=since, timeout=WATCH_SECONDS
            ):
                if handoff.stopped.is_set():
                    return
                type_, manifest = event["type"], event["object"]
                if type_ == "ERROR":
                    if manifest.get("code") == 410:
                        raise Expired(manifest.get("message", ""))
                    raise RefusedError(
                        f"watch {watched.path}: {manifest.get('message', '')}",
                        int(manifest.get("code") or 0),
                    )
                resource_version[0] = str(
                    (manifest.get("metadata") or {}).get("resourceVersion") or resource_version[0]
                )
                if type_ != "BOOKMARK" and served.event(type_, manifest):
                    what = f"{watched.kind} {_name(manifest)}"
                    handoff.call_soon(self._changed, what, type_.lower())
        except Expired:
            # Expected now and then (the API server keeps a window of history): list
            # again at once; what changed in between shows in the listing.
            resource_version[0] = None

    def _changed(self, what: str, how: str) -> None:
        self.changes += 1
        log.info("%s %s: API discovery due at the next heartbeat", what, how)
        self.on_change()


class Handoff:
    """What a blocking call running in a thread of its own is given: whether whoever
    waits for it has gone, and a way to hand calls back to the event loop."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.stopped = threading.Event()

    def call_soon(self, function: Callable[..., None], *args: Any) -> None:
        if self.stopped.is_set():
            return
        # A closed loop raises: nobody is listening any more.
        with contextlib.suppress(RuntimeError):
            self.loop.call_soon_threadsafe(function, *args)

    @classmethod
    async def run(cls, name: str, function: Callable[..., R], *args: Any) -> R:
        """Run ``function(handoff, *args)`` in a daemon thread of its own (a watch would
        hold one of the Kube executor's workers for a minute at a time) and wait for its
        result or error. Cancelled, the thread is told to hand nothing more over; it
        ends with its watch."""
        handoff = cls(asyncio.get_running_loop())
        done: asyncio.Future[R] = handoff.loop.create_future()

        def settle(error: BaseException | None, result: Any) -> None:
            if done.done():
                return  # cancelled meanwhile
            if error is not None:
                done.set_exception(error)
            else:
                done.set_result(result)

        def target() -> None:
            try:
                result = function(handoff, *args)
            except BaseException as error:
                handoff.call_soon(settle, error, None)
            else:
                handoff.call_soon(settle, None, result)

        threading.Thread(target=target, name=name, daemon=True).start()
        try:
            return await done
        finally:
            handoff.stopped.set()
