"""The Payment Service's public contract: commands it accepts and events it emits."""
from __future__ import annotations

import dataclasses
import datetime as dt
from decimal import Decimal

from infra.messages import Message


@dataclasses.dataclass(frozen=True)
class PaymentProcessRequest(Message):
    """Command: charge `amount` for the order (at most once, whatever the redeliveries)."""

    SUBJECT = "payments.process_request"
    KIND = "command"
    order_id: str
    customer_id: str
    amount: Decimal
    currency: str = "EUR"
    payment_method: str = "pm_card_visa"


@dataclasses.dataclass(frozen=True)
class PaymentSucceeded(Message):
    """The order was charged `amount` (PaymentIntent `stripePaymentIntentId`)."""

    SUBJECT = "payments.succeeded"
    order_id: str
    payment_id: str
    amount: Decimal
    stripe_payment_intent_id: str
    currency: str = "EUR"


@dataclasses.dataclass(frozen=True)
class PaymentFailed(Message):
    """The charge was declined or refused for good; `reason` says why. Nothing was charged."""

    SUBJECT = "payments.failed"
    order_id: str
    reason: str
    timestamp: dt.datetime
    payment_id: str | None = None


@dataclasses.dataclass(frozen=True)
class PaymentCancelRequest(Message):
    """Command: the saga is compensating; make sure nothing is charged for the order. Cancels the
    PaymentIntent if it can still be cancelled, refunds it if it was charged, and blocks a charge
    that has not started yet. Answered by payments.cancelled or payments.refunded."""

    SUBJECT = "payments.cancel_request"
    KIND = "command"
    order_id: str
    reason: str


@dataclasses.dataclass(frozen=True)
class PaymentCancelled(Message):
    """Nothing is (or will be) charged for the order: the payment was cancelled, failed, or never started."""

    SUBJECT = "payments.cancelled"
    order_id: str
    reason: str
    payment_id: str | None = None


@dataclasses.dataclass(frozen=True)
class PaymentRefundRequest(Message):
    """Command: give back whatever was charged for the order (exactly once)."""

    SUBJECT = "payments.refund_request"
    KIND = "command"
    order_id: str
    reason: str


@dataclasses.dataclass(frozen=True)
class PaymentRefunded(Message):
    """The order's charge was refunded in full (a compensation, or a charge that arrived late)."""

    SUBJECT = "payments.refunded"
    order_id: str
    payment_id: str
    amount: Decimal
    reason: str
    stripe_refund_id: str | None = None
