"""The supervisor's restart policy for processes killed from outside (chaos tests)."""
from __future__ import annotations

import io
import os
import signal
import sys
import time
from pathlib import Path

import pytest

from devstack import supervisor as supervisor_module
from devstack.process import ProcessSpec
from devstack.servers import _clear_stale_pid_file
from devstack.supervisor import Supervisor
from tests.helpers import wait_until

SLEEPER = [sys.executable, "-c", "import time; time.sleep(120)"]
# Forks a grandchild (same process group) that ignores SIGTERM, like a gunicorn worker busy
# with a request, and prints its pid.
FORKER = [sys.executable, "-c", (
    "import subprocess, sys, time\n"
    "g = subprocess.Popen([sys.executable, '-c', 'import signal, time; "
    "signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(120)'])\n"
    "print('grandchild', g.pid, flush=True)\n"
    "time.sleep(120)\n"
)]


@pytest.fixture
def sup():
    s = Supervisor(io.StringIO(), color=False)
    yield s
    s.shutdown(timeout=3)


def kill_and_time_restart(sup: Supervisor, child) -> float:
    old = child.proc.pid
    os.kill(old, signal.SIGKILL)
    started = time.monotonic()
    while child.proc.pid == old or not child.alive():
        sup.tick(0.05)
        assert time.monotonic() - started < 10, "not restarted"
    return time.monotonic() - started


def test_a_killed_process_comes_back_promptly_and_repeated_kills_stay_below_the_cap(sup):
    changes = []
    sup.on_change = lambda: changes.append(sup.snapshot()["sleeper"]["pid"])
    child = sup.add(ProcessSpec(name="sleeper", argv=SLEEPER), "app")
    sup.start(child)
    delays = [kill_and_time_restart(sup, child) for _ in range(4)]
    # 0.25, 0.5, 1, 2 s (+ up to one tick to notice without the SIGCHLD wakeup).
    assert delays[0] <= 0.5
    assert delays[3] < supervisor_module.SIGNAL_BACKOFF_MAX + 0.4
    assert child.backoff == supervisor_module.SIGNAL_BACKOFF_MAX  # capped: the next one waits 2 s, not more
    snap = sup.snapshot()["sleeper"]
    assert snap["restarts"] == 4 and snap["pid"] == child.proc.pid == snap["group"]
    assert snap["status"] == "running" and snap["kind"] == "app"
    assert None in changes  # the state showed it down between the kill and the restart


def test_backoff_resets_after_a_few_seconds_of_uptime(sup, monkeypatch):
    monkeypatch.setattr(supervisor_module, "BACKOFF_RESET_AFTER", 0.5)
    child = sup.add(ProcessSpec(name="sleeper", argv=SLEEPER), "app")
    sup.start(child)
    kill_and_time_restart(sup, child)
    kill_and_time_restart(sup, child)
    assert child.backoff == 1.0
    time.sleep(0.6)
    assert kill_and_time_restart(sup, child) <= 0.5


def test_leftovers_of_a_killed_group_are_gone_before_the_restart(sup):
    child = sup.add(ProcessSpec(name="forker", argv=FORKER), "app")
    sup.start(child)
    line = wait_until(lambda: [x for x in sup.tail("forker").splitlines() if x.startswith("grandchild")] or
                      sup.tick(0.05), timeout=10, message="the grandchild's pid")
    grandchild = int(line[0].split()[1])
    kill_and_time_restart(sup, child)

    def gone() -> bool:
        try:
            state = Path(f"/proc/{grandchild}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            return True
        return state == "Z"

    wait_until(gone, timeout=3, message="the SIGTERM-ignoring grandchild killed")


def test_stale_postmaster_pid_is_removed_only_when_it_names_the_dead_postmaster(tmp_path):
    pid_file = tmp_path / "postmaster.pid"
    # The number now belongs to a live process (here: us): stale for certain, removed.
    pid_file.write_text(f"{os.getpid()}\n/data\n")
    _clear_stale_pid_file(tmp_path, os.getpid())
    assert not pid_file.exists()
    # Written by some other postmaster: not ours to judge.
    pid_file.write_text(f"{os.getpid()}\n/data\n")
    _clear_stale_pid_file(tmp_path, os.getpid() + 1)
    assert pid_file.exists()
