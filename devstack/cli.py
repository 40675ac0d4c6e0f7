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
at a time (a lock file enforces it).

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

import fcntl
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from . import procfile, servers
from .process import ProcessSpec, death_signal_preexec, describe_exit
from .servers import Server, ServerError
from .supervisor import Interrupted, Supervisor

REPO = Path(__file__).resolve().parent.parent
RUN_DATADIR = REPO / ".devstack"
DEFAULT_WEB_PORT = 8000


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
usage: python -m devstack run
       python -m devstack test [pytest args...]

run   servers + setup steps + web/worker/beat/consumers, data in .devstack/
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


def run(argv: list[str]) -> int:
    if argv:
        raise UsageError(f"`run` takes no arguments (got {' '.join(argv)})")
    if not (REPO / "manage.py").exists():
        raise UsageError(f"no manage.py in {REPO}: nothing to run")
    RUN_DATADIR.mkdir(exist_ok=True)
    lock = _lock_datadir(RUN_DATADIR)

    web_port = _port_from_env("PORT", DEFAULT_WEB_PORT)
    to_start = []
    urls: dict[str, str] = {}
    for service in SERVICES:
        if os.environ.get(service.url_var):
            urls[service.url_var] = os.environ[service.url_var]
        else:
            to_start.append((service, _port_from_env(service.port_var, service.default_port)))

    busy = [(s.name, p, s.port_var) for s, p in to_start if servers.port_in_use(p)]
    if servers.port_in_use(web_port):
        busy.append(("web", web_port, "PORT"))
    if busy:
        lines = [f"port {p} for {name} is already in use (set {var} to use another)" for name, p, var in busy]
        raise UsageError("\n".join(lines) + "\nIs another devstack (or a leftover server) running?")

    names = [s.name for s, _ in to_start] + list(procfile.SETUP_STEPS) + list(procfile.PROCESSES)
    sup = Supervisor(width=max(len(n) for n in [*names, "devstack"]))
    sup.install_signal_handlers()
    try:
        return _run_supervised(sup, to_start, urls, web_port)
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
        sup.shutdown()
        os.close(lock)


def _run_supervised(sup: Supervisor, to_start, urls: dict[str, str], web_port: int) -> int:
    started = []
    for service, port in to_start:
        if service.name == "postgres" and not (RUN_DATADIR / "postgres" / "pgdata").exists():
            sup.say("creating the PostgreSQL cluster (initdb, first run only)")
        spec = service.make_spec(RUN_DATADIR / service.name, port)
        child = sup.add(spec, "server")
        sup.start(child)
        started.append((service, child))
    for service, child in started:
        sup.wait_ready(child)
        if child.spec.after_ready is not None:
            child.spec.after_ready()
        urls[service.url_var] = child.spec.url
    _banner(sup, urls, {s.url_var for s, _ in to_start}, web_port)

    env = dict(os.environ)
    env.update(urls)
    env["PYTHONUNBUFFERED"] = "1"
    context = {"python": sys.executable, "datadir": str(RUN_DATADIR), "port": str(web_port)}

    for name, template in procfile.SETUP_STEPS.items():
        argv = _command(template, context)
        sup.say(f"setup: {shlex.join(argv)}")
        rc = sup.run_oneshot(ProcessSpec(name=name, argv=argv, cwd=str(REPO), env=env))
        if rc is None:
            return 0
        if rc != 0:
            sup.say(f"error: setup step `{name}` ({shlex.join(argv)}) failed with {describe_exit(rc)}; stopping")
            return 1

    for name, template in procfile.PROCESSES.items():
        spec = ProcessSpec(name=name, argv=_command(template, context), cwd=str(REPO), env=env)
        sup.start(sup.add(spec, "app"))
    sup.say(f"all started; web on http://127.0.0.1:{web_port}/ - Ctrl-C stops everything")
    sup.serve()
    return 0


def _banner(sup: Supervisor, urls: dict[str, str], ours: set[str], web_port: int) -> None:
    lines = [f"data in {RUN_DATADIR} (kept between runs; `make clean` wipes it)"]
    for service in SERVICES:
        url = urls[service.url_var]
        origin = service.note if service.url_var in ours else f"from ${service.url_var}, not started here"
        lines.append(f"  {service.name:<9} {url}" + (f"   ({origin})" if origin else ""))
    lines.append(f"  {'web':<9} http://127.0.0.1:{web_port}/")
    exports = [
        f"  export {s.url_var}={shlex.quote(urls[s.url_var])}"
        for s in SERVICES
        if urls[s.url_var] != _default_url(s)
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
