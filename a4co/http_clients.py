"""Small pieces for the project's own HTTP clients (the Stripe gateway, the load generator)."""
from __future__ import annotations

import http.client
import select


def connection_closed_while_idle(conn: http.client.HTTPConnection) -> bool:
    """True if a kept-alive connection, between requests, has something to read: the server closed
    it (or broke the protocol). Such a connection must be replaced before it is used: a request
    sent on it would fail with an outcome its caller cannot tell from a lost answer."""
    return conn.sock is not None and bool(select.select([conn.sock], [], [], 0)[0])
