"""Inventory writes: reserve (all lines or none), release, commit, expire, set stock.

Every function runs in a transaction on the `inventory` database (the message handlers run in
the consumer's transaction; the others open their own). Product rows are locked with
`SELECT ... FOR UPDATE` in product-id order, after the reservation row when there is one (a
consumer batch takes all its reservations, then all its products: `stock_locks_take`), so
concurrent orders serialise on the stock they share and do not deadlock; database check
constraints make a negative quantity impossible (the transaction fails instead of overselling).
"""
from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import logging
import threading
from collections import Counter
from collections.abc import Iterator

from django.conf import settings
from django.db import transaction

from a4co import clock
from a4co.db import (
    mark_saved,
    model_pairs_select,
    models_select,
    sql_array,
    sql_insert,
    sql_update,
    statements_run_together,
)
from a4co.errors import ApplicationError
from infra.outbox import outbox_append
from inventory.messages import InventoryOutOfStock, InventoryReleased, InventoryReserved
from inventory.models import OutboxMessage, Product, Reservation, ReservationItem

log = logging.getLogger(__name__)
DB = "inventory"


class InvalidStockError(ApplicationError):
    pass


@dataclasses.dataclass(frozen=True)
class ReserveLine:
    product_id: str
    quantity: int


def _requested(lines: list[ReserveLine]) -> dict[str, int]:
    totals: Counter[str] = Counter()
    for line in lines:
        totals[line.product_id] += line.quantity
    return dict(sorted(totals.items()))


@dataclasses.dataclass
class _BatchRows:
    """Rows a consumer batch locked up front (stock_batch_locked), for its handlers to use instead
    of selecting them again. The handlers change these very instances before they write them, so
    a later message of the batch sees what an earlier one did."""
    reservations: dict[str, Reservation | None]   # by order id; None: no reservation when locked
    items: dict[object, list[ReservationItem]]    # by reservation id, in id order
    products: dict[str, Product]                  # by product id
    product_ids: set[str]                         # asked for: one missing from `products` does not exist


class _Batch(threading.local):
    rows: _BatchRows | None = None


_batch = _Batch()


def _locked_products(product_ids) -> dict[str, Product]:
    wanted = sorted(set(product_ids))
    rows = _batch.rows
    if rows is not None and rows.product_ids.issuperset(wanted):
        return {pid: rows.products[pid] for pid in wanted if pid in rows.products}
    return {p.product_id: p for p in models_select(
        Product, DB, "product_id = ANY(%s::text[])", [sql_array(wanted)], tail="ORDER BY product_id FOR UPDATE")}


def _reservation_locked(order_id: str) -> Reservation | None:
    rows = _batch.rows
    if rows is not None and order_id in rows.reservations:
        return rows.reservations[order_id]
    found = models_select(Reservation, DB, "order_id = %s", [order_id], tail="FOR UPDATE")
    return found[0] if found else None


def _batch_keep(reservation: Reservation, items: list[ReservationItem] | None = None) -> None:
    """A reservation written in a batch's transaction: later messages of the batch find it."""
    rows = _batch.rows
    if rows is not None:
        rows.reservations[reservation.order_id] = reservation
        if items is not None:
            rows.items[reservation.id] = items


def stock_locks_take(*, order_ids, product_ids) -> _BatchRows:
    """Lock, in this module's order, the reservations of `order_ids` (order-id order), then the
    products of `product_ids` and of those reservations' lines (product-id order); returns the
    rows (and the reservations' lines) as they are now.

    For a consumer batch (several messages in one transaction): taking every lock the batch will
    need up front, in the same order as a single reserve/release/commit takes its own, keeps
    batches and single transactions from deadlocking on the shared product rows.
    """
    order_ids = sorted(set(order_ids))
    reservations = models_select(Reservation, DB, "order_id = ANY(%s::text[])", [sql_array(order_ids)],
                                 tail="ORDER BY order_id FOR UPDATE")
    reservation_ids = [reservation.id for reservation in reservations]
    wanted = sorted(set(product_ids))
    products = models_select(
        Product, DB, f"product_id = ANY(%s::text[]) OR product_id IN (SELECT product_id"
        f" FROM {ReservationItem._meta.db_table} WHERE reservation_id = ANY(%s::text::uuid[]))",
        [sql_array(wanted), sql_array(reservation_ids)], tail="ORDER BY product_id FOR UPDATE")
    items: dict[object, list[ReservationItem]] = {reservation_id: [] for reservation_id in reservation_ids}
    if reservation_ids:
        for item in models_select(ReservationItem, DB, "reservation_id = ANY(%s::text::uuid[])",
                                  [sql_array(reservation_ids)], tail="ORDER BY id"):
            items[item.reservation_id].append(item)
    by_order: dict[str, Reservation | None] = dict.fromkeys(order_ids)
    by_order.update((reservation.order_id, reservation) for reservation in reservations)
    return _BatchRows(reservations=by_order, items=items, products={p.product_id: p for p in products},
                      product_ids={*wanted, *(item.product_id for lines in items.values() for item in lines)})


@contextlib.contextmanager
def stock_batch_locked(*, order_ids, product_ids) -> Iterator[None]:
    """Inside a consumer batch's transaction: stock_locks_take, and until the block exits the
    reserve/release/commit functions of this thread use those locked rows instead of selecting
    them again (a batch of N orders costs three SELECTs, not up to 3N). If the transaction rolls
    back, the rows kept here are dropped with it; nothing outlives the block."""
    _batch.rows = None
    _batch.rows = stock_locks_take(order_ids=order_ids, product_ids=product_ids)
    try:
        yield
    finally:
        _batch.rows = None


def _reservation_items(reservation: Reservation) -> list[ReservationItem]:
    rows = _batch.rows
    if rows is not None and reservation.id in rows.items:
        return rows.items[reservation.id]
    return models_select(ReservationItem, DB, "reservation_id = %s", [reservation.id], tail="ORDER BY id")


def _reservation_items_products_locked(reservation: Reservation) -> tuple[list[ReservationItem], dict[str, Product]]:
    """The reservation's lines and their products, the products locked in product-id order: one
    round trip instead of two (items, then products). Raises RuntimeError if a line's product row
    is missing (nothing is written; the message is retried and then dead-lettered for ops)."""
    rows = _batch.rows
    if rows is not None and reservation.id in rows.items:
        items = rows.items[reservation.id]
        missing = [item.product_id for item in items if item.product_id not in rows.products]
        if missing:
            raise RuntimeError(f"reservation {reservation.id}: a line's product row is missing")
        return items, {item.product_id: rows.products[item.product_id]
                       for item in sorted(items, key=lambda item: item.product_id)}
    rows = model_pairs_select(
        ReservationItem, Product, DB, on="s.product_id = f.product_id", where="f.reservation_id = %s",
        params=[reservation.id, reservation.id], tail="ORDER BY s.product_id, f.id FOR UPDATE OF s",
        extra=f"(SELECT count(*) FROM {ReservationItem._meta.db_table} WHERE reservation_id = %s)")
    # The count's parameter comes first in the text: the extra column precedes WHERE.
    if rows and rows[0][2] != len(rows):
        raise RuntimeError(f"reservation {reservation.id}: a line's product row is missing")
    items = sorted((item for item, _product, _count in rows), key=lambda item: item.id)
    return items, {product.product_id: product for _item, product, _count in rows}


def _products_sql(products: dict[str, Product], now: dt.datetime) -> tuple[str, list]:
    """The statement that stores the quantities of already locked `products` (all in one).

    Hot path (every reserve, release and commit): one UPDATE ... FROM unnest instead of the ORM's
    bulk_update, whose CASE WHEN expression building cost more CPU than the database work. The
    check constraints still refuse a negative quantity (the transaction fails, nothing oversold).
    """
    rows = list(products.values())
    for product in rows:
        product.updated_at = now
    return (f"UPDATE {Product._meta.db_table} AS p SET available_quantity = v.available,"
            " reserved_quantity = v.reserved, sold_quantity = v.sold, updated_at = %s"
            " FROM unnest(%s::text[], %s::text::int[], %s::text::int[], %s::text::int[])"
            " AS v(id, available, reserved, sold)"
            " WHERE p.product_id = v.id",
            [now, sql_array(p.product_id for p in rows), sql_array(p.available_quantity for p in rows),
             sql_array(p.reserved_quantity for p in rows), sql_array(p.sold_quantity for p in rows)])


def _reservation_announce(reservation: Reservation, items: list[ReservationItem] | None = None) -> None:
    """(Re-)emit the event that describes the reservation's current state."""
    if reservation.status in (Reservation.Status.ACTIVE, Reservation.Status.COMMITTED):
        outbox_append(OutboxMessage, InventoryReserved(
            order_id=reservation.order_id, reservation_id=str(reservation.id),
            items=tuple({"productId": i.product_id, "quantity": i.quantity}
                        for i in (_reservation_items(reservation) if items is None else items)),
            expires_at=reservation.expires_at), aggregate_id=reservation.order_id)
    else:
        outbox_append(OutboxMessage, InventoryReleased(
            order_id=reservation.order_id, reservation_id=str(reservation.id),
            reason=reservation.release_reason or reservation.status.lower()), aggregate_id=reservation.order_id)


def stock_reserve(*, order_id: str, lines: list[ReserveLine], ttl_seconds: int | None = None) -> Reservation | None:
    """Reserve every line of the order, or none of them. Emits inventory.reserved or .out_of_stock.

    Idempotent per order: if the order already has a reservation (or was released before this
    request arrived), nothing is taken again and the existing outcome is announced again.
    Unknown products count as out of stock (available 0).
    """
    existing = _reservation_locked(order_id)
    if existing is not None:
        _reservation_announce(existing)
        return existing
    requested = _requested(lines)
    products = _locked_products(requested)
    unavailable = [
        {"productId": pid, "requested": qty,
         "available": products[pid].available_quantity if pid in products else 0}
        for pid, qty in requested.items()
        if pid not in products or products[pid].available_quantity < qty
    ]
    if unavailable or not requested:
        outbox_append(OutboxMessage, InventoryOutOfStock(order_id=order_id, unavailable_items=tuple(unavailable)),
                      aggregate_id=order_id)
        return None
    now = clock.now()
    for pid, qty in requested.items():
        product = products[pid]
        product.available_quantity -= qty
        product.reserved_quantity += qty
    ttl = ttl_seconds or settings.RESERVATION_TTL_SECONDS
    reservation = Reservation(order_id=order_id, expires_at=now + dt.timedelta(seconds=ttl), created_at=now,
                              updated_at=now)
    items = [ReservationItem(reservation=reservation, product_id=pid, quantity=qty) for pid, qty in requested.items()]
    # Announced first so that, in a message handler, the event goes out in the same round trip as
    # the stock, the reservation and its lines (a4co.db.writes_deferred).
    _reservation_announce(reservation, items)
    statements_run_together(DB, [_products_sql(products, now), sql_insert([reservation], DB), sql_insert(items, DB)])
    mark_saved(DB, reservation, *items)
    _batch_keep(reservation, items)
    return reservation


def _stock_return(reservation: Reservation, now: dt.datetime, *, status: str, reason: str) -> None:
    """Give the reservation's stock back and mark it `status` (one round trip for the writes)."""
    items, products = _reservation_items_products_locked(reservation)
    for item in items:
        product = products[item.product_id]
        product.reserved_quantity -= item.quantity
        product.available_quantity += item.quantity
    reservation.status, reservation.release_reason, reservation.updated_at = status, reason[:500], now
    update = sql_update(reservation, ["status", "release_reason", "updated_at"], DB)
    statements_run_together(DB, [_products_sql(products, now), update] if products else [update])


def stock_release(*, order_id: str, reason: str, answer: bool = True) -> Reservation | None:
    """Give back what the order holds. Emits inventory.released when stock went back, and, with
    `answer` (a release request expects an answer), also when it had already gone back.

    A request for an order with no reservation yet leaves a RELEASED tombstone, so an
    orders.created that arrives later reserves nothing. A COMMITTED reservation (the order was
    confirmed) is never released: that is logged and nothing is emitted.
    """
    now = clock.now()
    reservation = _reservation_locked(order_id)
    changed = reservation is None or reservation.status == Reservation.Status.ACTIVE
    if reservation is None:
        reservation = Reservation.objects.using(DB).create(
            order_id=order_id, status=Reservation.Status.RELEASED, expires_at=now,
            release_reason=f"released before any stock was reserved: {reason}"[:500],
            created_at=now, updated_at=now)
        _batch_keep(reservation, [])
    elif reservation.status == Reservation.Status.ACTIVE:
        _stock_return(reservation, now, status=Reservation.Status.RELEASED, reason=reason)
    elif reservation.status == Reservation.Status.COMMITTED:
        log.error("release refused: reservation already committed orderId=%s reservationId=%s",
                  order_id, reservation.id)
        return reservation
    if changed or answer:
        _reservation_announce(reservation)
    return reservation


def stock_commit(*, order_id: str) -> Reservation | None:
    """The order is confirmed: its reserved stock leaves for good (reserved -> sold).

    If the reservation had expired or been released meanwhile, the stock is taken again from
    what is available when there is enough; otherwise the shortfall is logged as an error for
    ops (the order was confirmed with money taken).
    """
    now = clock.now()
    reservation = _reservation_locked(order_id)
    if reservation is None or reservation.status == Reservation.Status.COMMITTED:
        if reservation is None:
            log.error("commit for an order with no reservation orderId=%s", order_id)
        return reservation
    items, products = _reservation_items_products_locked(reservation)
    was_active = reservation.status == Reservation.Status.ACTIVE
    if not was_active:
        short = [i.product_id for i in items if products[i.product_id].available_quantity < i.quantity]
        if short:
            log.error("confirmed order lost its stock orderId=%s reservation=%s short=%s",
                      order_id, reservation.status, short)
            return reservation
    for item in items:
        product = products[item.product_id]
        if was_active:
            product.reserved_quantity -= item.quantity
        else:
            product.available_quantity -= item.quantity
        product.sold_quantity += item.quantity
    reservation.status = Reservation.Status.COMMITTED
    reservation.updated_at = now
    statements_run_together(DB, [_products_sql(products, now), sql_update(reservation, ["status", "updated_at"], DB)])
    return reservation


def reservations_expire_sweep(*, limit: int = 200) -> int:
    """Expire ACTIVE reservations past their TTL (stock back, inventory.released). Returns how many."""
    now = clock.now()
    expired = 0
    with transaction.atomic(using=DB, durable=True):
        due = list(Reservation.objects.using(DB).select_for_update(skip_locked=True)
                   .filter(status=Reservation.Status.ACTIVE, expires_at__lte=now)
                   .order_by("expires_at")[:limit])
        # All their products at once, in product order: one reservation's after another's would
        # not be a global order, and a concurrent reserve or batch could deadlock with the sweep.
        # The lines and products read for that serve the returns below (no second read).
        with stock_batch_locked(order_ids=[reservation.order_id for reservation in due], product_ids=[]):
            for reservation in due:
                _stock_return(reservation, now, status=Reservation.Status.EXPIRED, reason="reservation expired")
                _reservation_announce(reservation)
                log.info("reservation expired orderId=%s reservationId=%s", reservation.order_id, reservation.id)
                expired += 1
    return expired


def product_stock_set(*, product_id: str, name: str, available_quantity: int) -> tuple[Product, bool]:
    """Set a product's available stock (creating the product if needed). Returns (product, created).

    `stocked_quantity` moves by the same difference, so available + reserved + sold == stocked.
    """
    if available_quantity < 0:
        raise InvalidStockError("availableQuantity must not be negative",
                                fields={"availableQuantity": "must not be negative"})
    now = clock.now()
    with transaction.atomic(using=DB, durable=True):
        product = Product.objects.using(DB).select_for_update().filter(product_id=product_id).first()
        created = product is None
        if created:
            product = Product(product_id=product_id)
        product.stocked_quantity += available_quantity - product.available_quantity
        product.available_quantity = available_quantity
        product.name = name
        product.updated_at = now
        product.save(using=DB)
    return product, created
