"""Lists of server addresses, as flags and config files give them.

A server that runs as several replicas (the control plane, an etcd cluster) is named
by all of its addresses, and every program accepts them the same way: repeated
flags, comma-separated values, or both.
"""

from __future__ import annotations

from collections.abc import Iterable


def split(values: str | Iterable[str]) -> list[str]:
    """Addresses from one comma-separated string, or from several (a repeated flag or
    a YAML list), in order, blanks dropped."""
    items = [values] if isinstance(values, str) else list(values)
    return [part.strip() for item in items for part in str(item).split(",") if part.strip()]
