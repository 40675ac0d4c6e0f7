"""Garbage collection in the long-running processes (web workers, consumers, Celery workers).

CPython's cycle collector walks every tracked object of the generations it collects. A process
that has loaded Django, DRF, the admin, stripe and nats holds hundreds of thousands of objects
(modules, classes, functions, URL patterns, model metadata) that live as long as it does, and
a full collection walks them all: under the 75 sagas/s load test it paused the web workers for
up to 166 ms, the consumer process for up to 110 ms and the relay worker for up to 124 ms, each
stop holding up every request or message in that process (docs/benchmarks.md, "Seventh round").

`heap_freeze_startup` is called once a process has loaded what it serves with: it moves every
object allocated so far into the permanent generation, which collections skip. What is
allocated later (requests, messages) is collected as before. Cyclic garbage that exists at
that moment would never be freed, so it is collected first.
"""
from __future__ import annotations

import gc


def heap_freeze_startup() -> int:
    """Collect what startup left behind, then exempt every surviving object from later
    collections. Returns how many objects were frozen. Safe to call again (after a later
    warm-up): each call freezes what was allocated since."""
    gc.collect()
    gc.freeze()
    return gc.get_freeze_count()
