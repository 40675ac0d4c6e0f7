"""OpenAPI 3 description pieces (drf-spectacular) shared by the API modules: the error bodies of
a4co.errors.api_exception_handler, and how our custom fields look in the schema.

Schema only: nothing here validates or renders a request; the views behave the same without it.
"""
from __future__ import annotations

from drf_spectacular.extensions import OpenApiSerializerFieldExtension
from drf_spectacular.utils import OpenApiResponse, inline_serializer
from rest_framework import serializers


class ErrorSerializer(serializers.Serializer):
    """Every error body: a sentence and a machine-readable code."""

    detail = serializers.CharField(help_text="What went wrong, as a sentence.")
    code = serializers.CharField(help_text="Machine-readable: not_authenticated, authentication_failed, "
                                           "permission_denied, not_found, invalid, conflict codes, ...")


def validation_error(name: str, fields: list[str], *, nested: tuple[str, ...] = ()) -> OpenApiResponse:
    """400: `detail` and `code` ("invalid"), plus one key per invalid field with its messages.

    `nested` fields carry an object instead of a list (e.g. `items`: line index -> field -> messages).
    """
    keys = {
        field: (serializers.JSONField(required=False, help_text="Per line index: field name -> messages.")
                if field in nested else
                serializers.ListField(child=serializers.CharField(), required=False,
                                      help_text=f"Why `{field}` was rejected."))
        for field in [*fields, "nonFieldErrors"]
    }
    body = inline_serializer(name=name, fields={
        "detail": serializers.CharField(help_text='"Invalid input." or the business rule broken.'),
        "code": serializers.CharField(help_text='"invalid" (or the business error\'s code).'),
        **keys,
    })
    return OpenApiResponse(body, description="Invalid input: one key per rejected field, with its messages.")


UNAUTHENTICATED = OpenApiResponse(
    ErrorSerializer, description="No `Authorization: Token <key>` header, or an unknown token "
                                 "(code not_authenticated / authentication_failed).")
STAFF_ONLY = OpenApiResponse(ErrorSerializer, description="Staff only (code permission_denied).")


def not_found(what: str) -> OpenApiResponse:
    return OpenApiResponse(ErrorSerializer, description=f"{what} (code not_found).")


def conflict(what: str) -> OpenApiResponse:
    return OpenApiResponse(ErrorSerializer, description=what)


class MoneyFieldExtension(OpenApiSerializerFieldExtension):
    """a4co.api.MoneyField: a decimal string with 2 decimals out; a JSON number or such a string in."""

    target_class = "a4co.api.MoneyField"

    def map_serializer_field(self, auto_schema, direction):
        schema = {"type": "string", "format": "decimal", "pattern": r"^\d+(\.\d{1,2})?$", "example": "12.50"}
        if direction == "request":
            schema["description"] = "A non-negative amount with at most 2 decimals; a JSON number is accepted too."
        return schema
