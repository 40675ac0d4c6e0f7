"""What machine a benchmark ran on, and how fast it was for Python code at the time: printed by
`loadtest` and `relay_bench` beside their figures, which compare only at similar probe times."""
from __future__ import annotations

import contextlib
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

PROBE_ITERATIONS = 3_000_000
WAKE_ROUND_TRIPS = 10_000
# The other end of the wake probe: on the CPU it is given, answers each byte it reads with one
# byte, until end of file.
_ECHO = ("import os, sys\nos.sched_setaffinity(0, {int(sys.argv[1])})\nos.write(1, b'r')\n"
         "while os.read(0, 1):\n    os.write(1, b'x')\n")


def cpu_probe_ms() -> float:
    """How long this process takes for a fixed pure-Python loop (3 million multiply-adds), in ms:
    the machine's speed for Python code at that moment.

    Benchmark figures are comparable only at similar probe times: the same code on the same VM
    type read 183–239 ms one day and 326–672 the next, and did 1.7 times fewer sagas per second
    (docs/benchmarks.md, eighth round). Costs about that long of one core.
    """
    # Run as module-level code (global variables), like the `python3 -c` probe the figures in
    # docs/benchmarks.md were recorded with: inside a function the same loop takes half as long.
    code = compile(f"s = 0\nfor i in range({PROBE_ITERATIONS}):\n    s += i * i\n", "<cpu probe>", "exec")
    started = time.perf_counter()
    exec(code, {})  # a constant loop of ours, nothing from outside
    return (time.perf_counter() - started) * 1000


def wake_probes_us() -> dict[str, float]:
    """How long a round trip to another process takes, one byte over a pipe each way, in
    microseconds (the median of WAKE_ROUND_TRIPS): {"wake_us_one_cpu": both processes on one CPU
    (a switch from one to the other), "wake_us_two_cpus": each on a CPU of its own (waking a
    process on another CPU, which a VM may charge for dearly; left out on a 1-CPU machine)}.

    A saga is handed on dozens of times between processes (the web, PostgreSQL, Redis, the relay,
    NATS, the consumers), each hand-off such a wake. The CPU probe does not see that cost: on
    2026-12-05 it read 253–332 ms in the morning and 251–298 ms in the afternoon, while the same
    code did 157–164 sagas/s in the morning and 113–120 in the afternoon (docs/benchmarks.md,
    tenth round). The processes are pinned because where the scheduler puts them decides the
    figure (unpinned, the same idle VM read 42 µs, and 6 µs with the stack running). They do not
    tell such days apart on their own: an Intel VM at 8 µs across two CPUs did 229–239 sagas/s and
    p50 27 ms at 75/s, but an AMD VM made to read 6 µs (cpu_idle) did 134–152 and 129–337 ms,
    no better than at 37–50 µs (docs/benchmarks.md, twelfth round).
    Costs about a second of wall time, most of it sleeping.
    """
    cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
    if not cpus:
        return {}
    probes = {"wake_us_one_cpu": _wake_probe_us(cpus[0], cpus[0])}
    if len(cpus) > 1:
        probes["wake_us_two_cpus"] = _wake_probe_us(cpus[0], cpus[1])
    return probes


def _wake_probe_us(ours: int, theirs: int) -> float:
    allowed = os.sched_getaffinity(0)
    echo = subprocess.Popen([sys.executable, "-c", _ECHO, str(theirs)], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    out, back = echo.stdin.fileno(), echo.stdout.fileno()
    try:
        os.sched_setaffinity(0, {ours})  # this thread only, until the end of the probe
        if os.read(back, 1) != b"r":
            raise RuntimeError("the wake probe's echo process did not start")
        times = []
        for _ in range(WAKE_ROUND_TRIPS):
            started = time.perf_counter()
            os.write(out, b"x")
            os.read(back, 1)
            times.append(time.perf_counter() - started)
    finally:
        os.sched_setaffinity(0, allowed)
        echo.stdin.close()
        echo.wait(timeout=10)
        echo.stdout.close()
    return statistics.median(times) * 1_000_000


def machine_probed() -> dict:
    """machine_describe() with the probes a benchmark takes before its run: "probe_ms_before"
    (cpu_probe_ms) and the wake probes (wake_probes_us)."""
    return {**machine_describe(), "probe_ms_before": cpu_probe_ms(), **wake_probes_us()}


def machine_describe() -> dict:
    """{"cpu": the CPU model (/proc/cpuinfo; the platform's processor string elsewhere), "cpus": how
    many this process may run on, "python": the interpreter and where it is installed, "idle": how
    an idle CPU waits (cpu_idle; left out where Linux does not say)}.

    The interpreter is part of the machine: the same code under two CPython 3.11 builds on one VM
    differed by about a tenth in CPU per saga (docs/benchmarks.md, eighth round), and a build's
    optimisation flags cannot be read back reliably, so its place says which build it was."""
    model = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.partition(":")[2].strip()
                break
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    python = f"{platform.python_implementation()} {platform.python_version()} ({sys.base_prefix})"
    described = {"cpu": model or platform.processor() or platform.machine(), "cpus": cpus, "python": python}
    idle = cpu_idle()
    if idle:
        described["idle"] = idle
    return described


CPUIDLE = Path("/sys/devices/system/cpu/cpuidle")
HALTPOLL = Path("/sys/module/haltpoll/parameters")


def cpu_idle(cpuidle: Path = CPUIDLE, haltpoll: Path = HALTPOLL) -> str:
    """How an idle CPU waits, as Linux says it (sysfs): the cpuidle driver, and for KVM's `haltpoll`
    driver how long a guest CPU polls before it halts (`guest_halt_poll_ns`); "" where not known.

    It decides what the cross-CPU wake probe reads: the same AMD EPYC VM read 37–50 µs with
    `haltpoll` polling for 0 µs (how that VM type boots) and 6 µs polling for up to 200 µs. It did
    not decide the saga figures there (docs/benchmarks.md, twelfth round), but a reader comparing
    two machines' figures should know it.
    """
    try:
        driver = (cpuidle / "current_driver").read_text().strip()
    except OSError:
        return ""
    if driver == "haltpoll":
        with contextlib.suppress(OSError, ValueError):
            poll_us = int((haltpoll / "guest_halt_poll_ns").read_text()) // 1000
            driver += f" (guest polls up to {poll_us} µs before halting)"
    return driver


def machine_line(machine: dict) -> str:
    """The report's line about the machine: its CPU, the interpreter and how idle CPUs wait
    (cpu_idle) when known, and the probe times it carries (cpu_probe_ms, wake_probes_us)."""
    probes = [f"{machine[key]:.0f} ms {when}" for key, when in (("probe_ms_before", "before"),
                                                                 ("probe_ms_after", "after")) if key in machine]
    probe = f"; CPU probe {', '.join(probes)} (a fixed Python loop: compare runs at similar probe times)" \
        if probes else ""
    wakes = [f"{machine[key]:.0f} µs {where}" for key, where in (("wake_us_one_cpu", "on one CPU"),
                                                                   ("wake_us_two_cpus", "across two"))
             if key in machine]
    if wakes:
        probe += f"; wake probe {', '.join(wakes)} (a process round trip over a pipe)"
    cpus = machine["cpus"]
    python = f", {machine['python']}" if machine.get("python") else ""
    idle = f", cpuidle {machine['idle']}" if machine.get("idle") else ""
    return f"machine: {machine['cpu']}, {cpus} CPU{'' if cpus == 1 else 's'}{python}{idle}{probe}"
