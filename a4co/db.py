"""Database connection upkeep for long-running processes that are not Django requests."""
from __future__ import annotations

import time

from django.db import connections


def connections_close_stale() -> None:
    """Close this thread's connections that failed or outlived CONN_MAX_AGE; keep the rest open.

    Like Django's per-request `close_old_connections()`, minus the health check it re-arms (one
    extra `SELECT 1` round trip per unit of work). A connection broken by a PostgreSQL restart
    fails its next query instead, which marks it (`errors_occurred`) and this closes it before
    the next unit of work. Never touches a connection inside a transaction.
    """
    now = time.monotonic()
    for connection in connections.all(initialized_only=True):
        if connection.in_atomic_block:
            continue
        if connection.errors_occurred or (connection.close_at is not None and now >= connection.close_at):
            connection.close_if_unusable_or_obsolete()
