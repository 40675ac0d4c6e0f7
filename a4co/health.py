"""Liveness and readiness probes (open, no authentication).

They are DRF function views only so that the OpenAPI schema describes them (no authentication,
no permission, GET and HEAD); they answer with plain JsonResponses, as before.
"""
from __future__ import annotations

from django.conf import settings
from django.db import connections
from django.http import JsonResponse
from drf_spectacular.utils import OpenApiResponse, extend_schema, inline_serializer
from rest_framework import serializers
from rest_framework.decorators import api_view, authentication_classes, permission_classes
from rest_framework.permissions import AllowAny

from infra.nats import NatsUnavailableError, nats_ping

_READINESS = inline_serializer(name="Readiness", fields={
    "status": serializers.ChoiceField(choices=["ready", "not ready"]),
    "checks": inline_serializer(name="ReadinessChecks", fields={
        "databases": serializers.DictField(child=serializers.CharField(),
                                           help_text='Per database alias: "ok" or "error: <type>".'),
        "nats": serializers.CharField(help_text='"ok (server <version>)" or "error: ...".'),
        "broker": serializers.CharField(help_text='"ok" or "error: ...".')}),
})


@extend_schema(operation_id="healthz", summary="Liveness: the process serves requests", tags=["probes"],
               responses={200: inline_serializer(name="Liveness", fields={"status": serializers.CharField()})})
@api_view(["GET"])
@authentication_classes([])
@permission_classes([AllowAny])
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


@extend_schema(operation_id="readyz", summary="Readiness: every database alias, NATS and the broker answer",
               tags=["probes"],
               responses={200: OpenApiResponse(_READINESS, description="Ready."),
                          503: OpenApiResponse(_READINESS, description="Not ready: see which check failed.")})
@api_view(["GET"])
@authentication_classes([])
@permission_classes([AllowAny])
def readyz(request):
    """200 when every database alias, NATS and the Celery broker answer; 503 (with details) otherwise."""
    checks = {"databases": _check_databases(), "nats": _check_nats(), "broker": _check_broker()}
    ready = (all(v == "ok" for v in checks["databases"].values())
             and checks["nats"].startswith("ok") and checks["broker"] == "ok")
    return JsonResponse({"status": "ready" if ready else "not ready", "checks": checks},
                        status=200 if ready else 503)
