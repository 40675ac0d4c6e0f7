"""Test helpers: waiting on conditions with a deadline (never sleeping for luck)."""
from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def wait_until(condition: Callable[[], T], *, timeout: float = 15.0, interval: float = 0.05,
               message: str = "condition") -> T:
    """Poll `condition` until it returns a truthy value; return it. AssertionError at the deadline."""
    deadline = time.monotonic() + timeout
    last = None
    while True:
        last = condition()
        if last:
            return last
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {message}; last value: {last!r}")
        time.sleep(interval)


def port_accepts(port: int, host: str = "127.0.0.1") -> bool:
    """True when something accepts TCP connections on the port right now."""
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


class FakeServer:
    """A plain TCP server on a thread: each accepted connection is handed to `serve(sock, seen)`,
    which appends what it read to `seen`."""

    def __init__(self, serve):
        self.seen: list[bytes] = []
        self.connections = 0
        self.closed = 0
        self._listener = socket.socket()
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen()
        self.port = self._listener.getsockname()[1]
        self._serve = serve
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                conn, _ = self._listener.accept()
            except OSError:
                return
            self.connections += 1
            with conn:
                self._serve(conn, self.seen)
            self.closed += 1

    def close(self):
        self._listener.close()


def http_request_read(conn) -> bytes:
    """One HTTP request read from `conn`: its head, and its body by Content-Length (read whole, so
    that closing the socket afterwards sends FIN, not the RST of unread data)."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = conn.recv(65536)
        if not chunk:
            return data
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = next((int(line.split(b":", 1)[1]) for line in head.split(b"\r\n")[1:]
                   if line.lower().startswith(b"content-length:")), 0)
    while len(body) < length:
        chunk = conn.recv(65536)
        if not chunk:
            break
        body += chunk
    return head + b"\r\n\r\n" + body
