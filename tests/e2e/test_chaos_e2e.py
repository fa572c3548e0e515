"""A short chaos run on real members: a seeded history of changes under random kills
and freezes of the two control-plane replicas, their etcd, the agents and the members'
API servers, and afterwards every member holds exactly what the templates and policies
say.

The long run (``make chaos DURATION=300``) is for figures; this one keeps the promise
checked on every ``make test``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from archipel.fleet.members import Fleet
from bench.chaos import Run, Settings

pytestmark = pytest.mark.members(count=3, profile="api")


def test_nothing_is_lost_extra_or_misplaced_after_random_faults(
    members: Fleet, tmp_path: Path
) -> None:
    settings = Settings(
        duration=60.0, seed=11, fault_interval=4.0, converge_timeout=180.0, replicas=2
    )
    report = Run(settings, members.members, tmp_path).run()
    summary = json.dumps({k: v for k, v in report.items() if k != "injected"}, indent=2)
    assert report["faults"] >= 5, summary
    assert report["operations"] > 0, summary
    assert (report["lost"], report["extra"], report["misplaced"], report["wrong"]) == (
        0,
        0,
        0,
        0,
    ), summary
    assert report["converge_seconds"] is not None, summary
