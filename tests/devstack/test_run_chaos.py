"""`python -m devstack run --datadir --ports auto --stripe-proxy --no-seed` survives kill -9 of its
servers and apps: state.json reports the new pids, /readyz comes back, and SIGTERM stops everything."""
from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import requests

from tests.devstack_runner import devstack_run, read_state, readyz
from tests.helpers import wait_until

# Every process kind the supervisor runs (the Stripe stand-in keeps its data in memory: left out).
KILLED = ("nats", "consumers", "postgres", "redis", "web", "worker", "beat")


def group_members(groups: set[int]) -> list[str]:
    """Live (non-zombie) processes whose process group is one of `groups`."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            head, tail = (entry / "stat").read_text().rsplit(")", 1)
        except OSError:
            continue
        fields = tail.split()
        if fields[0] != "Z" and int(fields[2]) in groups:
            found.append(f"{entry.name} {head.split('(', 1)[1]}")
    return found


def test_run_recovers_from_kill_9_and_stops_cleanly(scratch):
    with devstack_run(scratch, "--stripe-proxy", "--no-seed") as stack:
        proc, state_path = stack["proc"], stack["state_path"]
        try:
            # "Ready" means serving: the consumers had subscribed and the relay worker was up first.
            def log_once_started():
                text = stack["log_path"].read_text(errors="replace")
                return text if "all started" in text else None

            log = wait_until(log_once_started, timeout=10, message="all started")
            started_at = log.index("all started")
            for line in ("consumers running: ", " ready."):
                assert -1 < log.find(line) < started_at, f"{line!r} not before 'all started'{stack['tail']()}"
            state = read_state(state_path)
            assert set(state["env"]) == {"DATABASE_URL", "NATS_URL", "CELERY_BROKER_URL", "STRIPE_API_BASE",
                                         "STRIPE_UPSTREAM"}
            assert state["env"]["STRIPE_API_BASE"] != state["env"]["STRIPE_UPSTREAM"]
            assert state["proxy_control_url"] == state["env"]["STRIPE_API_BASE"] + "/_chaos"
            processes = state["processes"]
            assert {"postgres", "nats", "redis", "stripe", "stripe-proxy", "web", "worker", "beat",
                    "consumers"} <= set(processes)
            assert processes["postgres"]["kind"] == "server" and processes["web"]["kind"] == "app"
            seen_groups = {p["group"] for p in processes.values()}
            web_url = state["web_url"]
            assert requests.get(state["proxy_control_url"], timeout=5).json()["upstream"] == \
                state["env"]["STRIPE_UPSTREAM"]

            old = {name: processes[name]["pid"] for name in KILLED}
            for name in KILLED:
                os.kill(old[name], signal.SIGKILL)
            killed_at = time.monotonic()

            def all_back():
                current = read_state(state_path)["processes"]
                back = all(current[n]["pid"] not in (None, old[n]) and current[n]["status"] == "running"
                           for n in KILLED)
                return current if back else None

            current = wait_until(all_back, timeout=20, interval=0.05, message=f"new pids for {KILLED}")
            # More than one restart is allowed: e.g. the consumers may come back before NATS is up,
            # exit, and be restarted again.
            assert all(current[n]["restarts"] >= 1 for n in KILLED), current
            seen_groups |= {p["group"] for p in current.values() if p["group"]}
            wait_until(lambda: readyz(web_url), timeout=20, interval=0.1, message="/readyz 200 after the kills")
            assert time.monotonic() - killed_at < 20

            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=30) == 0, stack["tail"]()
            final = read_state(state_path)
            assert final["ready"] is False and final["stopping"] is True
            assert all(p["pid"] is None and p["status"] == "stopped" for p in final["processes"].values())
            leftovers = group_members(seen_groups)
            assert leftovers == [], f"still alive after the devstack stopped: {leftovers}"
        finally:
            print(stack["tail"]())  # pytest shows it if the test failed
