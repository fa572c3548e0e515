"""The audit log: one JSON line per mutating call and per read of Secrets.

Each line is an ``archipel.v1alpha2.AuditEvent`` in its proto3 JSON form, so the file,
the AuditService and ``archipel audit`` share one representation. Lines are handed
to a background thread (the standard library's QueueHandler and QueueListener), so a
slow disk never stalls the event loop, and the file rotates by size, as
kube-apiserver's ``--audit-log-maxsize`` and ``--audit-log-maxbackup`` do.
"""

from __future__ import annotations

import collections
import datetime
import io
import json
import logging
import logging.handlers
import os
import queue
from pathlib import Path

from google.protobuf import json_format

from archipel.v1alpha2 import access_pb2

MAX_LISTED_EVENTS = 10_000
"""Most events one AuditService.List answers with (the most recent ones)."""


class AuditLog:
    """Writes events to ``path`` (rotated at ``max_bytes``, ``backups`` old files kept);
    ``path`` None keeps no log."""

    def __init__(self, path: Path | None, *, max_bytes: int, backups: int, replica: str) -> None:
        self.path = path
        self.replica = replica
        self.backups = backups
        self._listener: logging.handlers.QueueListener | None = None
        self._file: logging.Handler | None = None
        # A Queue, not a SimpleQueue: the listener marks each line done, so a reader can
        # wait until every call answered so far is in the file.
        self._lines: queue.Queue[logging.LogRecord] = queue.Queue()
        self._logger = logging.getLogger(f"archipel.audit.{id(self)}")
        self._logger.propagate = False
        self._logger.setLevel(logging.INFO)
        if path is None:
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.exists():
            path.chmod(0o600)
        self._file = _PrivateRotatingFile(
            path, maxBytes=max_bytes, backupCount=backups, encoding="utf-8"
        )
        self._file.setFormatter(logging.Formatter("%(message)s"))
        self._logger.addHandler(logging.handlers.QueueHandler(self._lines))
        self._listener = logging.handlers.QueueListener(self._lines, self._file)
        self._listener.start()

    def record(self, event: access_pb2.AuditEvent) -> None:
        if self._listener is None:
            return
        event.replica = self.replica
        if not event.HasField("time"):
            event.time.FromDatetime(datetime.datetime.now(datetime.UTC))
        self._logger.info(
            json.dumps(json_format.MessageToDict(event), separators=(",", ":"), sort_keys=True)
        )

    def close(self) -> None:
        """Write what is queued and stop the writer thread."""
        if self._listener is not None:
            self._listener.stop()
            self._listener = None
            self._logger.handlers.clear()
        if self._file is not None:
            self._file.close()
            self._file = None

    def read(
        self, *, since: datetime.datetime | None, limit: int = MAX_LISTED_EVENTS
    ) -> list[access_pb2.AuditEvent]:
        """Events at or after ``since``, oldest first, at most ``limit`` (the most
        recent), including every event recorded before the call. Blocking: call it in
        an executor."""
        if self.path is None:
            return []
        if self._listener is not None:
            self._lines.join()
        limit = min(limit or MAX_LISTED_EVENTS, MAX_LISTED_EVENTS)
        files = [self.path.with_name(f"{self.path.name}.{n}") for n in range(self.backups, 0, -1)]
        events: collections.deque[access_pb2.AuditEvent] = collections.deque(maxlen=limit)
        for file in [*files, self.path]:
            if not file.exists():
                continue
            with file.open(encoding="utf-8", errors="replace") as lines:
                for line in lines:
                    event = _parse(line)
                    if event is None:
                        continue
                    if since is not None and event.time.ToDatetime(datetime.UTC) < since:
                        continue
                    events.append(event)
        return list(events)


class _PrivateRotatingFile(logging.handlers.RotatingFileHandler):
    """Audit lines name who did what: every file, rotated ones included, is created
    readable by the control plane's user alone."""

    def _open(self) -> io.TextIOWrapper:
        descriptor = os.open(self.baseFilename, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        return io.TextIOWrapper(
            io.FileIO(descriptor, "a"), encoding=self.encoding, errors=self.errors
        )


def _parse(line: str) -> access_pb2.AuditEvent | None:
    try:
        return json_format.Parse(line, access_pb2.AuditEvent())
    except json_format.ParseError:
        # A line cut short by a crash mid-write: skip it, keep the rest.
        return None
