"""a4co.heap: what long-running processes exempt from garbage collection once started."""
from __future__ import annotations

import gc
import os
import subprocess
import sys
import weakref

import pytest

from a4co.heap import heap_freeze_startup


class Node:
    def __init__(self):
        self.me = self  # a reference cycle: only the cycle collector frees it


@pytest.fixture
def unfrozen():
    yield
    gc.enable()
    gc.unfreeze()  # give this test process its heap back


def test_startup_objects_leave_the_collections_and_startup_garbage_is_freed_first(unfrozen):
    gc.disable()  # no automatic collection may free the garbage before the freeze does
    kept = Node()
    garbage = weakref.ref(Node())
    assert garbage() is not None
    assert heap_freeze_startup() > 0
    assert garbage() is None  # collected, not frozen forever
    assert not any(obj is kept for obj in gc.get_objects())  # no collection walks it any more


def test_what_is_allocated_after_the_freeze_is_collected_as_before(unfrozen):
    heap_freeze_startup()
    gc.disable()  # the collection below must be the one that frees it
    later = weakref.ref(Node())
    assert later() is not None
    gc.collect()
    assert later() is None


def _in_a_fresh_process(code: str) -> list[str]:
    """What `code` prints, run by a new interpreter on the test settings, split into words."""
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "a4co.settings.test"}
    return subprocess.run([sys.executable, "-c", "import gc, sys; " + code], env=env, capture_output=True,
                          text=True, timeout=60, check=True).stdout.split()


def test_a_web_worker_loads_every_view_and_freezes_before_its_first_request():
    # gunicorn imports a4co.wsgi in each worker after the fork.
    out = _in_a_fresh_process("import a4co.wsgi; "
                              "print(gc.get_freeze_count(), 'orders.apis' in sys.modules, 'saga.apis' in sys.modules)")
    assert int(out[0]) > 10_000 and out[1:] == ["True", "True"]


def test_a_celery_pool_process_loads_the_relay_and_freezes():
    out = _in_a_fresh_process("import django; django.setup(); from a4co.celery import _freeze_startup_heap; "
                              "_freeze_startup_heap(); print(gc.get_freeze_count(), 'infra.relay' in sys.modules)")
    assert int(out[0]) > 10_000 and out[1] == "True"
