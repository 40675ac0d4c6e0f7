"""The Order Service's public contract: the orders.* events (A4CO subjects and camelCase fields)."""
from __future__ import annotations

import dataclasses
import datetime as dt
from decimal import Decimal

from infra.messages import Message


@dataclasses.dataclass(frozen=True)
class OrderCreated(Message):
    """An order was accepted: the saga's first step (inventory reserves its lines).

    `items`: [{productId, quantity, unitPrice}]; `reservationTtlSeconds`: the order's own reservation
    TTL (null: the inventory default)."""

    SUBJECT = "orders.created"
    order_id: str
    customer_id: str
    items: tuple[dict, ...]  # [{"productId": str, "quantity": int, "unitPrice": "12.50"}]
    total_amount: Decimal
    currency: str = "EUR"
    reservation_ttl_seconds: int | None = None


@dataclasses.dataclass(frozen=True)
class OrderConfirmed(Message):
    """The order is paid and final; inventory commits its reservation (stock leaves for good)."""

    SUBJECT = "orders.confirmed"
    order_id: str
    payment_id: str
    timestamp: dt.datetime


@dataclasses.dataclass(frozen=True)
class OrderCancelled(Message):
    """The order was cancelled and compensated (stock released; money never kept). `reason` says why
    (it contains "payment" when the card was declined)."""

    SUBJECT = "orders.cancelled"
    order_id: str
    reason: str
    timestamp: dt.datetime


@dataclasses.dataclass(frozen=True)
class OrderFailed(Message):
    """The order could not be fulfilled (out of stock); nothing was reserved or charged.
    `failureStage` names the step that failed ("inventory")."""

    SUBJECT = "orders.failed"
    order_id: str
    reason: str
    failure_stage: str
