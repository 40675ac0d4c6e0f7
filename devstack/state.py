"""The run-mode state file ``<datadir>/state.json``: a contract with outside tools.

``python -m devstack run`` keeps this file up to date for tools that drive a
running stack (the chaos harness, ``manage.py chaos``): which URLs to use,
and which pid to kill for each process. It is rewritten atomically (a
temporary file in the same directory, then ``rename``) whenever something
changes: a process started, died, was restarted or stopped, the stack became
ready or began stopping. A reader therefore always sees a complete JSON
document; poll it (there is no notification).

Format (version 1)::

    {
      "version": 1,
      "ready": false,            # true once the setup steps finished and every
                                 # long-running process was started; stays true
                                 # while processes are restarted; false again
                                 # as soon as the stack begins to stop
      "stopping": false,         # true from the start of the shutdown on
      "devstack_pid": 4242,      # the supervisor: SIGTERM/SIGINT it to stop all
      "datadir": "/abs/path",
      "updated_at": "2026-11-27T21:14:53.123+00:00",
      "web_url": "http://127.0.0.1:8000",
      "env": {                   # what the app processes got
        "DATABASE_URL": "postgres://postgres@127.0.0.1:15432/a4co",
        "NATS_URL": "nats://127.0.0.1:14222",
        "CELERY_BROKER_URL": "redis://127.0.0.1:16379/0",
        "STRIPE_API_BASE": "http://127.0.0.1:18421",   # what apps use (the proxy
                                                        # with --stripe-proxy)
        "STRIPE_UPSTREAM": "http://127.0.0.1:18420"    # the stand-in itself (or
                                                        # $STRIPE_API_BASE)
      },
      "proxy_control_url": "http://127.0.0.1:18421/_chaos",   # null without --stripe-proxy
      "processes": {             # long-running children only (no setup steps)
        "postgres": {
          "pid": 123,            # null while the process is down
          "group": 123,          # its process group (== pid); kill -9 of pid is
                                 # a crash of the master (gunicorn, celery worker,
                                 # postmaster); the supervisor cleans the group
          "kind": "server",      # "server" (postgres, nats, redis, stripe,
                                 # stripe-proxy) or "app" (web, worker, beat,
                                 # consumers, ...)
          "status": "running",   # running | restarting | stopping | stopped
          "restarts": 0,         # restarts by the supervisor so far
          "started_at": "2026-11-27T21:14:50.001+00:00",   # of the current/last run
          "last_exit": null      # e.g. "killed by SIGKILL" while down, else null
        },
        ...
      }
    }

Servers taken from the environment (``DATABASE_URL`` etc. already set) are
not started, so they are not in ``processes``; their URL is in ``env``.
After a normal stop the file stays, with ``ready: false``, ``stopping: true``
and every process ``stopped`` (pid null), so a reader can tell a finished run
from a running one; a new run overwrites it with ``ready: false`` first.
If the devstack itself is killed with SIGKILL the file is left as it was:
check that ``devstack_pid`` is alive before trusting ``ready``.
"""

from __future__ import annotations

import datetime
import json
import os
from pathlib import Path

VERSION = 1
ENV_KEYS = ("DATABASE_URL", "NATS_URL", "CELERY_BROKER_URL", "STRIPE_API_BASE", "STRIPE_UPSTREAM")


def now_iso() -> str:
    return datetime.datetime.now(datetime.UTC).isoformat(timespec="milliseconds")


def write_atomic(path: Path, data: dict) -> None:
    """Write ``data`` as JSON to ``path``: temporary file, then rename."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=2, sort_keys=False)
        f.write("\n")
    os.replace(tmp, path)


def read(path: Path) -> dict | None:
    """The state in ``path``, or None if it does not exist (yet)."""
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError:
        return None


class StateFile:
    """Holds the run's state and rewrites ``path`` on :meth:`write`.

    ``processes`` is a callable returning the ``processes`` mapping (the
    supervisor's :meth:`~devstack.supervisor.Supervisor.snapshot`).
    """

    def __init__(self, path: Path, *, datadir: Path, processes=lambda: {}):
        self.path = path
        self.datadir = datadir
        self.processes = processes
        self.ready = False
        self.stopping = False
        self.web_url: str | None = None
        self.env: dict[str, str] = {}
        self.proxy_control_url: str | None = None

    def as_dict(self) -> dict:
        return {
            "version": VERSION,
            "ready": self.ready and not self.stopping,
            "stopping": self.stopping,
            "devstack_pid": os.getpid(),
            "datadir": str(self.datadir),
            "updated_at": now_iso(),
            "web_url": self.web_url,
            "env": {key: self.env[key] for key in ENV_KEYS if key in self.env},
            "proxy_control_url": self.proxy_control_url,
            "processes": self.processes(),
        }

    def write(self) -> None:
        write_atomic(self.path, self.as_dict())
