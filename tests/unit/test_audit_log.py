"""The audit log's file: JSON lines, rotation by size, reading back across rotations."""

from __future__ import annotations

import datetime
from pathlib import Path

from archipel.v1alpha2 import access_pb2
from controlplane.audit import AuditLog


def _event(n: int, when: datetime.datetime) -> access_pb2.AuditEvent:
    event = access_pb2.AuditEvent(
        identity=f"user-{n}", verb="Apply", kind="ConfigMap", name=f"object-{n}", code="OK"
    )
    event.time.FromDatetime(when)
    return event


def test_rotates_by_size_and_reads_back_in_order(tmp_path: Path) -> None:
    path = tmp_path / "audit" / "audit.log"
    log = AuditLog(path, max_bytes=2000, backups=3, replica="replica-0")
    start = datetime.datetime(2026, 12, 1, tzinfo=datetime.UTC)
    try:
        for n in range(100):
            log.record(_event(n, start + datetime.timedelta(minutes=n)))
        events = log.read(since=None)
    finally:
        log.close()
    # Rotated: the current file and at most three backups, none over the size.
    files = sorted(p.name for p in path.parent.iterdir())
    assert files == ["audit.log", "audit.log.1", "audit.log.2", "audit.log.3"]
    assert all(p.stat().st_size <= 2000 for p in path.parent.iterdir())
    assert path.stat().st_mode & 0o777 == 0o600
    # What is kept is the most recent events, oldest first, each whole.
    names = [e.name for e in events]
    assert names == [f"object-{n}" for n in range(100 - len(names), 100)]
    assert len(names) > 10
    assert {e.replica for e in events} == {"replica-0"}


def test_since_and_limit(tmp_path: Path) -> None:
    log = AuditLog(tmp_path / "audit.log", max_bytes=1 << 20, backups=1, replica="r")
    start = datetime.datetime(2026, 12, 1, tzinfo=datetime.UTC)
    try:
        for n in range(10):
            log.record(_event(n, start + datetime.timedelta(hours=n)))
        recent = log.read(since=start + datetime.timedelta(hours=7))
        last_two = log.read(since=None, limit=2)
    finally:
        log.close()
    assert [e.name for e in recent] == ["object-7", "object-8", "object-9"]
    assert [e.name for e in last_two] == ["object-8", "object-9"]


def test_a_line_cut_short_is_skipped(tmp_path: Path) -> None:
    path = tmp_path / "audit.log"
    log = AuditLog(path, max_bytes=1 << 20, backups=1, replica="r")
    start = datetime.datetime(2026, 12, 1, tzinfo=datetime.UTC)
    try:
        log.record(_event(1, start))
        log.read(since=None)  # waits until the line is written
        with path.open("a") as handle:
            handle.write('{"identity":"cut sh')  # a crash mid-write
            handle.write("\n")
        log.record(_event(2, start))
        events = log.read(since=None)
    finally:
        log.close()
    assert [e.name for e in events] == ["object-1", "object-2"]


def test_no_path_keeps_no_log(tmp_path: Path) -> None:
    log = AuditLog(None, max_bytes=1, backups=1, replica="r")
    log.record(_event(1, datetime.datetime.now(datetime.UTC)))
    assert log.read(since=None) == []
    log.close()
