"""Shared DRF pieces: strict input fields, pagination, throttles, permissions."""
from __future__ import annotations

from decimal import Decimal

from django.conf import settings
from rest_framework import authentication, exceptions, permissions, serializers
from rest_framework.pagination import LimitOffsetPagination
from rest_framework.throttling import UserRateThrottle

from a4co import clock
from a4co.money import MoneyError, parse_amount

_validators: dict[type, serializers.Serializer] = {}


def input_validate(serializer_class: type[serializers.Serializer], data):
    """`serializer_class(data=data)`'s validated_data, or the ValidationError that
    `.is_valid(raise_exception=True)` raises (same detail: {field: [messages]}).

    For input serializers on hot paths: one instance per class is kept and reused, because
    building a serializer deep-copies and binds every declared field (most of the CPU of
    validating a small body). Only for serializers whose fields and validate methods keep no
    state between calls and need no context.
    """
    validator = _validators.get(serializer_class)
    if validator is None:
        validator = _validators.setdefault(serializer_class, serializer_class())
        validator.fields  # noqa: B018 - build and bind the fields once, before any thread shares them
    return validator.run_validation(data)


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
    """`limit` defaults to API_PAGE_SIZE_DEFAULT and is capped at API_PAGE_SIZE_MAX."""

    default_limit = settings.API_PAGE_SIZE_DEFAULT
    max_limit = settings.API_PAGE_SIZE_MAX
    # PostgreSQL's OFFSET is a bigint: a larger one would fail the query (a 500); past the end is just empty.
    max_offset = 2**62

    def get_offset(self, request) -> int:
        return min(super().get_offset(request), self.max_offset)


class SettingRateThrottle(UserRateThrottle):
    """A per-API-user rate read from the setting named by `rate_setting` at each request, so it can
    change without a restart in tests; an empty setting means no limit. Counts live in the default
    cache (Redis in production, so every web worker shares them)."""

    rate_setting = ""

    def get_rate(self) -> str | None:
        return getattr(settings, self.rate_setting, "") or None


class OrderCreateThrottle(SettingRateThrottle):
    scope = "order_create"
    rate_setting = "ORDER_CREATE_THROTTLE_RATE"


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


class TokenAuthentication(authentication.TokenAuthentication):
    """DRF's token authentication with the token + user lookup as one prebuilt SELECT, whose
    answer each web process keeps for API_TOKEN_CACHE_SECONDS.

    Same contract as DRF's (401 for an unknown token or an inactive user), with one delay: a
    deleted token, or a user deactivated or changed (is_staff) meanwhile, is seen by a process
    at most API_TOKEN_CACHE_SECONDS after its last lookup of that token (0: every request looks
    up). Unknown tokens are never kept: each one costs its lookup. The ORM's
    select_related().get() cost more CPU per request than the query itself, and the lookup was
    a tenth of the CPU of an order POST.
    """

    _known: dict[str, tuple[float, object, object]] = {}  # key -> (looked up at, user, token)
    KNOWN_MAX = 10_000

    def authenticate_credentials(self, key):
        ttl = settings.API_TOKEN_CACHE_SECONDS
        now = clock.now().timestamp()
        if ttl > 0:
            known = self._known.get(key)
            if known is not None and 0 <= now - known[0] < ttl:
                return known[1], known[2]
        user, token = self._lookup(key)
        if ttl > 0:
            if len(self._known) >= self.KNOWN_MAX:
                self._known.clear()  # many tokens in a few seconds: start over rather than grow
            self._known[key] = (now, user, token)
        return user, token

    @staticmethod
    def _lookup(key):
        from django.contrib.auth import get_user_model
        from django.db import router
        from rest_framework.authtoken.models import Token

        from a4co.db import model_pair_select

        user_model = get_user_model()
        pair = model_pair_select(Token, user_model, router.db_for_read(Token),
                                 on=f"s.{user_model._meta.pk.column} = f.{Token._meta.get_field('user').column}",
                                 where="f.key = %s", params=[key])
        if pair is None:
            raise exceptions.AuthenticationFailed("Invalid token.")
        token, token.user = pair
        if not token.user.is_active:
            raise exceptions.AuthenticationFailed("User inactive or deleted.")
        return token.user, token
