"""Inventory's message handlers (run in the consumer's transaction on `inventory`)."""
from __future__ import annotations

from infra.messages import MalformedMessageError
from inventory.messages import InventoryReleaseRequest
from inventory.services import ReserveLine, stock_batch_locked, stock_commit, stock_release, stock_reserve
from orders.messages import OrderCancelled, OrderConfirmed, OrderCreated


def handle_orders_created(message: OrderCreated) -> None:
    lines = []
    for item in message.items:
        product_id, quantity = item.get("productId"), item.get("quantity")
        if not isinstance(product_id, str) or not product_id or isinstance(quantity, bool) \
                or not isinstance(quantity, int) or quantity < 1:
            raise MalformedMessageError(f"orders.created: bad item {item!r}")
        lines.append(ReserveLine(product_id=product_id, quantity=quantity))
    stock_reserve(order_id=message.order_id, lines=lines, ttl_seconds=message.reservation_ttl_seconds)


def handle_orders_confirmed(message: OrderConfirmed) -> None:
    stock_commit(order_id=message.order_id)


def handle_orders_cancelled(message: OrderCancelled) -> None:
    # Informational for inventory: the saga released the stock already, unless something
    # (e.g. an ops action) cancelled the order without compensation; no answer is expected.
    stock_release(order_id=message.order_id, reason=message.reason, answer=False)


def handle_inventory_release_request(message: InventoryReleaseRequest) -> None:
    stock_release(order_id=message.order_id, reason=message.reason)


def batch_rows_locked(messages: list):
    """Before a consumer batch's handlers run (infra.consumers.deliveries_handle_together): lock
    every reservation and product the batch touches, in the order single handlers lock them, and
    keep those rows for the batch's handlers (a context manager: see stock_batch_locked)."""
    product_ids = [item.get("productId") for message in messages if isinstance(message, OrderCreated)
                   for item in message.items if isinstance(item.get("productId"), str)]
    return stock_batch_locked(order_ids=[message.order_id for message in messages], product_ids=product_ids)


HANDLERS = {
    "orders.created": handle_orders_created,
    "orders.confirmed": handle_orders_confirmed,
    "orders.cancelled": handle_orders_cancelled,
    "inventory.release_request": handle_inventory_release_request,
}
