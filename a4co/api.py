"""Shared DRF pieces: strict input fields, pagination, permissions."""
from __future__ import annotations

from decimal import Decimal

from django.conf import settings
from rest_framework import permissions, serializers
from rest_framework.pagination import LimitOffsetPagination

from a4co.money import MoneyError, parse_amount


class StrictIntegerField(serializers.IntegerField):
    """A JSON integer: rejects booleans, floats like 1.5 and numeric strings."""

    default_error_messages = {"invalid": "A whole number (JSON integer) is required."}

    def to_internal_value(self, data):
        if isinstance(data, bool) or not isinstance(data, int):
            if isinstance(data, float) and data.is_integer():
                data = int(data)
            else:
                self.fail("invalid")
        return super().to_internal_value(data)


class MoneyField(serializers.Field):
    """A non-negative amount as a JSON number or decimal string with at most 2 decimals."""

    default_error_messages = {"invalid": "{message}.", "max_value": "Must be at most {max_value}."}

    def __init__(self, *, max_value: str | None = None, **kwargs):
        self.max_value = Decimal(max_value) if max_value else None
        super().__init__(**kwargs)

    def to_internal_value(self, data) -> Decimal:
        try:
            amount = parse_amount(data)
        except MoneyError as exc:
            self.fail("invalid", message=str(exc).capitalize())
        if self.max_value is not None and amount > self.max_value:
            self.fail("max_value", max_value=self.max_value)
        return amount

    def to_representation(self, value) -> str:
        return f"{value:.2f}"


class ApiPagination(LimitOffsetPagination):
    default_limit = settings.API_PAGE_SIZE_DEFAULT
    max_limit = settings.API_PAGE_SIZE_MAX


class IsStaff(permissions.BasePermission):
    message = "Staff only."

    def has_permission(self, request, view) -> bool:
        return bool(request.user and request.user.is_authenticated and request.user.is_staff)


class ReadAnyWriteStaff(permissions.BasePermission):
    """Authenticated users read; only staff write."""

    message = "Staff only."

    def has_permission(self, request, view) -> bool:
        if not (request.user and request.user.is_authenticated):
            return False
        return request.method in permissions.SAFE_METHODS or request.user.is_staff
