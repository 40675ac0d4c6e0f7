"""Start `python -m devstack run` as a subprocess for a test: its own embedded servers, free ports,
a scratch data directory, and the state file to find everything (see devstack/state.py)."""
from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import requests

from devstack.process import death_signal_preexec
from tests.helpers import wait_until

REPO = Path(__file__).resolve().parents[1]
# Set by `devstack test` for the test run's own servers: the devstack under test starts its own.
INHERITED = ("DATABASE_URL", "ORDERS_DATABASE_URL", "INVENTORY_DATABASE_URL", "PAYMENTS_DATABASE_URL",
             "NATS_URL", "CELERY_BROKER_URL", "STRIPE_API_BASE", "PORT", "DJANGO_SETTINGS_MODULE",
             "PROMETHEUS_MULTIPROC_DIR")


def read_state(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, ValueError):
        return None


def readyz(web_url: str) -> bool:
    try:
        return requests.get(f"{web_url}/readyz", timeout=2).status_code == 200
    except requests.RequestException:
        return False


@contextlib.contextmanager
def devstack_run(scratch: Path, *args: str, extra_env: dict[str, str] | None = None) -> Iterator[dict]:
    """Yield {"proc", "state_path", "log_path", "env"} once the stack is ready (state.json + /readyz).

    `env` is the environment a client process (e.g. `manage.py chaos`) needs to reach the same
    servers. SIGTERM on exit; the devstack stops everything it started.
    """
    datadir = scratch / "run"
    env = {k: v for k, v in os.environ.items() if k not in INHERITED and not k.startswith("DEVSTACK_")}
    env.update(extra_env or {})
    log_path = scratch / "devstack-run.out"
    argv = [sys.executable, "-m", "devstack", "run", "--datadir", str(datadir), "--ports", "auto", *args]
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(argv, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, preexec_fn=death_signal_preexec(signal.SIGTERM))  # noqa: PLW1509
    state_path = datadir / "state.json"

    def tail() -> str:
        return "\n--- devstack output (tail) ---\n" + "".join(
            log_path.read_text(errors="replace").splitlines(True)[-60:])

    try:
        def ready_state():
            assert proc.poll() is None, f"devstack exited with {proc.returncode}{tail()}"
            state = read_state(state_path)
            return state if state and state["ready"] else None

        state = wait_until(ready_state, timeout=90, interval=0.1, message="state.json ready")
        wait_until(lambda: readyz(state["web_url"]), timeout=30, interval=0.1, message="/readyz 200")
        client_env = {**env, **{k: v for k, v in state["env"].items() if k != "STRIPE_UPSTREAM"}}
        yield {"proc": proc, "state_path": state_path, "log_path": log_path, "env": client_env, "tail": tail}
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
