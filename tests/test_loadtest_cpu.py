"""loadtest's own mechanics: its CPU accounting (processes that leave their process group still
count), its kept-alive client connections and the line that says what machine it ran on."""
from __future__ import annotations

import os
import platform
import subprocess
import sys
import time

from infra.loadtest import CpuMeter, LoadTest, _process_groups
from infra.machine import cpu_idle, cpu_probe_ms, machine_describe, machine_line, wake_probes_us
from tests.helpers import FakeServer, http_request_read, wait_until

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


def test_a_client_connection_the_server_closed_while_idle_is_replaced_before_use():
    body = b'{"orderId": "o-1"}'
    answer = b"HTTP/1.1 201 Created\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s" % (
        len(body), body)

    def answer_once(conn, seen):  # one answer per connection, then it hangs up
        seen.append(http_request_read(conn))
        conn.sendall(answer)

    server = FakeServer(answer_once)
    try:
        load = LoadTest(base_url=f"http://127.0.0.1:{server.port}", orders=1, concurrency=1, rate=None,
                        mix={"ok": 1}, seed=1, state_path=None, timeout=5, progress=None)
        load._headers = {"Content-Type": "application/json"}
        for n in range(3):
            wait_until(lambda n=n: server.closed == n, timeout=5)
            assert load._request("POST", "/api/v1/orders", {"n": n}) == (201, {"orderId": "o-1"})
        assert server.connections == 3
        assert [request.split(b"\r\n")[0] for request in server.seen] == [b"POST /api/v1/orders HTTP/1.1"] * 3
        assert all(request.endswith(b'{"n": %d}' % n) for n, request in enumerate(server.seen))
    finally:
        server.close()


def test_the_machine_line_names_the_cpu_the_interpreter_and_the_probe_times():
    machine = machine_describe()
    assert machine["cpus"] == len(os.sched_getaffinity(0))
    assert machine["cpu"] == next(line.partition(":")[2].strip() for line in open("/proc/cpuinfo")
                                  if line.startswith("model name"))
    assert machine["python"] == f"CPython {platform.python_version()} ({sys.base_prefix})"
    debian = {"cpu": "AMD EPYC", "cpus": 2, "python": "CPython 3.11.2 (/usr)", "probe_ms_before": 261.4}
    assert machine_line(debian) == (
        "machine: AMD EPYC, 2 CPUs, CPython 3.11.2 (/usr); CPU probe 261 ms before"
        " (a fixed Python loop: compare runs at similar probe times)")
    assert machine_line({"cpu": "AMD EPYC", "cpus": 2, "probe_ms_before": 341.6, "probe_ms_after": 352.2}) == (
        "machine: AMD EPYC, 2 CPUs; CPU probe 342 ms before, 352 ms after"
        " (a fixed Python loop: compare runs at similar probe times)")
    assert machine_line({"cpu": "x", "cpus": 1}) == "machine: x, 1 CPU"
    assert machine_line({**debian, "idle": "none"}) == (
        "machine: AMD EPYC, 2 CPUs, CPython 3.11.2 (/usr), cpuidle none; CPU probe 261 ms before"
        " (a fixed Python loop: compare runs at similar probe times)")
    assert machine_line({**debian, "probe_ms_after": 270.2, "wake_us_one_cpu": 5.8, "wake_us_two_cpus": 51.6}) == (
        "machine: AMD EPYC, 2 CPUs, CPython 3.11.2 (/usr); CPU probe 261 ms before, 270 ms after"
        " (a fixed Python loop: compare runs at similar probe times);"
        " wake probe 6 µs on one CPU, 52 µs across two (a process round trip over a pipe)")


def test_the_machine_says_how_its_idle_cpus_wait(tmp_path):
    cpuidle, haltpoll = tmp_path / "cpuidle", tmp_path / "haltpoll"
    assert cpu_idle(cpuidle, haltpoll) == ""  # no cpuidle in sysfs: nothing said
    cpuidle.mkdir()
    (cpuidle / "current_driver").write_text("intel_idle\n")
    assert cpu_idle(cpuidle, haltpoll) == "intel_idle"
    (cpuidle / "current_driver").write_text("haltpoll\n")
    assert cpu_idle(cpuidle, haltpoll) == "haltpoll"  # its parameters unreadable: the driver alone
    haltpoll.mkdir()
    (haltpoll / "guest_halt_poll_ns").write_text("200000\n")
    assert cpu_idle(cpuidle, haltpoll) == "haltpoll (guest polls up to 200 µs before halting)"
    (haltpoll / "guest_halt_poll_ns").write_text("0\n")
    assert cpu_idle(cpuidle, haltpoll) == "haltpoll (guest polls up to 0 µs before halting)"
    # This machine's own, as machine_describe() reports it.
    assert machine_describe().get("idle", "") == cpu_idle()


def test_the_wake_probes_time_round_trips_to_a_process_pinned_where_they_say(monkeypatch):
    import infra.machine

    started = []
    real_popen = infra.machine.subprocess.Popen
    monkeypatch.setattr(infra.machine.subprocess, "Popen", lambda *a, **k: started.append(real_popen(*a, **k))
                        or started[-1])
    monkeypatch.setattr(infra.machine, "WAKE_ROUND_TRIPS", 200)
    allowed = os.sched_getaffinity(0)
    cpus = sorted(allowed)
    probes = wake_probes_us()
    # A round trip wakes the other process and waits for it to answer: microseconds, not nothing.
    assert set(probes) == ({"wake_us_one_cpu", "wake_us_two_cpus"} if len(cpus) > 1 else {"wake_us_one_cpu"})
    assert all(1 < probe < 4_000 for probe in probes.values())
    # Each echo process ran where it was told (its last argument) and exited at end of file; this
    # thread may run anywhere again.
    assert [process.args[-1] for process in started] == [str(cpu) for cpu in cpus[:2]]
    assert all(process.returncode == 0 for process in started)
    assert os.sched_getaffinity(0) == allowed


def test_the_probe_times_the_loop_it_runs(monkeypatch):
    import infra.machine

    full = cpu_probe_ms()
    monkeypatch.setattr(infra.machine, "PROBE_ITERATIONS", infra.machine.PROBE_ITERATIONS // 100)
    assert 0 < cpu_probe_ms() < full


def test_the_load_generators_cpu_is_its_own_process_not_its_group():
    # Its process group is the shell's job: a sibling there that ends mid-run (a build, another
    # command) took its CPU out of the group's sum and once made the figure read 0.00.
    meter = CpuMeter(None)
    deadline = time.process_time() + 0.2
    while time.process_time() < deadline:
        pass
    child = "import time\nd = time.process_time() + 0.2\nwhile time.process_time() < d: pass"
    subprocess.run([sys.executable, "-c", child], check=True)
    spent = meter.spent()
    assert set(spent) == {"loadtest"}
    assert 0.38 <= spent["loadtest"] < 5  # this process's loop and its reaped child's
