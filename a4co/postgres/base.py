"""The PostgreSQL backend every alias uses: Django's, with a health check that costs no round trip
and psycopg's query conversion cached for our long statements.

Django checks a persistent connection before each request reuses it (CONN_HEALTH_CHECKS) by
running `SELECT 1`: with the auth alias and a service alias that is two of the four round trips
of POST /orders. An idle connection has nothing to read, so here the check looks at the socket
instead: readable means the server closed it (restart, termination, idle timeout) or sent an
error, and the connection is replaced. A connection that breaks without the server saying so
(a silent network failure) fails its next query like it would right after a `SELECT 1`; Django
then closes it at the end of that request.
"""
from __future__ import annotations

import select

import psycopg
import psycopg._queries
from django.db.backends.postgresql import base
from psycopg import pq

# psycopg turns a query's %s placeholders into $n with a regex split, cached per query text only
# up to 4,096 bytes and 50 parameters (against ORM statements of ever-changing shape filling the
# cache). The hot path's statements are a few fixed shapes past both limits (an order with its
# lines, saga, first step and orders.created is one statement): converting them again on every
# execution was 15 % of the web process's CPU. The cache stays bounded (128 entries, LRU), so
# wider limits cost at most a few MB. tests/infra/test_db_backend.py checks they still apply.
QUERY_CACHE_MAX_LENGTH = 65536
QUERY_CACHE_MAX_PARAMS = 1000
psycopg._queries.MAX_CACHED_STATEMENT_LENGTH = max(psycopg._queries.MAX_CACHED_STATEMENT_LENGTH,
                                                   QUERY_CACHE_MAX_LENGTH)
psycopg._queries.MAX_CACHED_STATEMENT_PARAMS = max(psycopg._queries.MAX_CACHED_STATEMENT_PARAMS,
                                                   QUERY_CACHE_MAX_PARAMS)


class DatabaseWrapper(base.DatabaseWrapper):
    def is_usable(self) -> bool:
        connection = self.connection
        if connection is None or connection.pgconn.status != pq.ConnStatus.OK:
            return False
        if connection.info.transaction_status != pq.TransactionStatus.IDLE:
            return super().is_usable()  # mid-transaction (not Django's use): ask the server
        try:
            poller = select.poll()  # not select(): it fails on descriptors past 1023
            poller.register(connection.pgconn.socket, select.POLLIN | select.POLLPRI)
            return not poller.poll(0)
        except (OSError, ValueError, psycopg.OperationalError):  # the socket is gone
            return False
