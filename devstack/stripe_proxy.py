"""A fault-injecting HTTP reverse proxy for the Stripe stand-in (chaos testing).

Usage::

    python devstack/stripe_proxy.py --port P --upstream URL [--host 127.0.0.1]

Run as a script by the devstack (``python -m devstack run --stripe-proxy``)
and by tests (``devstack.servers.start_stripe_proxy``); it imports nothing
from ``devstack``. It listens on ``--host:--port`` and forwards every request
(method, path, query string, headers, body) to ``--upstream`` (a base URL such
as ``http://127.0.0.1:18420``; a path in it is prepended), over a keep-alive
connection pool, and returns the upstream's status, headers and body. Hop-by-hop
headers (Connection, Keep-Alive, Transfer-Encoding, ...) and Host are not
copied; bodies are passed through undecoded (Content-Encoding is kept).

Control endpoint (answered by the proxy itself, never forwarded)::

    GET    /_chaos   -> 200 {"config": {...}, "counters": {...}, "upstream": URL}
    POST   /_chaos   JSON object, any subset of the config keys below;
                     -> 200 with the same body as GET, or 400 {"error": ...}
    DELETE /_chaos   back to pass-through: config defaults, counters zeroed,
                     random generator re-seeded with 0; -> 200 (same body)

Config keys (defaults in brackets)::

    seed                            int    [0]    re-seeds the fault generator when given
    delay_probability               float  [0.0]  chance a request is delayed ...
    delay_seconds                   float  [0.0]  ... by this long
    delay_phase                     str    ["before"]  "before": sleep, then forward (the
                                                  upstream still gets the request after
                                                  the delay even if the client gave up);
                                                  "after": forward, then sleep before
                                                  answering (done upstream, answer late)
    error_probability               float  [0.0]  answer 500 with a Stripe-style error
                                                  body WITHOUT forwarding
    drop_after_success_probability  float  [0.0]  forward; if the upstream answered 2xx,
                                                  close the client connection without a
                                                  response (it happened, the client never
                                                  learns it)
    only_paths                      null | str | [str]  [null]  faults only for request
                                                  paths starting with one of these
                                                  prefixes (e.g. "/v1/payment_intents");
                                                  other requests always pass through

Faults are drawn from ``random.Random(seed)``: each request that matches
``only_paths`` consumes exactly three draws, in arrival order (delay? error?
drop?), so a run with the same seed and the same request order makes the
same fault choices. A delay can combine with either other fault; an injected
error means nothing is forwarded (so no drop).

Counters (since start or the last DELETE)::

    requests               every proxied request (control requests excluded)
    matched                those that matched only_paths (fault candidates)
    delayed                requests delayed
    errors_injected        500s answered without forwarding
    forwarded              requests sent upstream
    dropped_after_success  2xx upstream answers not passed on (connection closed)
    upstream_errors        upstream unreachable/failed: answered 502 (Stripe-style body)

Failure behaviour: if the port cannot be bound the process exits non-zero with
the OSError on stderr. An unreachable upstream gives 502 answers, never a crash
(the upstream may be restarting). SIGTERM/SIGINT stop it within about a second.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import socket
import sys
from dataclasses import asdict, dataclass, field

from aiohttp import ClientError, ClientSession, ClientTimeout, DummyCookieJar, TCPConnector, web
from yarl import URL

CONTROL_PATH = "/_chaos"

# Not forwarded in either direction: connection-level (RFC 9110 7.6.1) or set by
# the HTTP library for the new hop (Host, Content-Length).
HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "host",
        "content-length",
    }
)

COUNTERS = (
    "requests",
    "matched",
    "delayed",
    "errors_injected",
    "forwarded",
    "dropped_after_success",
    "upstream_errors",
)

_PROBABILITIES = ("delay_probability", "error_probability", "drop_after_success_probability")


@dataclass
class Config:
    seed: int = 0
    delay_probability: float = 0.0
    delay_seconds: float = 0.0
    delay_phase: str = "before"
    error_probability: float = 0.0
    drop_after_success_probability: float = 0.0
    only_paths: list[str] | None = None


@dataclass
class Decision:
    delay: float = 0.0
    error: bool = False
    drop: bool = False


class ConfigError(ValueError):
    pass


@dataclass
class Chaos:
    config: Config = field(default_factory=Config)
    counters: dict[str, int] = field(default_factory=lambda: dict.fromkeys(COUNTERS, 0))
    rng: random.Random = field(default_factory=lambda: random.Random(0))

    def reset(self) -> None:
        self.config = Config()
        self.counters = dict.fromkeys(COUNTERS, 0)
        self.rng = random.Random(0)

    def update(self, data: object) -> None:
        """Apply a POST body; all-or-nothing (raises ConfigError, nothing changed)."""
        if not isinstance(data, dict):
            raise ConfigError("expected a JSON object")
        known = set(Config.__dataclass_fields__)
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"unknown keys {unknown}; known: {sorted(known)}")
        new = asdict(self.config)
        for key, value in data.items():
            if key == "seed":
                if isinstance(value, bool) or not isinstance(value, int):
                    raise ConfigError("seed must be an integer")
            elif key in _PROBABILITIES:
                value = _number(key, value)
                if not 0.0 <= value <= 1.0:
                    raise ConfigError(f"{key} must be between 0 and 1")
            elif key == "delay_seconds":
                value = _number(key, value)
                if not 0.0 <= value <= 3600.0:
                    raise ConfigError("delay_seconds must be between 0 and 3600")
            elif key == "delay_phase":
                if value not in ("before", "after"):
                    raise ConfigError('delay_phase must be "before" or "after"')
            elif key == "only_paths":
                if isinstance(value, str):
                    value = [value]
                if value is not None and (
                    not isinstance(value, list) or not all(isinstance(p, str) and p for p in value)
                ):
                    raise ConfigError("only_paths must be null, a path prefix or a list of them")
                value = value or None
            new[key] = value
        self.config = Config(**new)
        if "seed" in data:
            self.rng = random.Random(self.config.seed)

    def decide(self, path: str) -> Decision:
        self.counters["requests"] += 1
        cfg = self.config
        if cfg.only_paths is not None and not any(path.startswith(p) for p in cfg.only_paths):
            return Decision()
        self.counters["matched"] += 1
        # Always three draws per matching request: reproducible whatever the outcome.
        d_delay, d_error, d_drop = self.rng.random(), self.rng.random(), self.rng.random()
        return Decision(
            delay=cfg.delay_seconds if d_delay < cfg.delay_probability else 0.0,
            error=d_error < cfg.error_probability,
            drop=d_drop < cfg.drop_after_success_probability,
        )

    def view(self, upstream: str) -> dict:
        return {"config": asdict(self.config), "counters": dict(self.counters), "upstream": upstream}


def _number(key: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigError(f"{key} must be a number")
    return float(value)


def _log(message: str) -> None:
    """One line per injected fault (pass-through requests are not logged)."""
    print(f"chaos: {message}", flush=True)


def _stripe_error(status: int, message: str, code: str) -> web.Response:
    body = {"error": {"type": "api_error", "code": code, "message": message}}
    return web.json_response(body, status=status, headers={"Request-Id": "req_chaos"})


class Proxy:
    def __init__(self, upstream: str):
        self.upstream = upstream.rstrip("/")
        self.chaos = Chaos()
        self.session: ClientSession | None = None

    async def start_session(self, app: web.Application) -> None:
        # Keep-alive pool to the upstream; no automatic decompression (bodies
        # pass through byte for byte) and no headers the client did not send.
        self.session = ClientSession(
            connector=TCPConnector(limit=200, keepalive_timeout=30, force_close=False),
            timeout=ClientTimeout(total=None, sock_connect=5, sock_read=120),
            auto_decompress=False,
            skip_auto_headers=("User-Agent", "Accept", "Accept-Encoding", "Content-Type"),
            # Store no cookies: the proxy must not mix its clients' cookies.
            cookie_jar=DummyCookieJar(),
        )

    async def close_session(self, app: web.Application) -> None:
        if self.session is not None:
            await self.session.close()

    async def control(self, request: web.Request) -> web.Response:
        if request.method == "POST":
            try:
                data = await request.json()
            except ValueError:
                return web.json_response({"error": "body must be JSON"}, status=400)
            try:
                self.chaos.update(data)
            except ConfigError as exc:
                return web.json_response({"error": str(exc)}, status=400)
            _log(f"config set: {data}")
        elif request.method == "DELETE":
            self.chaos.reset()
            _log("config reset: pass-through")
        elif request.method != "GET":
            return web.json_response({"error": "use GET, POST or DELETE"}, status=405)
        return web.json_response(self.chaos.view(self.upstream))

    async def handle(self, request: web.Request) -> web.StreamResponse:
        if request.path == CONTROL_PATH:
            return await self.control(request)
        decision = self.chaos.decide(request.path)
        counters = self.chaos.counters
        body = await request.read()
        if decision.delay and self.chaos.config.delay_phase == "before":
            counters["delayed"] += 1
            _log(f"delay {decision.delay:g} s (before forwarding): {request.method} {request.path}")
            await asyncio.sleep(decision.delay)
        if decision.error:
            counters["errors_injected"] += 1
            _log(f"error 500 (not forwarded): {request.method} {request.path}")
            return _stripe_error(500, "chaos proxy: injected server error", "chaos_injected_error")

        headers = [(k, v) for k, v in request.headers.items() if k.lower() not in HOP_BY_HOP]
        url = URL(self.upstream + request.raw_path, encoded=True)
        counters["forwarded"] += 1
        try:
            async with self.session.request(
                request.method, url, headers=headers, data=body or None, allow_redirects=False
            ) as upstream:
                payload = await upstream.read()
                status = upstream.status
                reason = upstream.reason
                out_headers = [(k, v) for k, v in upstream.headers.items() if k.lower() not in HOP_BY_HOP]
        except (TimeoutError, ClientError, OSError) as exc:
            counters["upstream_errors"] += 1
            _log(f"upstream failed: {request.method} {request.path}: {exc!r} -> 502")
            return _stripe_error(502, f"chaos proxy: upstream {self.upstream} failed: {exc!r}", "upstream_unavailable")

        if decision.delay and self.chaos.config.delay_phase == "after":
            counters["delayed"] += 1
            _log(f"delay {decision.delay:g} s (after forwarding): {request.method} {request.path} -> {status}")
            await asyncio.sleep(decision.delay)
        if decision.drop and 200 <= status < 300:
            counters["dropped_after_success"] += 1
            _log(f"drop after success: {request.method} {request.path} -> {status}, connection closed")
            transport = request.transport
            if transport is not None:
                # FIN without a response; aiohttp then fails to write the
                # (empty) response below and just ends the connection.
                transport.close()
            return web.Response(status=status)
        response = web.Response(status=status, reason=reason, body=payload)
        for key, value in out_headers:
            response.headers.add(key, value)
        return response


def make_app(upstream: str) -> web.Application:
    proxy = Proxy(upstream)
    app = web.Application(client_max_size=64 * 1024 * 1024)
    app["proxy"] = proxy
    app.on_startup.append(proxy.start_session)
    app.on_cleanup.append(proxy.close_session)
    app.router.add_route("*", "/{tail:.*}", proxy.handle)
    return app


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    return sock


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--upstream", required=True, help="base URL to forward to, e.g. http://127.0.0.1:18420")
    parser.add_argument("--host", default="127.0.0.1")
    args = parser.parse_args(argv)
    if not args.upstream.startswith(("http://", "https://")):
        parser.error("--upstream must be an http:// or https:// URL")

    sock = _bind(args.host, args.port)
    print(f"stripe proxy on http://{args.host}:{args.port} -> {args.upstream} (control: {CONTROL_PATH})", flush=True)
    web.run_app(
        make_app(args.upstream),
        sock=sock,
        access_log=None,
        # A delayed request keeps going after its client gave up: the upstream
        # still gets it (see delay_phase).
        handler_cancellation=False,
        shutdown_timeout=1.0,
        print=None,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
