"""``python -m devstack run`` and ``python -m devstack test [pytest args]``.

Both modes start the four embedded servers unless their environment
variable is already set, in which case that value is used as is:

    DATABASE_URL       postgres (database "a4co")
    NATS_URL           nats-server with JetStream
    CELERY_BROKER_URL  redis
    STRIPE_API_BASE    localstripe (patched, in memory)

run: data in ``<repo>/.devstack/`` (kept between runs; ``make clean`` wipes
it), fixed ports 15432/14222/16379/18420 (``DEVSTACK_PG_PORT``,
``DEVSTACK_NATS_PORT``, ``DEVSTACK_REDIS_PORT``, ``DEVSTACK_STRIPE_PORT``
override them), then the setup steps and the long-running processes of
:mod:`devstack.procfile` under :class:`devstack.supervisor.Supervisor`, in
the foreground. Ctrl-C/SIGTERM stops everything and exits 0. Exits 1 if a
server does not start or a setup step fails (after stopping what it
started), 2 on bad usage/configuration. Only one ``run`` per data directory
at a time (a lock file enforces it). Options (for chaos tests; without them
the behaviour above is unchanged)::

    --datadir DIR    data, logs (logs/<name>.log), the beat schedule, the lock
                     and state.json in DIR instead of <repo>/.devstack
    --ports auto     free ports for every server, the proxy and web (instead
                     of the fixed defaults, DEVSTACK_*_PORT and PORT)
    --stripe-proxy   start devstack/stripe_proxy.py (fault injection) in front
                     of the Stripe stand-in, or of $STRIPE_API_BASE when set;
                     the app processes get STRIPE_API_BASE=<proxy url>. Fixed
                     port 18421 (DEVSTACK_STRIPE_PROXY_PORT) unless --ports auto
    --no-seed        skip the `seed` setup step

It writes ``<datadir>/state.json`` (format: :mod:`devstack.state`) and
per-process logs in ``<datadir>/logs/`` (overwritten by each run).

test: a fresh ``tempfile.mkdtemp`` directory (exported as
``DEVSTACK_TMPDIR``), the servers on free ports with logs in that
directory, then ``python -m pytest [args]`` from the repository root with the
URLs exported; no app processes. Exits with pytest's status; 5 (no tests
collected) stays a failure, and a server that fails to start gives 1. The
servers are stopped and the directory removed in every case (SIGTERM is
passed on to pytest first). If a server died during the tests its log tail is
printed.
"""

from __future__ import annotations

import argparse
import fcntl
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from . import procfile, servers
from . import state as statefile
from .process import ProcessSpec, death_signal_preexec, describe_exit
from .servers import Server, ServerError
from .supervisor import Interrupted, Supervisor

REPO = Path(__file__).resolve().parent.parent
RUN_DATADIR = REPO / ".devstack"
DEFAULT_WEB_PORT = 8000
DEFAULT_PROXY_PORT = 18421
PROXY_PORT_VAR = "DEVSTACK_STRIPE_PROXY_PORT"
SEED_STEP = "seed"


@dataclass(frozen=True)
class Service:
    name: str
    url_var: str
    port_var: str
    default_port: int
    make_spec: Callable[[Path, int], ProcessSpec]  # run mode
    start: Callable[[Path], Server]  # test mode (free port)
    note: str = ""


SERVICES = [
    Service("postgres", "DATABASE_URL", "DEVSTACK_PG_PORT", 15432,
            lambda d, p: servers.postgres_spec(d, p), servers.start_postgres),
    Service("nats", "NATS_URL", "DEVSTACK_NATS_PORT", 14222,
            lambda d, p: servers.nats_spec(d, p), servers.start_nats),
    Service("redis", "CELERY_BROKER_URL", "DEVSTACK_REDIS_PORT", 16379,
            lambda d, p: servers.redis_spec(d, p, persistent=True), servers.start_redis),
    Service("stripe", "STRIPE_API_BASE", "DEVSTACK_STRIPE_PORT", 18420,
            lambda d, p: servers.stripe_spec(d, p), servers.start_stripe,
            note="in memory: empty after each start"),
]

USAGE = """\
usage: python -m devstack run [--datadir DIR] [--ports auto] [--stripe-proxy] [--no-seed]
       python -m devstack test [pytest args...]

run   servers + setup steps + web/worker/beat/consumers, data in .devstack/
      (python -m devstack run --help for the options)
test  servers on free ports in a temporary directory, then pytest
"""


class UsageError(Exception):
    pass


def _say(message: str) -> None:
    print(f"devstack: {message}", flush=True)


def _port_from_env(var: str, default: int) -> int:
    raw = os.environ.get(var, "").strip()
    if not raw:
        return default
    try:
        port = int(raw)
    except ValueError:
        port = -1
    if not 1 <= port <= 65535:
        raise UsageError(f"{var}={raw!r} is not a TCP port number")
    return port


def _default_url(service: Service) -> str:
    spec_urls = {
        "postgres": f"postgres://postgres@127.0.0.1:{service.default_port}/a4co",
        "nats": f"nats://127.0.0.1:{service.default_port}",
        "redis": f"redis://127.0.0.1:{service.default_port}/0",
        "stripe": f"http://127.0.0.1:{service.default_port}",
    }
    return spec_urls[service.name]


def _command(template: str, context: dict[str, str]) -> list[str]:
    # Split first, then substitute: a path with spaces stays one argument.
    return [token.format(**context) for token in shlex.split(template)]


# ---------------------------------------------------------------------- run


def _lock_datadir(datadir: Path) -> int:
    """Take an exclusive lock on the data dir for our lifetime, or raise.

    Returns the lock's file descriptor: keep it open until exit. The kernel
    drops the lock when the process dies, however it dies.
    """
    fd = os.open(datadir / "run.lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.read(fd, 64).decode(errors="replace").strip() or "?"
        os.close(fd)
        raise UsageError(f"another `devstack run` (pid {holder}) is using {datadir}; stop it first") from None
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()}\n".encode())
    return fd


@dataclass(frozen=True)
class RunOptions:
    datadir: Path
    auto_ports: bool = False
    stripe_proxy: bool = False
    seed: bool = True


def _parse_run_args(argv: list[str]) -> RunOptions:
    """``run``'s options (see the module docstring); bad usage exits 2."""
    parser = argparse.ArgumentParser(
        prog="python -m devstack run",
        description="Servers + setup steps + web/worker/beat/consumers under a supervisor, in the foreground.",
    )
    parser.add_argument("--datadir", type=Path, default=RUN_DATADIR,
                        help="data, logs, beat schedule, lock and state.json (default: %(default)s)")
    parser.add_argument("--ports", choices=("fixed", "auto"), default="fixed",
                        help="auto: free ports for every server, the proxy and web (default: fixed)")
    parser.add_argument("--stripe-proxy", action="store_true",
                        help="fault-injecting proxy in front of the Stripe stand-in; apps use the proxy")
    parser.add_argument("--no-seed", action="store_true", help="skip the seed_demo setup step")
    args = parser.parse_args(argv)
    return RunOptions(
        datadir=args.datadir.expanduser().resolve(),
        auto_ports=args.ports == "auto",
        stripe_proxy=args.stripe_proxy,
        seed=not args.no_seed,
    )


class _Ports:
    """Port choice: fixed (defaults / environment) or distinct free ports."""

    def __init__(self, auto: bool):
        self.auto = auto
        self.taken: set[int] = set()

    def get(self, var: str, default: int) -> int:
        if not self.auto:
            return _port_from_env(var, default)
        port = servers.free_port()
        while port in self.taken:
            port = servers.free_port()
        self.taken.add(port)
        return port


def run(argv: list[str]) -> int:
    opts = _parse_run_args(argv)
    if not (REPO / "manage.py").exists():
        raise UsageError(f"no manage.py in {REPO}: nothing to run")
    datadir = opts.datadir
    try:
        datadir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UsageError(f"cannot create the data directory {datadir}: {exc}") from exc
    lock = _lock_datadir(datadir)

    ports = _Ports(opts.auto_ports)
    web_port = ports.get("PORT", DEFAULT_WEB_PORT)
    to_start = []
    urls: dict[str, str] = {}
    for service in SERVICES:
        if os.environ.get(service.url_var):
            urls[service.url_var] = os.environ[service.url_var]
        else:
            to_start.append((service, ports.get(service.port_var, service.default_port)))
    proxy_port = ports.get(PROXY_PORT_VAR, DEFAULT_PROXY_PORT) if opts.stripe_proxy else None

    busy = [(s.name, p, s.port_var) for s, p in to_start if servers.port_in_use(p)]
    if servers.port_in_use(web_port):
        busy.append(("web", web_port, "PORT"))
    if proxy_port is not None and servers.port_in_use(proxy_port):
        busy.append(("stripe-proxy", proxy_port, PROXY_PORT_VAR))
    if busy:
        os.close(lock)
        lines = [f"port {p} for {name} is already in use (set {var} to use another)" for name, p, var in busy]
        raise UsageError("\n".join(lines) + "\nIs another devstack (or a leftover server) running?")

    names = [s.name for s, _ in to_start] + list(procfile.SETUP_STEPS) + list(procfile.PROCESSES)
    if proxy_port is not None:
        names.append("stripe-proxy")
    sup = Supervisor(width=max(len(n) for n in [*names, "devstack"]), log_dir=datadir / "logs")
    state = statefile.StateFile(datadir / "state.json", datadir=datadir, processes=sup.snapshot)
    state.web_url = f"http://127.0.0.1:{web_port}"
    sup.on_change = state.write
    sup.install_signal_handlers()
    try:
        state.write()  # ready: false, replacing a previous run's file
        return _run_supervised(sup, to_start, urls, web_port, opts=opts, state=state, proxy_port=proxy_port)
    except ServerError as exc:
        sup.say(f"error: {exc}")
        return 1
    except OSError as exc:
        # A program could not be executed at all (missing binary, bad venv).
        sup.say(f"error: could not start a process: {exc}")
        return 1
    except Interrupted:
        return 0
    finally:
        state.stopping = True
        sup.shutdown()
        try:
            state.write()
        except OSError as exc:
            sup.say(f"warning: could not update {state.path}: {exc}")
        os.close(lock)


def _run_supervised(
    sup: Supervisor,
    to_start,
    urls: dict[str, str],
    web_port: int,
    *,
    opts: RunOptions | None = None,
    state: statefile.StateFile | None = None,
    proxy_port: int | None = None,
) -> int:
    opts = opts or RunOptions(datadir=RUN_DATADIR)
    datadir = opts.datadir
    started = []
    for service, port in to_start:
        if service.name == "postgres" and not (datadir / "postgres" / "pgdata").exists():
            sup.say("creating the PostgreSQL cluster (initdb, first run only)")
        spec = service.make_spec(datadir / service.name, port)
        child = sup.add(spec, "server")
        sup.start(child)
        started.append((service, child))
    for service, child in started:
        sup.wait_ready(child)
        if child.spec.after_ready is not None:
            child.spec.after_ready()
        urls[service.url_var] = child.spec.url
    stripe_upstream = urls["STRIPE_API_BASE"]
    proxy = None
    if proxy_port is not None:
        # A server like the others: restarted if it dies, stopped with them.
        proxy = sup.add(servers.stripe_proxy_spec(datadir / "stripe-proxy", proxy_port, stripe_upstream), "server")
        sup.start(proxy)
        sup.wait_ready(proxy)
    _banner(sup, urls, {s.url_var for s, _ in to_start}, web_port, datadir=datadir,
            proxy=proxy.spec if proxy else None)
    if proxy is not None:
        urls["STRIPE_API_BASE"] = proxy.spec.url
    if state is not None:
        state.env = {**urls, "STRIPE_UPSTREAM": stripe_upstream}
        state.proxy_control_url = proxy.spec.extra["control_url"] if proxy else None
        state.write()

    env = dict(os.environ)
    env.update(urls)
    env["PYTHONUNBUFFERED"] = "1"
    # The stack runs like the real thing: DEBUG off unless asked for (DJANGO_DEBUG=1 make run).
    # DEBUG keeps every SQL statement of every process in memory and cost about a fifth of the
    # throughput (docs/benchmarks.md).
    env.setdefault("DJANGO_DEBUG", "0")
    _prometheus_multiproc_dir(env, datadir / "prometheus")
    context = {"python": sys.executable, "datadir": str(datadir), "port": str(web_port)}

    for name, template in procfile.SETUP_STEPS.items():
        if name == SEED_STEP and not opts.seed:
            sup.say(f"setup: skipping `{name}` (--no-seed)")
            continue
        argv = _command(template, context)
        sup.say(f"setup: {shlex.join(argv)}")
        rc = sup.run_oneshot(ProcessSpec(name=name, argv=argv, cwd=str(REPO), env=env))
        if rc is None:
            return 0
        if rc != 0:
            sup.say(f"error: setup step `{name}` ({shlex.join(argv)}) failed with {describe_exit(rc)}; stopping")
            return 1

    apps = []
    for name, template in procfile.PROCESSES.items():
        spec = ProcessSpec(name=name, argv=_command(template, context) + procfile.argv_extra(name), cwd=str(REPO),
                           env=env, probe=_app_probe(sup, name, web_port))
        apps.append(sup.add(spec, "app"))
        sup.start(apps[-1])
    _apps_wait_ready(sup, apps)
    if state is not None:
        state.ready = True
        state.write()
    sup.say(f"all started; web on http://127.0.0.1:{web_port}/ - Ctrl-C stops everything")
    sup.serve()
    return 0


APP_READY_TIMEOUT = 60.0


def _app_probe(sup: Supervisor, name: str, web_port: int) -> Callable[[], bool] | None:
    """The app's readiness probe (procfile.READY_LINES / READY_PATH), or None for one that is ready
    once started."""
    if name in procfile.READY_PATH:
        return servers.http_probe(f"http://127.0.0.1:{web_port}{procfile.READY_PATH[name]}", {})
    if name in procfile.READY_LINES:
        pattern = re.compile(procfile.READY_LINES[name])
        return lambda: pattern.search(sup.tail(name)) is not None
    return None


def _apps_wait_ready(sup: Supervisor, apps: list) -> None:
    """Pump output (and restart what dies, as always) until every app's probe passes. After
    APP_READY_TIMEOUT seconds, say which are not ready and go on: they keep starting, and their
    logs say why they have not."""
    deadline = time.monotonic() + APP_READY_TIMEOUT
    waiting = [child for child in apps if child.spec.probe is not None]
    while True:
        waiting = [child for child in waiting if not child.spec.probe()]
        if not waiting:
            return
        if time.monotonic() >= deadline:
            names = ", ".join(child.name for child in waiting)
            sup.say(f"warning: {names} not ready after {APP_READY_TIMEOUT:g} s; see their logs")
            return
        if sup.stop_requested:
            raise Interrupted()
        sup.tick(0.05)


def _banner(
    sup: Supervisor,
    urls: dict[str, str],
    ours: set[str],
    web_port: int,
    *,
    datadir: Path = RUN_DATADIR,
    proxy: ProcessSpec | None = None,
) -> None:
    where = "kept between runs; `make clean` wipes it" if datadir == RUN_DATADIR else "kept between runs"
    lines = [f"data in {datadir} ({where})"]
    for service in SERVICES:
        url = urls[service.url_var]
        origin = service.note if service.url_var in ours else f"from ${service.url_var}, not started here"
        lines.append(f"  {service.name:<9} {url}" + (f"   ({origin})" if origin else ""))
    if proxy is not None:
        lines.append(f"  {'proxy':<9} {proxy.url}   (Stripe fault injection: {proxy.extra['control_url']})")
    lines.append(f"  {'web':<9} http://127.0.0.1:{web_port}/")
    exported = dict(urls)
    if proxy is not None:
        exported["STRIPE_API_BASE"] = proxy.url
    exports = [
        f"  export {s.url_var}={shlex.quote(exported[s.url_var])}"
        for s in SERVICES
        if exported[s.url_var] != _default_url(s)
    ]
    if exports:
        lines.append("from another terminal, first run:")
        lines.extend(exports)
        lines.append("then: .venv/bin/python manage.py <command>")
    else:
        lines.append(
            "from another terminal: .venv/bin/python manage.py <command>"
            "  (the settings' defaults are these URLs)"
        )
    sup.say("\n".join(lines))


# --------------------------------------------------------------------- test


def test(args: list[str]) -> int:
    tmp = Path(tempfile.mkdtemp(prefix="devstack-test-"))
    if os.geteuid() == 0:
        # mkdtemp makes it 0700; the unprivileged postgres account must be
        # able to pass through it to its data directory (traverse, not list).
        os.chmod(tmp, 0o711)
    started: list[Server] = []
    state: dict = {"pytest": None, "cleaning": False}

    def on_signal(signum, frame):
        if state["cleaning"]:
            return  # never abandon the cleanup half-way
        pytest_proc = state["pytest"]
        if pytest_proc is not None and pytest_proc.poll() is None:
            # Ctrl-C already reached pytest (same process group, same tty);
            # other signals are passed on. We clean up once it has exited.
            if signum != signal.SIGINT:
                pytest_proc.send_signal(signum)
            return
        raise Interrupted()

    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, on_signal)

    rc = 1
    try:
        env = dict(os.environ)
        for service in SERVICES:
            if env.get(service.url_var):
                _say(f"{service.name}: using ${service.url_var} = {env[service.url_var]}")
                continue
            server = service.start(tmp / service.name)
            started.append(server)
            env[service.url_var] = server.url
            _say(f"{service.name}: {server.url}")
        env["DEVSTACK_TMPDIR"] = str(tmp)
        _prometheus_multiproc_dir(env, tmp / "prometheus")
        argv = [sys.executable, "-m", "pytest", *args]
        _say(f"running {shlex.join(argv[1:])} (temporary data in {tmp})")
        # pytest shares our process group and terminal (Ctrl-C, pdb); the
        # preexec only sets its parent-death signal (we have no threads).
        preexec = death_signal_preexec(signal.SIGTERM)
        proc = subprocess.Popen(argv, cwd=str(REPO), env=env, preexec_fn=preexec)  # noqa: PLW1509
        state["pytest"] = proc
        rc = proc.wait()
        if rc < 0:
            rc = 128 - rc
        elif rc == 5:
            _say("pytest collected no tests (exit code 5): that counts as a failure")
        for server in started:
            if not server.is_running():
                _say(
                    f"{server.name} died during the tests ({describe_exit(server.process.returncode)}); "
                    f"last log lines:\n{server.log_tail()}"
                )
    except ServerError as exc:
        _say(f"error: {exc}")
        for server in started:
            if not server.is_running():
                _say(f"{server.name} log:\n{server.log_tail()}")
        rc = 1
    except Interrupted:
        _say("interrupted")
        rc = 130
    finally:
        state["cleaning"] = True
        try:
            servers.stop_all(started)
        except ServerError as exc:
            _say(f"warning: {exc}")
        _remove_tree(tmp)
    return rc


def _prometheus_multiproc_dir(env: dict[str, str], directory: Path) -> None:
    """Export PROMETHEUS_MULTIPROC_DIR as `directory`, emptied, so that /metrics adds up the
    counters of every app process of this run (infra/metrics.py). A value already in the
    environment is kept as is (and not emptied: that is up to whoever set it)."""
    if env.get("PROMETHEUS_MULTIPROC_DIR"):
        return
    shutil.rmtree(directory, ignore_errors=True)
    directory.mkdir(parents=True)
    env["PROMETHEUS_MULTIPROC_DIR"] = str(directory)


def _remove_tree(path: Path) -> None:
    """rmtree that reports what it could not remove instead of stopping."""

    def report(function, failed_path, error) -> None:
        if isinstance(error, tuple):  # onerror passes exc_info
            error = error[1]
        _say(f"warning: could not remove {failed_path}: {error}")

    if sys.version_info >= (3, 12):
        shutil.rmtree(path, onexc=report)
    else:
        shutil.rmtree(path, onerror=report)


# ---------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        sys.stdout.write(USAGE)
        return 0 if argv else 2
    command, rest = argv[0], argv[1:]
    try:
        if command == "run":
            return run(rest)
        if command == "test":
            return test(rest)
        raise UsageError(f"unknown command {command!r}\n{USAGE}")
    except UsageError as exc:
        print(f"devstack: {exc}", file=sys.stderr)
        return 2
