"""The Order Service's public contract: the orders.* events (A4CO subjects and camelCase fields)."""
from __future__ import annotations

import dataclasses
import datetime as dt
from decimal import Decimal

from infra.messages import Message


@dataclasses.dataclass(frozen=True)
class OrderCreated(Message):
    """An order was accepted; the saga's first step (inventory reserves its lines)."""

    SUBJECT = "orders.created"
    order_id: str
    customer_id: str
    items: tuple[dict, ...]  # [{"productId": str, "quantity": int, "unitPrice": "12.50"}]
    total_amount: Decimal
    currency: str = "EUR"
    reservation_ttl_seconds: int | None = None


@dataclasses.dataclass(frozen=True)
class OrderConfirmed(Message):
    SUBJECT = "orders.confirmed"
    order_id: str
    payment_id: str
    timestamp: dt.datetime


@dataclasses.dataclass(frozen=True)
class OrderCancelled(Message):
    SUBJECT = "orders.cancelled"
    order_id: str
    reason: str
    timestamp: dt.datetime


@dataclasses.dataclass(frozen=True)
class OrderFailed(Message):
    SUBJECT = "orders.failed"
    order_id: str
    reason: str
    failure_stage: str
