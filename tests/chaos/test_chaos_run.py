"""A short chaos run in the suite: a mixed load against a real supervised stack while every fault
kind is injected at least once (kill -9 of every app process kind, NATS, PostgreSQL and Redis
restarts, Stripe slow / erroring / dropping responses after success, duplicated and replayed
messages), then the invariant checker. Longer runs: docs/reliability.md."""
from __future__ import annotations

import subprocess
import sys

from tests.devstack.conftest import scratch  # noqa: F401 - the fixture
from tests.devstack_runner import REPO, devstack_run

# Short timeouts so that payments lost to Stripe faults are compensated within the test.
TIMEOUTS = {"PAYMENT_TIMEOUT_SECONDS": "15", "SAGA_TIMEOUT_SECONDS": "45", "RESERVATION_TTL_SECONDS": "90",
            "STRIPE_TIMEOUT_SECONDS": "3", "SAGA_COMPENSATION_RETRY_SECONDS": "5", "CONSUMER_ACK_WAIT_SECONDS": "10"}


def test_a_short_chaos_run_with_every_fault_ends_with_zero_violations(scratch):  # noqa: F811
    with devstack_run(scratch, "--stripe-proxy", "--no-seed", extra_env=TIMEOUTS) as stack:
        result = subprocess.run(
            [sys.executable, "manage.py", "chaos", "--orders", "200", "--seed", "7", "--faults", "all",
             "--state", str(stack["state_path"]), "--quiesce-timeout", "180"],
            cwd=REPO, env={**stack["env"], **TIMEOUTS}, capture_output=True, text=True, timeout=420)
        print(result.stdout[-6000:], result.stderr[-3000:])
        assert result.returncode == 0, stack["tail"]()
    out = result.stdout
    assert "chaos run: zero violations" in out
    for fault in ("kill -9 web", "kill -9 worker", "kill -9 beat", "kill -9 consumers", "kill -9 nats",
                  "kill -9 postgres", "kill -9 redis", "stripe-slow", "stripe-error", "stripe-drop", "duplicate",
                  "reorder"):
        assert fault in out, f"{fault} was not injected"
