"""Order reads."""
from __future__ import annotations

import uuid

from django.db.models import QuerySet

from orders.models import Order

DB = "orders"


def _valid_uuid(value: str) -> bool:
    try:
        uuid.UUID(str(value))
    except ValueError:
        return False
    return True


def order_get(*, order_id: str, owner_id: int | None = None) -> Order | None:
    """The order with its items, or None (also for a malformed id or someone else's order)."""
    if not _valid_uuid(order_id):
        return None
    orders = Order.objects.using(DB).prefetch_related("items").filter(id=order_id)
    if owner_id is not None:
        orders = orders.filter(owner_id=owner_id)
    return orders.first()


def order_list(*, owner_id: int | None = None, status: str | None = None,
               customer_id: str | None = None) -> QuerySet[Order]:
    orders = Order.objects.using(DB).prefetch_related("items").order_by("-created_at", "id")
    if owner_id is not None:
        orders = orders.filter(owner_id=owner_id)
    if status:
        orders = orders.filter(status=status)
    if customer_id:
        orders = orders.filter(customer_id=customer_id)
    return orders
