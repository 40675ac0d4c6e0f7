"""a4co.postgres: the health check before a connection is reused costs no round trip and still
replaces a connection the server closed."""
from __future__ import annotations

import pytest
from django.db import connections

import a4co.postgres.base
from tests.conftest import ALL_DATABASES
from tests.helpers import wait_until

pytestmark = pytest.mark.django_db(databases=ALL_DATABASES, transaction=True)


def _terminate(alias: str) -> None:
    pid = connections[alias].connection.info.backend_pid
    with connections["default"].cursor() as cursor:
        cursor.execute("SELECT pg_terminate_backend(%s)", [pid])


def test_an_idle_open_connection_is_usable_without_a_query(tmp_path):
    connection = connections["inventory"]
    connection.ensure_connection()
    assert isinstance(connection, a4co.postgres.base.DatabaseWrapper)
    pgconn = connection.connection.pgconn
    with open(tmp_path / "trace", "w+") as trace:
        pgconn.trace(trace.fileno())
        try:
            assert connection.is_usable()
        finally:
            pgconn.untrace()
        trace.seek(0)
        assert trace.read() == ""  # nothing sent to the server (Django's own check sends SELECT 1)


def test_a_connection_the_server_closed_is_not_usable_and_is_replaced():
    connection = connections["inventory"]
    connection.ensure_connection()
    old_pid = connection.connection.info.backend_pid
    _terminate("inventory")
    wait_until(lambda: not connection.is_usable(), timeout=5, message="the closed connection still looks usable")
    # What Django does before a request reuses it: the check fails, the connection is replaced.
    connection.health_check_done = False
    connection.close_if_health_check_failed()
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_backend_pid()")
        assert cursor.fetchone()[0] != old_pid


def test_a_closed_connection_is_not_usable():
    connection = connections["inventory"]
    connection.ensure_connection()
    connection.connection.close()
    assert not connection.is_usable()
    connection.close()


def test_a_long_statement_is_converted_once_then_taken_from_psycopgs_cache():
    import psycopg._queries

    columns = ", ".join(f"%s AS c{n}" for n in range(200))
    sql = f"SELECT {columns} /* {'x' * 5000} */"
    params = list(range(200))
    assert len(sql) > 4096  # past psycopg's own limits: cached only thanks to a4co.postgres
    with connections["inventory"].cursor() as cursor:
        cursor.execute(sql, params)
        before = psycopg._queries._query2pg.cache_info()
        cursor.execute(sql, params)
        after = psycopg._queries._query2pg.cache_info()
        assert cursor.fetchone()[199] == 199
    assert after.hits == before.hits + 1 and after.misses == before.misses
