"""Refuse to start with timeouts that contradict each other."""
from __future__ import annotations

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured


def timeouts_validate(*, reservation_ttl: int, payment_timeout: int, saga_timeout: int) -> None:
    """Raise ImproperlyConfigured unless 0 < payment timeout < reservation TTL, and saga timeout > 0.

    A reservation that can expire while a payment is still allowed to run would let a customer
    be charged for stock that went back on the shelf.
    """
    if payment_timeout <= 0 or saga_timeout <= 0 or reservation_ttl <= 0:
        raise ImproperlyConfigured("SAGA_TIMEOUT_SECONDS, PAYMENT_TIMEOUT_SECONDS and "
                                   "RESERVATION_TTL_SECONDS must all be positive")
    if reservation_ttl <= payment_timeout:
        raise ImproperlyConfigured(
            f"RESERVATION_TTL_SECONDS ({reservation_ttl}) must be longer than "
            f"PAYMENT_TIMEOUT_SECONDS ({payment_timeout}): a reservation could expire while its "
            f"payment is still running.")


timeouts_validate(reservation_ttl=settings.RESERVATION_TTL_SECONDS,
                  payment_timeout=settings.PAYMENT_TIMEOUT_SECONDS,
                  saga_timeout=settings.SAGA_TIMEOUT_SECONDS)
