"""`manage.py loadtest` against the running system: closed and open loop, every saga ends as its
kind expects, stock adds up, figures reported (issue "Throughput and latency")."""
from __future__ import annotations

import json

import pytest

pytestmark = pytest.mark.e2e


@pytest.mark.parametrize("mode", [["--concurrency", "8"], ["--rate", "15", "--concurrency", "16"]],
                         ids=["closed-loop", "open-loop"])
def test_loadtest_drives_the_api_and_every_saga_ends_right(system, tmp_path, mode):
    report_path = tmp_path / "report.json"
    system.manage("loadtest", "--orders", "40", *mode, "--url", system.base_url, "--timeout", "90",
                  "--state", str(tmp_path / "no-devstack-state.json"), "--json", str(report_path))
    report = json.loads(report_path.read_text())
    assert report["orders"] == 40 and report["wrong"] == [] and report["errors"] == {}
    assert report["stock_problems"] == []
    assert sum(report["outcomes"].values()) == 40
    assert set(report["outcomes"]) <= {"ok->CONFIRMED", "decline->CANCELLED", "oos->FAILED"}
    assert report["outcomes"].get("ok->CONFIRMED", 0) > 0
    latency = report["latency_ms"]
    assert 0 < latency["p50"] <= latency["p95"] <= latency["p99"]
    assert report["sagas_per_second"] > 0 and "loadtest" in report["cpu_seconds"]
    # The machine it ran on, and how fast it was for Python code before and after the run.
    machine = report["machine"]
    assert machine["cpu"] and machine["cpus"] >= 1 and machine["python"].startswith("CPython ")
    assert machine["probe_ms_before"] > 0 and machine["probe_ms_after"] > 0 and machine["wake_us_one_cpu"] > 0
    # What PostgreSQL wrote: every saga commits its order's write transaction, and its share of the
    # others (reservation, payment, saga steps, outbox and inbox rows: one per batch of messages
    # under load), and some kilobytes of WAL.
    counts = report["postgres_per_saga"]
    assert 1 <= counts["write transactions"] <= 40 and 1_000 < counts["WAL bytes"] < 200_000
    # Where the time went between services: every order's orders.created reached inventory, and a
    # paid saga's hops come in its order, each with a relay and a delivery time.
    hops = {(hop["subject"], hop["consumer"]): hop for hop in report["hops"]}
    assert hops[("orders.created", "inventory-service")]["count"] == 40
    path = [hops[key]["appended_ms"] for key in (("orders.created", "inventory-service"),
                                                 ("inventory.reserved", "order-service-inventory"),
                                                 ("payments.process_request", "payment-service"),
                                                 ("payments.succeeded", "order-service-payment"))]
    assert path == sorted(path) and path[-1] < latency["p99"]
    # published_at is when the relay had the stream's ack, and a consumer may take the message up
    # before that: what is sure is that it takes it up after it was appended.
    assert all(hop["relay_ms"] > 0 and hop["delivery_ms"] > -hop["relay_ms"] for hop in report["hops"])
