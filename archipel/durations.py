"""Durations as people type them on command lines: ``90s``, ``15m``, ``1h30m``, ``2d``.

One parser for the CLI (``--ttl``, ``--since``) and the control plane's flags
(``--agent-cert-validity``): Go's and kubectl's units, largest first, or a bare number
of seconds.
"""

from __future__ import annotations

import datetime
import re

_UNITS = re.compile(r"^(?:(\d+)d)?(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?$")


def parse_duration(text: str) -> datetime.timedelta:
    """A positive duration; :class:`ValueError` naming what is wrong otherwise."""
    value = text.strip()
    if value.isdigit():
        seconds = int(value)
    else:
        match = _UNITS.match(value)
        if not value or match is None:
            raise ValueError(f"{text!r} is not a duration such as 90s, 15m, 1h30m or 2d")
        days, hours, minutes, rest = (int(part or 0) for part in match.groups())
        seconds = ((days * 24 + hours) * 60 + minutes) * 60 + rest
    if seconds <= 0:
        raise ValueError(f"{text!r}: a duration must be positive")
    return datetime.timedelta(seconds=seconds)
