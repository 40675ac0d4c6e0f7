"""What machine a benchmark ran on, and how fast it was for Python code at the time: printed by
`loadtest` and `relay_bench` beside their figures, which compare only at similar probe times."""
from __future__ import annotations

import contextlib
import os
import platform
import sys
import time
from pathlib import Path

PROBE_ITERATIONS = 3_000_000


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


def machine_describe() -> dict:
    """{"cpu": the CPU model (/proc/cpuinfo; the platform's processor string elsewhere), "cpus": how
    many this process may run on, "python": the interpreter and where it is installed}.

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
    return {"cpu": model or platform.processor() or platform.machine(), "cpus": cpus, "python": python}


def machine_line(machine: dict) -> str:
    """The report's line about the machine: its CPU, the interpreter when known, and the probe
    times it carries (cpu_probe_ms)."""
    probes = [f"{machine[key]:.0f} ms {when}" for key, when in (("probe_ms_before", "before"),
                                                                 ("probe_ms_after", "after")) if key in machine]
    probe = f"; CPU probe {', '.join(probes)} (a fixed Python loop: compare runs at similar probe times)" \
        if probes else ""
    cpus = machine["cpus"]
    python = f", {machine['python']}" if machine.get("python") else ""
    return f"machine: {machine['cpu']}, {cpus} CPU{'' if cpus == 1 else 's'}{python}{probe}"
