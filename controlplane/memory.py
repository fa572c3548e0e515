"""Handing memory back to the system after large requests.

A request of a few MiB is decoded into buffers and objects that are freed as soon as
it is answered, but glibc's allocator keeps freed heap memory for reuse unless the
top of the heap is free, and a run of large requests leaves it fragmented: measured
with ``bench.hostile_memory``, a thousand refused 1 MiB templates grew the control
plane from 52 to 186 MiB for good. ``malloc_trim`` gives those pages back. It is
called at most once a second, a moment after a large request, never per request.

On a system without glibc this does nothing.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import logging

log = logging.getLogger(__name__)

LARGE_REQUEST_BYTES = 256 * 1024
"""Requests from this size on schedule a trim."""

_TRIM_DELAY = 1.0


def _libc() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        libc = ctypes.CDLL(name)
        libc.malloc_trim  # noqa: B018 - only glibc has it
    except (OSError, AttributeError):
        return None
    return libc


_LIBC = _libc()
_pending: asyncio.TimerHandle | None = None


def _trim() -> None:
    global _pending
    _pending = None
    if _LIBC is not None:
        _LIBC.malloc_trim(0)


def after_large_request(size: int) -> None:
    """Note a request of ``size`` bytes; trims the heap a moment later if it was large."""
    global _pending
    if size < LARGE_REQUEST_BYTES or _LIBC is None or _pending is not None:
        return
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        return
    _pending = loop.call_later(_TRIM_DELAY, _trim)
