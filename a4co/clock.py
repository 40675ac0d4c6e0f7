"""The one clock. Every "now" in the code base comes from `clock.now()`.

Tests move time with `clock.freeze(at)` / `clock.advance(seconds)` / `clock.reset()`; the
override is process-wide (not thread-local) so that worker threads see the same time.
"""
from __future__ import annotations

import datetime as dt
import threading

_lock = threading.Lock()
_frozen: dt.datetime | None = None
_offset = dt.timedelta(0)


def now() -> dt.datetime:
    """Current time, timezone-aware (UTC)."""
    with _lock:
        if _frozen is not None:
            return _frozen
        offset = _offset
    return dt.datetime.now(dt.UTC) + offset


def freeze(at: dt.datetime | None = None) -> dt.datetime:
    """Stop the clock at `at` (default: the current time) until `reset()`."""
    global _frozen
    at = at or now()
    if at.tzinfo is None:
        raise ValueError("clock.freeze needs an aware datetime")
    with _lock:
        _frozen = at
    return at


def advance(seconds: float) -> dt.datetime:
    """Move the clock forward; works frozen (moves the frozen instant) or running (adds an offset)."""
    global _frozen, _offset
    delta = dt.timedelta(seconds=seconds)
    with _lock:
        if _frozen is not None:
            _frozen += delta
        else:
            _offset += delta
    return now()


def reset() -> None:
    global _frozen, _offset
    with _lock:
        _frozen = None
        _offset = dt.timedelta(0)
