"""a4co.postgres: the health check before a connection is reused costs no round trip and still
replaces a connection the server closed."""
from __future__ import annotations

import pytest
from django.db import connections

from tests.conftest import ALL_DATABASES
from tests.helpers import wait_until

pytestmark = pytest.mark.django_db(databases=ALL_DATABASES, transaction=True)


def _terminate(alias: str) -> None:
    pid = connections[alias].connection.info.backend_pid
    with connections["default"].cursor() as cursor:
        cursor.execute("SELECT pg_terminate_backend(%s)", [pid])


def test_an_idle_open_connection_is_usable_without_a_query():
    connection = connections["inventory"]
    connection.ensure_connection()
    executed = []
    with connection.execute_wrapper(lambda execute, sql, *args: executed.append(sql) or execute(sql, *args)):
        assert connection.is_usable()
    assert executed == []


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
