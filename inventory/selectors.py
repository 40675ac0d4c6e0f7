"""Inventory reads."""
from __future__ import annotations

import uuid

from inventory.models import Product, Reservation

DB = "inventory"


def product_get(*, product_id: str) -> Product | None:
    return Product.objects.using(DB).filter(product_id=product_id).first()


def reservation_get(*, reservation_id: str) -> Reservation | None:
    try:
        uuid.UUID(str(reservation_id))
    except ValueError:
        return None
    return Reservation.objects.using(DB).prefetch_related("items").filter(id=reservation_id).first()


def reservation_get_for_order(*, order_id: str) -> Reservation | None:
    return Reservation.objects.using(DB).prefetch_related("items").filter(order_id=order_id).first()
