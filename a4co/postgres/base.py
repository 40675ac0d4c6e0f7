"""The PostgreSQL backend every alias uses: Django's, with a health check that costs no round trip.

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
from django.db.backends.postgresql import base
from psycopg import pq


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
