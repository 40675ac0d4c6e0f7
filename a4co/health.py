"""Liveness and readiness probes (open, no authentication)."""
from __future__ import annotations

from django.conf import settings
from django.db import connections
from django.http import JsonResponse

from infra.nats import NatsUnavailableError, nats_ping


def healthz(request):
    """The process is up and serving requests."""
    return JsonResponse({"status": "ok"})


def _check_databases() -> dict:
    result = {}
    for alias in settings.DATABASES:
        try:
            with connections[alias].cursor() as cursor:
                cursor.execute("SELECT 1")
            result[alias] = "ok"
        except Exception as exc:  # noqa: BLE001 - any driver error means "not ready"; reported, not raised
            result[alias] = f"error: {type(exc).__name__}"
    return result


def _check_nats() -> str:
    try:
        return f"ok (server {nats_ping(timeout=2.0)})"
    except NatsUnavailableError as exc:
        return f"error: {exc}"


def _check_broker() -> str:
    from a4co.celery import app

    try:
        with app.connection_for_write() as connection:
            connection.ensure_connection(max_retries=1, timeout=2)
        return "ok"
    except Exception as exc:  # noqa: BLE001 - kombu raises many transport-specific errors
        return f"error: {type(exc).__name__}: {exc}"


def readyz(request):
    """200 when every database alias, NATS and the Celery broker answer; 503 (with details) otherwise."""
    checks = {"databases": _check_databases(), "nats": _check_nats(), "broker": _check_broker()}
    ready = (all(v == "ok" for v in checks["databases"].values())
             and checks["nats"].startswith("ok") and checks["broker"] == "ok")
    return JsonResponse({"status": "ready" if ready else "not ready", "checks": checks},
                        status=200 if ready else 503)
