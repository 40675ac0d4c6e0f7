"""The Inventory Service's public contract: events it emits and the command it accepts."""
from __future__ import annotations

import dataclasses
import datetime as dt

from infra.messages import Message


@dataclasses.dataclass(frozen=True)
class InventoryReserved(Message):
    """Every line of the order is reserved until `expiresAt`. `items`: [{productId, quantity}]."""

    SUBJECT = "inventory.reserved"
    order_id: str
    reservation_id: str
    items: tuple[dict, ...]  # [{"productId": str, "quantity": int}]
    expires_at: dt.datetime


@dataclasses.dataclass(frozen=True)
class InventoryOutOfStock(Message):
    """Nothing was reserved: at least one line is short. `unavailableItems`:
    [{productId, requested, available}] (unknown products have available 0)."""

    SUBJECT = "inventory.out_of_stock"
    order_id: str
    unavailable_items: tuple[dict, ...]  # [{"productId", "requested", "available"}]


@dataclasses.dataclass(frozen=True)
class InventoryReleased(Message):
    """Stock of the order's reservation is back on the shelf (released, expired, or never taken)."""

    SUBJECT = "inventory.released"
    order_id: str
    reservation_id: str
    reason: str


@dataclasses.dataclass(frozen=True)
class InventoryReleaseRequest(Message):
    """Command: give back whatever this order holds. Always answered by inventory.released."""

    SUBJECT = "inventory.release_request"
    KIND = "command"
    order_id: str
    reason: str
    reservation_id: str | None = None
