"""gunicorn settings for the web process in a deployment (the Dockerfile's CMD:
`gunicorn -c gunicorn.conf.py a4co.wsgi:application`). Every knob has an environment variable,
listed in .env.example; `make run` passes its own command-line flags instead (devstack/procfile.py).

Sizing: the API is I/O-bound (PostgreSQL, Redis), so each worker process runs GUNICORN_THREADS
threads; WEB_CONCURRENCY processes x threads is the number of requests served at once. Each
thread can hold one database connection per alias in use: keep DB_POOL_MAX_SIZE >= the threads.
"""
from __future__ import annotations

import os


def _int(name: str, default: int) -> int:
    raw = os.environ.get(name, "")
    return int(raw) if raw else default


bind = os.environ.get("GUNICORN_BIND", "") or "0.0.0.0:8000"
workers = _int("WEB_CONCURRENCY", 2)
worker_class = "gthread"
threads = _int("GUNICORN_THREADS", 4)
# A request still running after this many seconds gets its worker killed and restarted
# (Stripe calls happen in the consumers, never in a request, so 30 s is generous).
timeout = _int("GUNICORN_TIMEOUT", 30)
# On SIGTERM, requests in flight get this long to finish (compose's stop_grace_period is 30 s).
graceful_timeout = _int("GUNICORN_GRACEFUL_TIMEOUT", 25)
# Keep-alive with the proxy in front; a little longer than nothing, shorter than the proxy's.
keepalive = _int("GUNICORN_KEEPALIVE", 5)
# Recycle workers now and then (bounded memory growth); jitter keeps them from restarting together.
# A worker is replaced after this many requests (a guard against slow leaks). Booting one costs
# about a CPU-second (Django and the apps imported again), so not too often: at 2,000 it was
# 0.5 ms of CPU per request under load.
max_requests = _int("GUNICORN_MAX_REQUESTS", 20000)
max_requests_jitter = _int("GUNICORN_MAX_REQUESTS_JITTER", 2000)
# Request-line and header limits against oversized requests (bodies: DATA_UPLOAD_MAX_MEMORY_SIZE).
limit_request_line = 4094
limit_request_fields = 100
limit_request_field_size = 8190
# Heartbeat files in memory: a container's /tmp may be a slow overlay.
worker_tmp_dir = "/dev/shm" if os.path.isdir("/dev/shm") else None
# No control socket: nothing uses it, and the image's $HOME is read-only.
control_socket_disable = True

accesslog = "-"
errorlog = "-"
# Remote address, request line, status, size, duration, user agent. Never a header that carries a
# credential (Authorization, Cookie, Stripe-Signature): tokens travel in headers, not in URLs.
access_log_format = '%(h)s "%(r)s" %(s)s %(b)s %(M)sms "%(a)s"'
