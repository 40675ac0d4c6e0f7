"""Order writes: place an order (and start its saga), cancel it.

Both run in one durable transaction on the Order Service's database, so the order, its saga
and the outgoing event commit together or not at all.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
from decimal import Decimal

from django.conf import settings
from django.db import IntegrityError, transaction

from a4co import clock
from a4co.db import writes_deferred
from a4co.errors import ApplicationError, ConflictError, NotFoundError
from orders.models import Order, OrderItem
from saga.definition import Trigger
from saga.services import saga_apply, saga_start

DB = "orders"


class OrderNotCancellableError(ConflictError):
    code = "order_confirmed"


class IdempotencyKeyReusedError(ConflictError):
    code = "idempotency_key_reused"


class OrderValidationError(ApplicationError):
    code = "invalid"


@dataclasses.dataclass(frozen=True)
class OrderLine:
    product_id: str
    quantity: int
    unit_price: Decimal


@dataclasses.dataclass(frozen=True)
class PlaceResult:
    order: Order
    created: bool  # False when an Idempotency-Key replay returned an existing order
    items: list[OrderItem] | None = None  # the lines just stored (created orders only)


def _fingerprint(**request) -> str:
    canonical = json.dumps(request, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def order_place(*, owner_id: int, customer_id: str, lines: list[OrderLine], currency: str,
                payment_method: str, reservation_ttl_seconds: int | None = None,
                idempotency_key: str | None = None) -> PlaceResult:
    """Accept an order (PENDING), start its saga and emit orders.created, atomically.

    With an `idempotency_key`, a repeat by the same owner returns the first order
    (`created=False`); the same key with a different request raises IdempotencyKeyReusedError.
    """
    if not lines:
        raise OrderValidationError("an order needs at least one item", fields={"items": "must not be empty"})
    total = sum((line.unit_price * line.quantity for line in lines), Decimal("0"))
    ttl = reservation_ttl_seconds or settings.RESERVATION_TTL_SECONDS
    fingerprint = _fingerprint(customer_id=customer_id, currency=currency, payment_method=payment_method,
                               ttl=ttl, lines=[dataclasses.astuple(line) for line in lines])
    if idempotency_key:
        existing = _order_for_key(owner_id, idempotency_key, fingerprint)
        if existing is not None:
            return PlaceResult(order=existing, created=False)
    now = clock.now()
    try:
        with transaction.atomic(using=DB, durable=True), writes_deferred(DB):
            order = Order(owner_id=owner_id, customer_id=customer_id, currency=currency, total_amount=total,
                          payment_method=payment_method, reservation_ttl_seconds=ttl,
                          idempotency_key=idempotency_key or None, request_fingerprint=fingerprint,
                          created_at=now, updated_at=now)
            items = [OrderItem(order=order, product_id=line.product_id, quantity=line.quantity,
                               unit_price=line.unit_price) for line in lines]
            # The order, its lines, the saga, its first step and orders.created: one statement.
            saga_start(order=order, items=items, order_unsaved=True)
    except IntegrityError:
        # A concurrent request with the same Idempotency-Key won the race.
        if idempotency_key:
            existing = _order_for_key(owner_id, idempotency_key, fingerprint)
            if existing is not None:
                return PlaceResult(order=existing, created=False)
        raise
    return PlaceResult(order=order, created=True, items=items)


def _order_for_key(owner_id: int, key: str, fingerprint: str) -> Order | None:
    order = Order.objects.using(DB).filter(owner_id=owner_id, idempotency_key=key).first()
    if order is not None and order.request_fingerprint != fingerprint:
        raise IdempotencyKeyReusedError(
            "this Idempotency-Key was already used with a different request",
            fields={"Idempotency-Key": "already used with a different request body"})
    return order


@dataclasses.dataclass(frozen=True)
class CancelResult:
    order: Order
    accepted: bool  # True: compensation started or under way (202); False: already ended (200)


def order_cancel(*, order_id: str, reason: str, owner_id: int | None = None) -> CancelResult:
    """Ask for the order to be cancelled.

    PENDING: the saga compensates (stock back, money back) and the result is accepted (202).
    Already CANCELLED or FAILED: nothing changes (200). CONFIRMED: OrderNotCancellableError (409).
    `owner_id` restricts the lookup to that owner's orders (NotFoundError otherwise).
    """
    with transaction.atomic(using=DB, durable=True):
        lookup = Order.objects.using(DB).filter(id=order_id)
        if owner_id is not None:
            lookup = lookup.filter(owner_id=owner_id)
        if not lookup.exists():
            raise NotFoundError("order not found")
        result = saga_apply(order_id=order_id, trigger=Trigger.CANCEL, reason=reason)
        order = result.order
        if order.status == Order.Status.CONFIRMED:
            raise OrderNotCancellableError("the order is already confirmed and cannot be cancelled")
        return CancelResult(order=order, accepted=order.status == Order.Status.PENDING)
