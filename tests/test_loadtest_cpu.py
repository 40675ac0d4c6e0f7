"""loadtest's CPU accounting: processes that leave their process group still count."""
from __future__ import annotations

import os
import subprocess
import sys
import time

from infra.loadtest import _process_groups

BURN = """
import os, sys, time
os.setsid()  # like a PostgreSQL backend: a session and process group of its own
end = time.process_time() + 0.3
while time.process_time() < end:
    pass
print("burnt", flush=True)
time.sleep(60)
"""


def test_a_child_that_called_setsid_counts_in_its_ancestors_tracked_group():
    child = subprocess.Popen([sys.executable, "-c", BURN], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "burnt"
        deadline = time.monotonic() + 10
        while True:  # /proc's tick counters lag a little behind process_time()
            untracked = _process_groups()
            if untracked.get(child.pid, 0.0) >= 0.25 or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        ours = os.getpgrp()
        tracked = _process_groups(frozenset({ours}))
        assert untracked.get(child.pid, 0.0) >= 0.25, "the child is a group of its own"
        assert child.pid not in tracked, "tracked: the child is folded into its parent's group"
        assert tracked[ours] - untracked[ours] >= 0.25
    finally:
        child.kill()
        child.wait()
