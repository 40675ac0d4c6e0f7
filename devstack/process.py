"""Spawning and stopping child processes: the one place that calls Popen.

Contract for every child started through :func:`spawn`:

* It runs in its own process group (``process_group=0``), so a signal sent
  with :func:`signal_process` can reach the whole tree it forks (gunicorn
  workers, celery pool processes), and a Ctrl-C in the terminal reaches only
  the devstack, which then decides the stop order.
* Its stdin is /dev/null (a background process group must not read the tty).
* On Linux it gets ``PR_SET_PDEATHSIG`` (the spec's ``stop_signal``), so if
  the devstack dies, even by SIGKILL, the kernel signals the child. This is
  best effort: the signal fires when the *thread* that spawned the child
  exits, so spawn from a thread that outlives the child (the main thread);
  grandchildren are not covered, but the servers here all notice their
  parent going away (postgres backends watch the postmaster, gunicorn and
  celery workers watch their master).
* ``run_as`` switches user (root only) through Popen's own ``user``/``group``
  arguments, which the C child code applies before ``preexec_fn``; the death
  signal is therefore set after the switch (a uid change clears it).

Failure behaviour: :func:`spawn` raises ``OSError`` if the program cannot be
executed; :func:`signal_process` ignores processes that are already gone.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import signal
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

PR_SET_PDEATHSIG = 1


@dataclass(frozen=True)
class RunAs:
    """An unprivileged account to run a child as (used when we are root)."""

    name: str
    uid: int
    gid: int


@dataclass
class ProcessSpec:
    """Everything needed to (re)start one child process.

    ``probe`` returns True once the process accepts work (apps: see procfile.READY_LINES);
    ``after_ready`` runs once after the first successful probe (e.g. create
    the application database). ``before_restart`` (optional) is called with
    the dead process's Popen just before the supervisor restarts it (e.g.
    clear a lock file it left behind). ``signal_group`` False means stop signals go
    to the leader only (postgres: the postmaster must coordinate its own
    children's shutdown; signalling backends directly would abort them).
    """

    name: str
    argv: list[str]
    cwd: str | None = None
    env: dict[str, str] | None = None
    run_as: RunAs | None = None
    stop_signal: int = signal.SIGTERM
    signal_group: bool = True
    url: str | None = None
    port: int | None = None
    probe: Callable[[], bool] | None = None
    after_ready: Callable[[], None] | None = None
    before_restart: Callable[[subprocess.Popen], None] | None = None
    start_timeout: float = 30.0
    workdir: Path | None = None
    extra: dict = field(default_factory=dict)


def _load_prctl():
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
        return libc.prctl
    except (OSError, AttributeError):
        # No usable libc (exotic platform): children just won't get a death
        # signal; the normal stop path still works.
        return None


# Resolved once in the parent: the child between fork and exec should only
# make the system call, not load libraries.
_PRCTL = _load_prctl()


def death_signal_preexec(sig: int) -> Callable[[], None] | None:
    """A preexec_fn giving the child ``sig`` when its parent thread dies (Linux)."""
    if _PRCTL is None:
        return None
    parent = os.getpid()

    def preexec() -> None:
        _PRCTL(PR_SET_PDEATHSIG, int(sig), 0, 0, 0)
        # If the parent died between fork and prctl, no signal will come:
        # deliver it ourselves rather than run as an orphan.
        if os.getppid() != parent:
            os.kill(os.getpid(), sig)

    return preexec


def spawn(
    spec: ProcessSpec,
    *,
    stdout=None,
    stderr=subprocess.STDOUT,
    env: dict[str, str] | None = None,
    die_with_parent: bool = True,
) -> subprocess.Popen:
    """Start ``spec`` as described in the module docstring.

    ``stdout`` is a file object, a file descriptor, ``subprocess.PIPE`` or
    None (inherit). ``env`` overrides ``spec.env`` when given.
    """
    kwargs = {}
    if spec.run_as is not None:
        kwargs.update(user=spec.run_as.uid, group=spec.run_as.gid, extra_groups=[])
    preexec = death_signal_preexec(spec.stop_signal) if die_with_parent else None
    return subprocess.Popen(
        spec.argv,
        cwd=spec.cwd,
        env=env if env is not None else spec.env,
        stdin=subprocess.DEVNULL,
        stdout=stdout,
        stderr=stderr,
        process_group=0,
        # Only a prctl() call runs between fork and exec (see module doc);
        # the supervisor is single-threaded.
        preexec_fn=preexec,  # noqa: PLW1509
        close_fds=True,
        **kwargs,
    )


def signal_process(proc: subprocess.Popen, sig: int, *, group: bool = True) -> None:
    """Send ``sig`` to the child's process group (or just the child).

    The group id is the child's pid (``process_group=0``). After the leader
    has been reaped we still signal the group, to catch leftovers such as
    orphaned workers; a vanished group is not an error.
    """
    try:
        if group:
            os.killpg(proc.pid, sig)
        elif proc.poll() is None:
            os.kill(proc.pid, sig)
    except ProcessLookupError:
        return
    except PermissionError:
        # The pgid was recycled by someone else's process: not ours to touch.
        return


def describe_exit(returncode: int | None) -> str:
    """Human-readable exit status ('exit code 1', 'killed by SIGKILL')."""
    if returncode is None:
        return "still running"
    if returncode < 0:
        try:
            return f"killed by {signal.Signals(-returncode).name}"
        except ValueError:
            return f"killed by signal {-returncode}"
    return f"exit code {returncode}"


def stop_process(proc: subprocess.Popen, spec: ProcessSpec, timeout: float = 10.0) -> int | None:
    """Stop one child: its stop signal, up to ``timeout`` s, then SIGKILL.

    Always ends with a SIGKILL to the process group so that nothing the child
    forked survives it. Returns the exit status.
    """
    if proc.poll() is None:
        signal_process(proc, spec.stop_signal, group=spec.signal_group)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            signal_process(proc, signal.SIGKILL, group=True)
            proc.wait()
    signal_process(proc, signal.SIGKILL, group=True)
    return proc.returncode
