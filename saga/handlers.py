"""The orchestrator's message handlers: participant events -> `saga_apply`.

Each runs inside the consumer runner's transaction on `orders`, after the inbox recorded the
event id; a duplicate never reaches here, and a late or out-of-order event is recorded by the
engine as ignored.
"""
from __future__ import annotations

import uuid

from infra.messages import MalformedMessageError
from inventory.messages import InventoryOutOfStock, InventoryReleased, InventoryReserved
from payments.messages import PaymentCancelled, PaymentFailed, PaymentRefunded, PaymentSucceeded
from saga.definition import Trigger
from saga.services import saga_apply, sagas_batch_locked


def _order_id(message) -> str:
    """The saga's orders have UUIDs: an event with any other orderId is malformed (poison, never retried)."""
    try:
        return str(uuid.UUID(message.order_id))
    except ValueError:
        raise MalformedMessageError(f"{message.SUBJECT}: orderId {message.order_id[:80]!r} is not an order id") \
            from None


def handle_inventory_reserved(message: InventoryReserved) -> None:
    saga_apply(order_id=_order_id(message), trigger=Trigger.INVENTORY_RESERVED,
               reservation_id=message.reservation_id,
               detail={"reservationId": message.reservation_id, "expiresAt": message.expires_at.isoformat()})


def handle_inventory_out_of_stock(message: InventoryOutOfStock) -> None:
    short = ", ".join(f"{item.get('productId')} (requested {item.get('requested')}, "
                      f"available {item.get('available')})" for item in message.unavailable_items)
    saga_apply(order_id=_order_id(message), trigger=Trigger.INVENTORY_OUT_OF_STOCK,
               reason=f"out of stock: {short}" if short else "out of stock",
               detail={"unavailableItems": list(message.unavailable_items)})


def handle_inventory_released(message: InventoryReleased) -> None:
    saga_apply(order_id=_order_id(message), trigger=Trigger.INVENTORY_RELEASED, reason=message.reason,
               detail={"reservationId": message.reservation_id})


def handle_payments_succeeded(message: PaymentSucceeded) -> None:
    saga_apply(order_id=_order_id(message), trigger=Trigger.PAYMENT_SUCCEEDED, payment_id=message.payment_id,
               detail={"paymentId": message.payment_id, "amount": str(message.amount),
                       "stripePaymentIntentId": message.stripe_payment_intent_id})


def handle_payments_failed(message: PaymentFailed) -> None:
    saga_apply(order_id=_order_id(message), trigger=Trigger.PAYMENT_FAILED, reason=message.reason,
               payment_id=message.payment_id or "", detail={"paymentId": message.payment_id})


def handle_payments_cancelled(message: PaymentCancelled) -> None:
    saga_apply(order_id=_order_id(message), trigger=Trigger.PAYMENT_CANCELLED, reason=message.reason,
               payment_id=message.payment_id or "", detail={"paymentId": message.payment_id})


def handle_payments_refunded(message: PaymentRefunded) -> None:
    saga_apply(order_id=_order_id(message), trigger=Trigger.PAYMENT_REFUNDED, reason=message.reason,
               detail={"paymentId": message.payment_id, "amount": str(message.amount),
                       "stripeRefundId": message.stripe_refund_id})


def batch_rows_locked(messages: list):
    """Before a consumer batch's handlers run (infra.consumers.deliveries_handle_together): lock
    the batch's sagas in order-id order and keep them for its handlers (a context manager)."""
    return sagas_batch_locked([message.order_id for message in messages])


HANDLERS = {
    "inventory.reserved": handle_inventory_reserved,
    "inventory.out_of_stock": handle_inventory_out_of_stock,
    "inventory.released": handle_inventory_released,
    "payments.succeeded": handle_payments_succeeded,
    "payments.failed": handle_payments_failed,
    "payments.cancelled": handle_payments_cancelled,
    "payments.refunded": handle_payments_refunded,
}
