"""The whole system for end-to-end tests: web (gunicorn), Celery worker and beat, and the
JetStream consumers, started as real processes (the same commands `make run` uses) against
the servers of the test run, with orders, inventory and payments on THREE SEPARATE databases.

Tests talk to it over HTTP only, like a client would.
"""
from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
import urllib.parse
from pathlib import Path

import psycopg
import pytest
import requests

from devstack.process import ProcessSpec, spawn, stop_process
from devstack.procfile import PROCESSES
from devstack.servers import free_port
from infra import nats as nats_bus
from infra.streams import STREAMS
from tests.helpers import wait_until

REPO = Path(__file__).resolve().parents[2]
DATABASES = {"DATABASE_URL": "e2e_default", "ORDERS_DATABASE_URL": "e2e_orders",
             "INVENTORY_DATABASE_URL": "e2e_inventory", "PAYMENTS_DATABASE_URL": "e2e_payments"}


@dataclasses.dataclass
class System:
    base_url: str
    shop_token: str
    staff_token: str
    logs: Path
    env: dict = dataclasses.field(default_factory=dict, repr=False)  # what the processes run with

    def manage(self, *args: str) -> str:
        """Run a manage.py command against the system (its databases and settings); its stdout."""
        return _manage(self.env, *args)

    def client(self, token: str | None = None) -> requests.Session:
        session = requests.Session()
        session.headers["Authorization"] = f"Token {token or self.shop_token}"
        return session

    def log_tail(self, lines: int = 60) -> str:
        parts = []
        for path in sorted(self.logs.glob("*.log")):
            text = path.read_text(errors="replace").splitlines()[-lines:]
            parts.append(f"--- {path.name}\n" + "\n".join(text))
        return "\n".join(parts)


def _database_url(base: str, name: str) -> str:
    parts = urllib.parse.urlsplit(base)
    return urllib.parse.urlunsplit(parts._replace(path=f"/{name}"))


def _recreate_databases(base: str) -> None:
    admin = _database_url(base, "postgres")
    with psycopg.connect(admin, autocommit=True) as conn:
        for name in DATABASES.values():
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            conn.execute(f'CREATE DATABASE "{name}"')


def _broker_url(base: str) -> str:
    # Redis: a database number of its own, so relay kicks from other tests do not reach it.
    parts = urllib.parse.urlsplit(base)
    if parts.scheme.startswith("redis"):
        return urllib.parse.urlunsplit(parts._replace(path="/7"))
    return base


def _manage(env: dict, *args: str) -> str:
    result = subprocess.run([sys.executable, "manage.py", *args], cwd=REPO, env=env, capture_output=True,
                            text=True, timeout=120)
    if result.returncode != 0:
        raise RuntimeError(f"manage.py {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}")
    return result.stdout.strip()


@pytest.fixture(scope="session")
def system(tmp_path_factory) -> System:
    base_db = os.environ["DATABASE_URL"]
    _recreate_databases(base_db)
    port = free_port()
    logs = Path(os.environ.get("DEVSTACK_TMPDIR") or tmp_path_factory.mktemp("e2e")) / "e2e-logs"
    logs.mkdir(parents=True, exist_ok=True)
    env = {
        **os.environ,
        **{var: _database_url(base_db, name) for var, name in DATABASES.items()},
        "CELERY_BROKER_URL": _broker_url(os.environ["CELERY_BROKER_URL"]),
        "DJANGO_SETTINGS_MODULE": "a4co.settings.dev",
        "DJANGO_DEBUG": "0",
        "PORT": str(port),
        "SWEEP_BEAT_SECONDS": "1",
        "PYTHONUNBUFFERED": "1",
        "STATIC_ROOT": str(logs.parent / "e2e-static"),  # WhiteNoise serves it (admin CSS, API docs)
    }
    nats_bus.jetstream_delete_streams_destroying_data([s.name for s in STREAMS])
    _manage(env, "migrate_all")
    _manage(env, "setup_streams")
    _manage(env, "collectstatic", "--noinput", "--verbosity", "0")
    shop_token = _manage(env, "api_token", "e2e-shop")
    staff_token = _manage(env, "api_token", "e2e-ops", "--staff")

    context = {"python": sys.executable, "datadir": str(logs), "port": str(port)}
    children = []
    try:
        for name, template in PROCESSES.items():
            argv = [part.format(**context) for part in template.split()]
            spec = ProcessSpec(name=name, argv=argv, cwd=str(REPO), env=env)
            log = open(logs / f"{name}.log", "ab")  # noqa: SIM115 - closed below
            children.append((spawn(spec, stdout=log), spec, log))
        system = System(base_url=f"http://127.0.0.1:{port}", shop_token=shop_token, staff_token=staff_token,
                        logs=logs, env=env)

        def ready() -> bool:
            try:
                return requests.get(f"{system.base_url}/readyz", timeout=2).status_code == 200
            except requests.RequestException:
                return False

        wait_until(ready, timeout=60, interval=0.2, message="the system's /readyz")
        yield system
    finally:
        for process, spec, log in reversed(children):
            stop_process(process, spec, timeout=15)
            log.close()
        with psycopg.connect(_database_url(base_db, "postgres"), autocommit=True) as conn:
            for name in DATABASES.values():
                conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
