"""API discovery follows the member: which CRD and APIService events mark it due
(agent.apiwatch), the watch loop's relists and supervision, and which heartbeats then
discover and send (agent.facts.DiscoverySchedule). No API server: the watch runs
against a scripted one, and no backoff is slept."""

from __future__ import annotations

import asyncio
import copy
import threading
from collections.abc import Iterator
from typing import Any

import kubernetes
import pytest
import urllib3
from tenacity import wait_none

from agent.apiwatch import API_SERVICES, CRDS, APIWatch, Served, serving
from agent.facts import DiscoverySchedule
from agent.kube import Kube, NotServed, RefusedError


def crd(name: str = "widgets.example.com", *, established: str = "True") -> dict[str, Any]:
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": name, "resourceVersion": "1"},
        "spec": {
            "group": "example.com",
            "scope": "Namespaced",
            "names": {"kind": "Widget", "plural": "widgets"},
            "versions": [
                {"name": "v1", "served": True, "storage": True, "schema": {"type": "object"}}
            ],
        },
        "status": {
            "acceptedNames": {"kind": "Widget", "plural": "widgets"},
            "storedVersions": ["v1"],
            "conditions": [
                {"type": "NamesAccepted", "status": "True"},
                {"type": "Established", "status": established},
            ],
        },
    }


def api_service(name: str = "v1.example.com", *, available: str = "True") -> dict[str, Any]:
    return {
        "apiVersion": "apiregistration.k8s.io/v1",
        "kind": "APIService",
        "metadata": {"name": name, "resourceVersion": "1"},
        "spec": {"group": "example.com", "version": "v1", "groupPriorityMinimum": 1000},
        "status": {"conditions": [{"type": "Available", "status": available}]},
    }


# -- which events change what the member serves ------------------------------------------


def test_a_crd_changes_serving_with_what_discovery_lists() -> None:
    before = serving(CRDS.kind, crd())
    for edit in (
        lambda c: c["spec"]["versions"].append({"name": "v2", "served": True}),
        lambda c: c["spec"]["versions"][0].update(served=False),
        lambda c: c["status"]["conditions"][1].update(status="False"),
        lambda c: c["metadata"].update(deletionTimestamp="2026-01-01T00:00:00Z"),
        lambda c: c["status"]["acceptedNames"].update(kind="Gadget", plural="gadgets"),
        lambda c: c["spec"].update(scope="Cluster"),
    ):
        changed = crd()
        edit(changed)
        assert serving(CRDS.kind, changed) != before, changed


def test_a_crd_keeps_serving_through_edits_discovery_does_not_show() -> None:
    before = serving(CRDS.kind, crd())
    for edit in (
        lambda c: c["spec"]["versions"][0].update(schema={"type": "object", "required": ["a"]}),
        lambda c: c["metadata"].update(resourceVersion="2", labels={"a": "b"}),
        lambda c: c["status"].update(storedVersions=["v1", "v0"]),
        # Served versions in another order serve the same.
        lambda c: c["spec"]["versions"].insert(0, {"name": "v0", "served": False}),
    ):
        changed = crd()
        edit(changed)
        assert serving(CRDS.kind, changed) == before, changed


def test_an_api_service_changes_serving_with_its_availability() -> None:
    before = serving(API_SERVICES.kind, api_service())
    assert serving(API_SERVICES.kind, api_service(available="False")) != before
    relabelled = api_service()
    relabelled["metadata"]["labels"] = {"kube-aggregator.kubernetes.io/automanaged": "true"}
    relabelled["spec"]["groupPriorityMinimum"] = 2000
    assert serving(API_SERVICES.kind, relabelled) == before


def test_served_says_which_events_and_listings_are_changes() -> None:
    served = Served(CRDS.kind)
    assert served.listed([]) is False  # nothing known, nothing there
    assert served.listed([crd("a.example.com")]) is True
    assert served.listed([crd("a.example.com")]) is False  # a relist of the same
    assert served.event("ADDED", crd("a.example.com")) is False  # already known
    assert served.event("ADDED", crd("b.example.com")) is True
    schema_edit = crd("b.example.com")
    schema_edit["spec"]["versions"][0]["schema"] = {"type": "object", "required": ["x"]}
    assert served.event("MODIFIED", schema_edit) is False
    assert served.event("MODIFIED", crd("b.example.com", established="False")) is True
    assert served.event("DELETED", crd("b.example.com")) is True
    # Deleted while no watch was open: the relist shows it by its absence.
    assert served.listed([]) is True


# -- the watch loop ------------------------------------------------------------------------


class Stop(Exception):
    """Not an error talking to the member: a bug, as far as the watch can tell."""


class ScriptedKube:
    """An API server answering the CRD watch's lists and watches from a script; the
    APIService watch lists nothing and then waits until released."""

    def __init__(self, script: list[Any]) -> None:
        self.script = script
        self.calls: list[tuple[str, str | None]] = []
        self.release = threading.Event()

    def raw_get(self, path: str, *, timeout: float = 5) -> Any:
        if path == API_SERVICES.path:
            return {"metadata": {"resourceVersion": "1"}, "items": []}
        self.calls.append(("list", None))
        step = self.script.pop(0)
        if isinstance(step, Exception):
            raise step
        return step

    def watch_events(
        self, path: str, *, resource_version: str, timeout: int
    ) -> Iterator[dict[str, Any]]:
        if path == API_SERVICES.path:
            self.release.wait(30)
            return
        self.calls.append(("watch", resource_version))
        step = self.script.pop(0)
        for event in step:
            if isinstance(event, Exception):
                raise event
            yield copy.deepcopy(event)


def listing(version: str, *items: dict[str, Any]) -> dict[str, Any]:
    return {"metadata": {"resourceVersion": version}, "items": list(items)}


def at(version: str, manifest: dict[str, Any]) -> dict[str, Any]:
    manifest = copy.deepcopy(manifest)
    manifest["metadata"]["resourceVersion"] = version
    return manifest


async def test_the_watch_resumes_relists_and_a_bug_ends_it_loudly() -> None:
    schema_edit = crd()
    schema_edit["spec"]["versions"][0]["schema"] = {"type": "object", "required": ["x"]}
    gone = {"type": "ERROR", "object": {"kind": "Status", "code": 410, "message": "too old"}}
    script: list[Any] = [
        listing("10", crd()),  # the first listing: a change (nothing was known)
        [
            {"type": "MODIFIED", "object": at("11", schema_edit)},  # no change
            {"type": "BOOKMARK", "object": {"metadata": {"resourceVersion": "12"}}},
        ],
        # The API server ended that watch: resumed from the bookmark, no list.
        [{"type": "MODIFIED", "object": at("13", crd(established="False"))}],  # a change
        [gone],
        # Expired: listed again at once; the same as known, so no change.
        listing("20", crd(established="False")),
        [urllib3.exceptions.ProtocolError("connection reset")],
        # A failed watch: listed again after the backoff; the CRD went meanwhile.
        RefusedError("GET: 503", 503),
        listing("30"),
        [Stop("a bug")],
    ]
    kube = ScriptedKube(script)
    marked: list[int] = []
    watch = APIWatch(kube, on_change=lambda: marked.append(1), backoff=wait_none())  # type: ignore[arg-type]
    try:
        with pytest.raises(ExceptionGroup) as ended:
            await asyncio.wait_for(watch.run(), timeout=30)
    finally:
        kube.release.set()
    assert ended.group_contains(Stop)
    assert kube.calls == [
        ("list", None),
        ("watch", "10"),
        ("watch", "12"),
        ("watch", "13"),
        ("list", None),
        ("watch", "20"),
        ("list", None),
        ("list", None),
        ("watch", "30"),
    ]
    assert script == []
    # The first listing, the CRD no longer Established, and its removal.
    assert len(marked) == watch.changes == 3


# -- which heartbeats discover, and which send --------------------------------------------


def beat(schedule: DiscoverySchedule, digest: bytes = b"same") -> tuple[bool, bool]:
    """One heartbeat whose discovery (if due) finds ``digest``: (discovered, sent)."""
    ticket = schedule.start()
    sent = schedule.finish(ticket, digest if ticket.due else None)
    return ticket.due, sent


def test_discovery_runs_first_then_every_tenth_beat_and_sends_only_news() -> None:
    schedule = DiscoverySchedule(fallback_beats=10)
    assert beat(schedule) == (True, True)
    assert [beat(schedule) for _ in range(9)] == [(False, False)] * 9
    assert beat(schedule) == (True, False)  # the safety net; nothing new to send
    assert [beat(schedule, b"new")[0] for _ in range(9)] == [False] * 9
    assert beat(schedule, b"new") == (True, True)


def test_a_change_makes_the_next_two_beats_discover() -> None:
    schedule = DiscoverySchedule(fallback_beats=10)
    beat(schedule)
    assert beat(schedule) == (False, False)
    schedule.changed()
    # The member's discovery may lag the watch event: the first still reads the old
    # set, the one after reads the new one and sends it.
    assert beat(schedule, b"same") == (True, False)
    assert beat(schedule, b"crd gone") == (True, True)
    assert beat(schedule, b"crd gone") == (False, False)


def test_a_change_during_a_discovery_is_not_lost() -> None:
    schedule = DiscoverySchedule(fallback_beats=10)
    beat(schedule)
    schedule.changed()
    ticket = schedule.start()
    assert ticket.due
    schedule.changed()  # while that discovery reads the member
    schedule.finish(ticket, b"same")
    assert beat(schedule)[0] and beat(schedule)[0]  # the change's own two
    assert not beat(schedule)[0]


def test_a_failed_discovery_is_due_again() -> None:
    schedule = DiscoverySchedule(fallback_beats=10)
    beat(schedule)
    schedule.changed()
    assert schedule.start().due  # ... and it fails: finish is never called
    assert beat(schedule) == (True, False)


def test_a_new_stream_is_sent_the_apis_and_an_old_streams_beat_changes_nothing() -> None:
    schedule = DiscoverySchedule(fallback_beats=10)
    beat(schedule)
    old = schedule.start()
    schedule.reset()
    assert schedule.finish(old, b"from the old stream") is False
    assert beat(schedule, b"same") == (True, True)  # the same set, but a new stream


# -- a kind the member stopped serving -----------------------------------------------------


def test_deleting_an_object_of_a_kind_no_longer_served_finds_it_gone(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A work leaving a member that lost its CRD: its objects went with the CRD, and the
    delete must not fail for ever on the kind discovery no longer finds."""
    kube = Kube(kubernetes.client.ApiClient())

    def not_served(api_version: str, kind: str) -> Any:
        raise NotServed(f"the member does not serve {kind} in {api_version}")

    monkeypatch.setattr(kube, "resource", not_served)
    try:
        assert kube.delete("example.com/v1", "Widget", "shop", "gizmo") is False
    finally:
        kube.close()
