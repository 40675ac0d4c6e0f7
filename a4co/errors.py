"""Application errors and the DRF exception handler that turns them into HTTP answers.

Services raise `ApplicationError` subclasses (defined in the app that raises them); views
never translate errors by hand. Anything unexpected still becomes a 500 through DRF/Django,
logged with its traceback.
"""
from __future__ import annotations

from django.core.exceptions import ValidationError as DjangoValidationError
from django.http import Http404
from rest_framework import exceptions, status
from rest_framework.response import Response
from rest_framework.views import exception_handler


class ApplicationError(Exception):
    """A business error with an HTTP status and an optional field -> messages mapping."""

    status_code = status.HTTP_400_BAD_REQUEST
    code = "error"

    def __init__(self, message: str, *, fields: dict | None = None):
        super().__init__(message)
        self.message = message
        self.fields = fields or {}


class TransientError(RuntimeError):
    """A dependency is unreachable or answered "try later": the same work can succeed on a retry.

    The consumer runner retries such a failure in place for a while (without spending one of the
    message's deliveries) before it falls back to a normal redelivery.
    """


class NotFoundError(ApplicationError):
    status_code = status.HTTP_404_NOT_FOUND
    code = "not_found"


class ConflictError(ApplicationError):
    status_code = status.HTTP_409_CONFLICT
    code = "conflict"


def api_exception_handler(exc, context):
    """Error bodies are `{"detail": "...", "code": "...", <field>: [messages]...}`.

    Field errors keep DRF's shape (the camelCase field name as key) so a client sees which
    field was wrong; `detail` always carries a human sentence.
    """
    if isinstance(exc, ApplicationError):
        body = {"detail": exc.message, "code": exc.code}
        body.update({name: list(msgs) if isinstance(msgs, (list, tuple)) else [msgs]
                     for name, msgs in exc.fields.items()})
        return Response(body, status=exc.status_code)
    if isinstance(exc, DjangoValidationError):
        exc = exceptions.ValidationError(detail=exc.messages)
    if isinstance(exc, Http404):
        exc = exceptions.NotFound()
    response = exception_handler(exc, context)
    if response is None:
        return None
    if isinstance(exc, exceptions.ValidationError):
        data = response.data
        if isinstance(data, list):
            data = {"nonFieldErrors": data}
        body = {"detail": "Invalid input.", "code": "invalid"}
        body.update(data)
        response.data = body
    elif isinstance(response.data, dict) and "detail" in response.data:
        detail = response.data["detail"]
        response.data = {"detail": str(detail), "code": getattr(detail, "code", "error")}
    return response
