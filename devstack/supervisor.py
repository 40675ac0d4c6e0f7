"""A small foreman/honcho-style process supervisor (stdlib only).

Contract:

* Every child's stdout+stderr is read through a pipe and printed line by line
  as ``name      | line``, the name padded to a common width and coloured
  when our stdout is a terminal (and ``NO_COLOR`` is unset). The
  supervisor's own messages use the name ``devstack``.
* A long-running child (``kind`` "server" or "app") that exits while we are
  not stopping is restarted after a back-off: 0.25 s, doubling per
  consecutive failure, capped at 10 s for an exit with a status and at 2 s
  for a death by signal (e.g. ``kill -9`` from a chaos test: the stack must
  come back within a couple of seconds); the back-off resets once a run has
  lasted 5 s. A child's death wakes the loop at once (SIGCHLD through a
  wakeup fd), so a first restart happens about 0.25 s after the kill. Each
  exit is logged with its code or signal. Leftovers of the dead child's
  process group (e.g. orphaned gunicorn/celery workers) get SIGTERM at once
  and SIGKILL just before the restart, so they cannot hold its port.
* With ``log_dir``, each child's lines (and the supervisor's own, in
  ``devstack.log``) are also written, timestamped, to ``<log_dir>/<name>.log``,
  truncated when the supervisor first sees that name.
* ``on_change`` (optional callable) is called after a child is started,
  exits unexpectedly or is stopped; ``Child.restarts`` counts restarts and
  :meth:`Supervisor.snapshot` describes the long-running children (used for
  the state file, see :mod:`devstack.state`).
* :meth:`Supervisor.shutdown` stops apps first, then servers: each child's
  stop signal to its process group (postgres: to the postmaster alone),
  up to ``timeout`` seconds (10 by default) for the lot, then SIGKILL to
  whatever is left; a second Ctrl-C/SIGTERM during shutdown skips the wait.
* Single-threaded: one ``selectors`` loop reads the pipes, reaps and
  restarts. Children are therefore always spawned from the main thread,
  which is what their parent-death signal is tied to (see
  :mod:`devstack.process`).

Failure behaviour: :meth:`start` raises ``OSError`` if a program cannot be
executed; :meth:`wait_ready` raises :class:`devstack.servers.ServerError`
with the child's recent output if it exits or misses its deadline, and
:class:`Interrupted` if a stop was requested meanwhile.
"""

from __future__ import annotations

import collections
import datetime
import os
import selectors
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TextIO

from .process import ProcessSpec, describe_exit, signal_process, spawn
from .servers import wait_ready

BACKOFF_START = 0.25
BACKOFF_MAX = 10.0
# Cap for deaths by signal (kill -9 from outside, OOM killer): these are not
# crash loops of a broken program, and chaos tests want a prompt comeback.
SIGNAL_BACKOFF_MAX = 2.0
BACKOFF_RESET_AFTER = 5.0
STOP_TIMEOUT = 10.0
TAIL_LINES = 60

_COLORS = ["36", "33", "32", "35", "34", "31", "96", "93", "92", "95", "94", "91"]


class Interrupted(Exception):
    """A stop (Ctrl-C / SIGTERM) was requested while we were waiting."""


def kill_leftovers(proc: subprocess.Popen) -> None:
    """SIGKILL what is left of a dead (reaped) child's process group.

    The group id is the old leader's pid. If that number now belongs to a
    new group leader (pid reused), the group is someone else's: leave it.
    """
    pgid = proc.pid
    try:
        with open(f"/proc/{pgid}/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()
        if int(fields[2]) == pgid:  # field 5, pgrp: a live leader of that group
            return
    except (OSError, IndexError, ValueError):
        pass  # no such process (the usual case), or no /proc: signal the group
    signal_process(proc, signal.SIGKILL, group=True)


class Child:
    """One supervised process and its restart bookkeeping."""

    def __init__(self, spec: ProcessSpec, kind: str, color: str):
        self.spec = spec
        self.kind = kind  # "server", "app" or "oneshot"
        self.color = color
        self.proc: subprocess.Popen | None = None
        self.started_at = 0.0  # monotonic
        self.started_wall = 0.0  # time.time(), for reports
        self.restarts = 0
        self.log_file = None
        self.backoff = BACKOFF_START
        self.restart_at: float | None = None
        self.stopping = False
        self.tail: collections.deque[str] = collections.deque(maxlen=TAIL_LINES)

    @property
    def name(self) -> str:
        return self.spec.name

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def status(self) -> str:
        """ "running", "stopping", "restarting" (dead, restart scheduled) or "stopped"."""
        if self.alive():
            return "stopping" if self.stopping else "running"
        if self.restart_at is not None or not self.stopping:
            # Dead and not being stopped: the next tick schedules the restart.
            return "restarting"
        return "stopped"


class Supervisor:
    def __init__(
        self,
        out: TextIO = sys.stdout,
        *,
        width: int = 8,
        color: bool | None = None,
        log_dir: Path | None = None,
    ):
        self.out = out
        self.log_dir = log_dir
        self._own_log = None
        self.on_change: Callable[[], None] | None = None
        self.width = width
        if color is None:
            color = out.isatty() and not os.environ.get("NO_COLOR")
        self.color = color
        self.children: dict[str, Child] = {}
        self.stop_requested = False
        self.force = False
        self._sel = selectors.DefaultSelector()
        self._partial: dict[int, bytes] = {}
        self._output_broken = False
        self._wakeup_r: int | None = None

    # ---------------------------------------------------------------- output

    def _open_log(self, name: str):
        if self.log_dir is None:
            return None
        try:
            self.log_dir.mkdir(parents=True, exist_ok=True)
            return open(self.log_dir / f"{name}.log", "w", encoding="utf-8", errors="replace")  # noqa: SIM115
        except OSError as exc:
            self._write("devstack", "1", f"warning: cannot write {self.log_dir}/{name}.log: {exc}")
            return None

    @staticmethod
    def _log_line(log_file, text: str) -> None:
        if log_file is None:
            return
        stamp = datetime.datetime.now().strftime("%H:%M:%S.%f")[:-3]
        try:
            log_file.write(f"{stamp} {text}\n")
            log_file.flush()
        except (OSError, ValueError):
            pass  # disk full or closed: the terminal output still has it

    def _write(self, name: str, color: str, text: str) -> None:
        if self._output_broken:
            return
        label = name.ljust(self.width)
        if self.color:
            label = f"\033[{color}m{label} |\033[0m"
        else:
            label = f"{label} |"
        try:
            self.out.write(f"{label} {text}\n")
            self.out.flush()
        except BrokenPipeError:
            # Our reader went away (e.g. piped into `head`): keep supervising
            # silently rather than crash and orphan the children.
            self._output_broken = True

    def say(self, message: str) -> None:
        """Print a supervisor message (prefix ``devstack``)."""
        if self._own_log is None and self.log_dir is not None:
            self._own_log = self._open_log("devstack") or False
        for line in message.splitlines() or [""]:
            self._log_line(self._own_log or None, line)
            self._write("devstack", "1", line)

    def _emit(self, child: Child, raw: bytes) -> None:
        line = raw.decode("utf-8", "replace").rstrip("\r")
        child.tail.append(line)
        self._log_line(child.log_file, line)
        self._write(child.name, child.color, line)

    def tail(self, name: str) -> str:
        child = self.children.get(name)
        return "\n".join(child.tail) if child else ""

    # --------------------------------------------------------------- signals

    def install_signal_handlers(self) -> None:
        """Ctrl-C/SIGTERM/SIGHUP stop; SIGCHLD and those wake the loop at once.

        Main thread only (Python's rule for signal handlers).
        """
        signal.signal(signal.SIGINT, self._on_signal)
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGHUP, self._on_signal)
        if self._wakeup_r is None:
            # The C-level handler writes a byte to this pipe for every signal
            # that has a Python handler; the select loop watches its other
            # end. SIGCHLD needs a (no-op) handler for that to happen.
            r, w = os.pipe()
            os.set_blocking(r, False)
            os.set_blocking(w, False)
            signal.set_wakeup_fd(w, warn_on_full_buffer=False)
            signal.signal(signal.SIGCHLD, lambda signum, frame: None)
            self._wakeup_r = r
            self._sel.register(r, selectors.EVENT_READ, None)

    def _on_signal(self, signum: int, frame) -> None:
        if self.stop_requested:
            self.force = True
            self.say(f"{signal.Signals(signum).name} again: killing now")
        else:
            self.stop_requested = True
            self.say(f"{signal.Signals(signum).name} received: stopping")

    # -------------------------------------------------------------- children

    def add(self, spec: ProcessSpec, kind: str) -> Child:
        if spec.name in self.children and self.children[spec.name].alive():
            raise ValueError(f"{spec.name} is already running")
        color = _COLORS[len(self.children) % len(_COLORS)]
        child = Child(spec, kind, color)
        previous = self.children.get(spec.name)
        child.log_file = previous.log_file if previous is not None else self._open_log(spec.name)
        self.children[spec.name] = child
        self.width = max(self.width, len(spec.name))
        return child

    def start(self, child: Child) -> None:
        child.proc = spawn(child.spec, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        child.started_at = time.monotonic()
        child.started_wall = time.time()
        child.restart_at = None
        child.stopping = False
        fd = child.proc.stdout.fileno()
        os.set_blocking(fd, False)
        self._partial[fd] = b""
        self._sel.register(child.proc.stdout, selectors.EVENT_READ, child)
        self._changed()

    def _changed(self) -> None:
        if self.on_change is None:
            return
        try:
            self.on_change()
        except OSError as exc:
            self.say(f"warning: state update failed: {exc}")

    def snapshot(self) -> dict[str, dict]:
        """The long-running children: pid (None unless running), group, kind, ..."""
        result = {}
        for child in self.children.values():
            if child.kind == "oneshot" or child.proc is None:
                continue
            alive = child.alive()
            result[child.name] = {
                "pid": child.proc.pid if alive else None,
                # process_group=0: the group id is the leader's pid.
                "group": child.proc.pid if alive else None,
                "kind": child.kind,
                "status": child.status(),
                "restarts": child.restarts,
                "started_at": datetime.datetime.fromtimestamp(child.started_wall, datetime.UTC).isoformat(
                    timespec="milliseconds"
                ),
                "last_exit": describe_exit(child.proc.returncode) if not alive else None,
            }
        return result

    def _read(self, key: selectors.SelectorKey) -> None:
        child: Child = key.data
        stream = key.fileobj
        fd = stream.fileno()
        try:
            data = os.read(fd, 65536)
        except BlockingIOError:
            return
        if not data:
            rest = self._partial.pop(fd, b"")
            if rest:
                self._emit(child, rest)
            self._sel.unregister(stream)
            stream.close()
            return
        buf = self._partial.get(fd, b"") + data
        *lines, buf = buf.split(b"\n")
        if len(buf) > 65536:  # a runaway line without newline
            lines.append(buf)
            buf = b""
        self._partial[fd] = buf
        for line in lines:
            self._emit(child, line)

    def tick(self, timeout: float = 0.2) -> None:
        """Pump output for up to ``timeout`` s, then reap and restart."""
        # Wake up in time for the next scheduled restart.
        due = [c.restart_at for c in self.children.values() if c.restart_at is not None]
        if due and not self.stop_requested:
            timeout = max(0.0, min(timeout, min(due) - time.monotonic()))
        if self._sel.get_map():
            for key, _ in self._sel.select(timeout):
                if key.data is None:
                    self._drain_wakeup()
                else:
                    self._read(key)
        else:
            time.sleep(timeout)
        self._reap()

    def _drain_wakeup(self) -> None:
        try:
            while os.read(self._wakeup_r, 4096):
                pass
        except BlockingIOError:
            pass

    def _reap(self) -> None:
        now = time.monotonic()
        for child in self.children.values():
            if child.proc is None:
                continue
            if child.restart_at is not None:
                if not self.stop_requested and now >= child.restart_at:
                    self.say(f"restarting {child.name}")
                    # Leftovers that ignored the SIGTERM (a gunicorn worker
                    # finishing a request) would keep the port: gone now.
                    kill_leftovers(child.proc)
                    if child.spec.before_restart is not None:
                        child.spec.before_restart(child.proc)
                    try:
                        child.restarts += 1
                        self.start(child)
                    except OSError as exc:
                        # E.g. the venv is being reinstalled: keep trying.
                        child.restarts -= 1
                        delay = child.backoff
                        child.backoff = min(child.backoff * 2, BACKOFF_MAX)
                        child.restart_at = now + delay
                        self.say(f"could not start {child.name} ({exc}); retrying in {delay:g} s")
                continue
            if child.proc.poll() is None or child.stopping or child.kind == "oneshot":
                continue
            # Unexpected exit of a long-running child.
            status = describe_exit(child.proc.returncode)
            # Whatever it forked and left behind (workers holding its port).
            signal_process(child.proc, signal.SIGTERM, group=True)
            if self.stop_requested:
                self.say(f"{child.name} exited ({status})")
                child.stopping = True
                continue
            if now - child.started_at >= BACKOFF_RESET_AFTER:
                child.backoff = BACKOFF_START
            cap = SIGNAL_BACKOFF_MAX if child.proc.returncode < 0 else BACKOFF_MAX
            delay = min(child.backoff, cap)
            child.backoff = min(child.backoff * 2, cap)
            child.restart_at = now + delay
            self.say(f"{child.name} exited unexpectedly ({status}); restarting in {delay:g} s")
            self._changed()

    # ----------------------------------------------------------- high level

    def wait_ready(self, child: Child) -> None:
        """Block (pumping output) until ``child.spec.probe`` succeeds."""

        def idle(seconds: float) -> None:
            if self.stop_requested:
                raise Interrupted()
            self.tick(seconds)

        wait_ready(child.spec, child.proc, log_tail=lambda: self.tail(child.name), idle=idle)

    def run_oneshot(self, spec: ProcessSpec) -> int | None:
        """Run a command to completion with prefixed output.

        Returns its exit status, or None if a stop was requested (the command
        is then stopped first).
        """
        child = self.add(spec, "oneshot")
        self.start(child)
        while child.proc.poll() is None:
            if self.stop_requested:
                self._stop_group([child])
                return None
            self.tick(0.1)
        self._drain([child])
        return child.proc.returncode

    def serve(self) -> None:
        """Supervise until a stop is requested."""
        while not self.stop_requested:
            self.tick(0.2)

    def shutdown(self, timeout: float = STOP_TIMEOUT) -> None:
        """Stop everything: apps (and one-shots) first, servers last."""
        self.stop_requested = True
        apps = [c for c in self.children.values() if c.kind != "server"]
        servers = [c for c in self.children.values() if c.kind == "server"]
        for group in (apps, servers):
            self._stop_group(group, timeout)
        self._drain(list(self.children.values()))
        for log_file in {c.log_file for c in self.children.values()} | {self._own_log}:
            if log_file:
                log_file.close()

    def _stop_group(self, children: list[Child], timeout: float = STOP_TIMEOUT) -> None:
        running = [c for c in children if c.alive()]
        for child in children:
            child.stopping = True
            child.restart_at = None
        for child in running:
            self.say(f"stopping {child.name} (pid {child.proc.pid})")
            signal_process(child.proc, child.spec.stop_signal, group=child.spec.signal_group)
        deadline = time.monotonic() + timeout
        while any(c.alive() for c in running) and time.monotonic() < deadline and not self.force:
            self.tick(0.1)
        for child in running:
            if child.alive():
                self.say(f"{child.name} did not stop in time: SIGKILL")
                signal_process(child.proc, signal.SIGKILL, group=True)
                child.proc.wait()
            else:
                self.say(f"{child.name} stopped ({describe_exit(child.proc.returncode)})")
        for child in running:
            # Nothing of its process group may outlive the devstack.
            signal_process(child.proc, signal.SIGKILL, group=True)
        if children:
            self._changed()

    def _drain(self, children: list[Child], timeout: float = 1.0) -> None:
        """Print what the exited children still had in their pipes."""
        streams = {c.proc.stdout for c in children if c.proc is not None and c.proc.stdout}
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            pending = [k for k in self._sel.get_map().values() if k.fileobj in streams]
            if not pending:
                return
            for key, _ in self._sel.select(0.05):
                if key.data is None:
                    self._drain_wakeup()
                else:
                    self._read(key)
        for key in list(self._sel.get_map().values()):
            if key.fileobj in streams:
                self._sel.unregister(key.fileobj)
                key.fileobj.close()
