"""Inventory services: all-or-nothing reservations, idempotency per order, release, commit,
expiry on the one clock, and no overselling under concurrent reservations."""
from __future__ import annotations

import datetime as dt
import threading

import pytest
from django.db import IntegrityError, connections, transaction

from inventory.models import OutboxMessage, Product, Reservation, ReservationItem
from inventory.services import (
    ReserveLine,
    product_stock_set,
    reservations_expire_sweep,
    stock_commit,
    stock_release,
    stock_reserve,
)
from tests.conftest import ALL_DATABASES
from tests.factories import ProductFactory
from tests.helpers import wait_until


def reserve(order_id, *lines, ttl=None):
    with transaction.atomic(using="inventory"):
        return stock_reserve(order_id=order_id, lines=[ReserveLine(p, q) for p, q in lines], ttl_seconds=ttl)


def quantities(pid):
    p = Product.objects.get(product_id=pid)
    return p.available_quantity, p.reserved_quantity, p.sold_quantity


def subjects(order_id):
    return list(OutboxMessage.objects.filter(aggregate_id=order_id).order_by("created_at")
                .values_list("subject", flat=True))


@pytest.mark.django_db(databases=ALL_DATABASES)
class TestReservations:
    def test_reserve_takes_every_line_and_announces_it(self, clock, settings):
        ProductFactory(product_id="a", available_quantity=5)
        ProductFactory(product_id="b", available_quantity=5)
        reservation = reserve("o-1", ("a", 2), ("b", 5))
        assert quantities("a") == (3, 2, 0) and quantities("b") == (0, 5, 0)
        assert reservation.expires_at == reservation.created_at + dt.timedelta(
            seconds=settings.RESERVATION_TTL_SECONDS)
        event = OutboxMessage.objects.get(aggregate_id="o-1")
        assert event.subject == "inventory.reserved"
        assert event.payload["items"] == [{"productId": "a", "quantity": 2}, {"productId": "b", "quantity": 5}]

    def test_a_short_line_reserves_nothing_and_reports_what_is_missing(self):
        ProductFactory(product_id="a", available_quantity=5)
        ProductFactory(product_id="b", available_quantity=1)
        assert reserve("o-1", ("a", 2), ("b", 2), ("ghost", 1)) is None
        assert quantities("a") == (5, 0, 0) and quantities("b") == (1, 0, 0)
        event = OutboxMessage.objects.get(aggregate_id="o-1")
        assert event.subject == "inventory.out_of_stock"
        assert event.payload["unavailableItems"] == [
            {"productId": "b", "requested": 2, "available": 1},
            {"productId": "ghost", "requested": 1, "available": 0}]

    def test_reserving_again_for_the_same_order_takes_nothing_more(self):
        ProductFactory(product_id="a", available_quantity=5)
        first = reserve("o-1", ("a", 2))
        again = reserve("o-1", ("a", 2))
        assert again.id == first.id and quantities("a") == (3, 2, 0)
        assert subjects("o-1") == ["inventory.reserved", "inventory.reserved"]

    def test_per_order_ttl(self, clock):
        ProductFactory(product_id="a", available_quantity=5)
        reservation = reserve("o-1", ("a", 1), ttl=200)
        assert (reservation.expires_at - reservation.created_at).total_seconds() == 200

    def test_release_returns_the_stock_once(self):
        ProductFactory(product_id="a", available_quantity=5)
        reserve("o-1", ("a", 2))
        with transaction.atomic(using="inventory"):
            stock_release(order_id="o-1", reason="payment failed")
            stock_release(order_id="o-1", reason="payment failed")
        assert quantities("a") == (5, 0, 0)
        assert Reservation.objects.get(order_id="o-1").status == "RELEASED"
        assert subjects("o-1") == ["inventory.reserved", "inventory.released", "inventory.released"]

    def test_release_before_reserve_leaves_a_tombstone_that_blocks_a_late_reserve(self):
        ProductFactory(product_id="a", available_quantity=5)
        with transaction.atomic(using="inventory"):
            stock_release(order_id="o-1", reason="cancelled")
        reserve("o-1", ("a", 2))
        assert quantities("a") == (5, 0, 0)
        assert subjects("o-1") == ["inventory.released", "inventory.released"]

    def test_commit_moves_reserved_to_sold_and_cannot_be_released(self):
        ProductFactory(product_id="a", available_quantity=5)
        reserve("o-1", ("a", 2))
        with transaction.atomic(using="inventory"):
            stock_commit(order_id="o-1")
            stock_commit(order_id="o-1")
            stock_release(order_id="o-1", reason="too late")
        assert quantities("a") == (3, 0, 2)
        assert Reservation.objects.get(order_id="o-1").status == "COMMITTED"

    def test_several_lines_are_committed_and_released_each_from_its_product(self):
        for pid in ("c", "a", "b"):
            ProductFactory(product_id=pid, available_quantity=9)
        reserve("o-1", ("c", 1), ("a", 2), ("b", 3))
        reserve("o-2", ("b", 4), ("c", 5))
        with transaction.atomic(using="inventory"):
            stock_commit(order_id="o-1")
            stock_release(order_id="o-2", reason="cancelled")
        assert [quantities(pid) for pid in ("a", "b", "c")] == [(7, 0, 2), (6, 0, 3), (8, 0, 1)]

    def test_a_line_whose_product_row_is_missing_fails_the_commit_and_writes_nothing(self):
        ProductFactory(product_id="a", available_quantity=5)
        ProductFactory(product_id="b", available_quantity=5)
        reservation = reserve("o-1", ("a", 1), ("b", 1))
        ReservationItem.objects.filter(reservation=reservation, product_id="b").update(product_id="gone")
        with pytest.raises(RuntimeError, match="product row is missing"), transaction.atomic(using="inventory"):
            stock_commit(order_id="o-1")
        assert quantities("a") == (4, 1, 0)
        assert Reservation.objects.get(order_id="o-1").status == "ACTIVE"

    def test_commit_after_expiry_takes_the_stock_again_when_there_is_some(self, clock):
        ProductFactory(product_id="a", available_quantity=5)
        reserve("o-1", ("a", 2), ttl=200)
        clock.advance(201)
        assert reservations_expire_sweep() == 1
        with transaction.atomic(using="inventory"):
            stock_commit(order_id="o-1")
        assert quantities("a") == (3, 0, 2)

    def test_expiry_follows_the_clock(self, clock):
        ProductFactory(product_id="a", available_quantity=5)
        reserve("o-1", ("a", 2), ttl=200)
        clock.advance(199)
        assert reservations_expire_sweep() == 0
        clock.advance(2)
        assert reservations_expire_sweep() == 1
        assert quantities("a") == (5, 0, 0)
        reservation = Reservation.objects.get(order_id="o-1")
        assert reservation.status == "EXPIRED" and subjects("o-1")[-1] == "inventory.released"

    def test_setting_stock_keeps_the_books_balanced(self):
        product, created = product_stock_set(product_id="a", name="A", available_quantity=5)
        assert created and product.stocked_quantity == 5
        reserve("o-1", ("a", 2))
        product, created = product_stock_set(product_id="a", name="A", available_quantity=10)
        assert not created
        assert (product.available_quantity, product.reserved_quantity, product.stocked_quantity) == (10, 2, 12)

    def test_the_database_refuses_negative_stock(self):
        ProductFactory(product_id="a", available_quantity=1)
        with pytest.raises(IntegrityError), transaction.atomic(using="inventory"):
            Product.objects.filter(product_id="a").update(available_quantity=-1, stocked_quantity=-1)


@pytest.mark.django_db(databases=ALL_DATABASES, transaction=True)
def test_concurrent_reservations_never_oversell():
    ProductFactory(product_id="scarce", available_quantity=5)
    ProductFactory(product_id="other", available_quantity=100)
    barrier = threading.Barrier(12)
    results = {}

    def buyer(n):
        barrier.wait()
        try:
            # Lines in different orders: the locking order must still avoid deadlocks.
            lines = [("scarce", 1), ("other", 1)] if n % 2 else [("other", 1), ("scarce", 1)]
            results[n] = reserve(f"o-{n}", *lines) is not None
        finally:
            connections.close_all()

    threads = [threading.Thread(target=buyer, args=(n,)) for n in range(12)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert sum(results.values()) == 5 and len(results) == 12
    assert quantities("scarce") == (0, 5, 0)
    assert quantities("other") == (95, 5, 0)


@pytest.mark.django_db(databases=ALL_DATABASES, transaction=True)
def test_the_expiry_sweep_takes_its_products_in_product_order(clock):
    # The sweep meets two expired reservations, the first on "f", the second on "a". Taking "f"
    # and then "a" would deadlock with a transaction that holds "a" and then wants "f".
    ProductFactory(product_id="a", available_quantity=5)
    ProductFactory(product_id="f", available_quantity=5)
    reserve("o-1", ("f", 1), ttl=100)
    clock.advance(1)
    reserve("o-2", ("a", 1), ttl=100)
    clock.advance(200)
    swept, failures = [], []

    def sweep():
        try:
            swept.append(reservations_expire_sweep())
        except Exception as exc:  # reported by the assertion below
            failures.append(exc)
        finally:
            connections.close_all()

    with transaction.atomic(using="inventory"):
        list(Product.objects.select_for_update().filter(product_id="a"))
        thread = threading.Thread(target=sweep)
        thread.start()
        wait_until(lambda: _waiting_for_a_lock() > 0, timeout=10, message="the sweep waiting for a product")
        list(Product.objects.select_for_update().filter(product_id="f"))  # deadlocks if the sweep holds it
    thread.join(timeout=30)
    assert failures == [] and swept == [2]
    assert quantities("a") == (5, 0, 0) and quantities("f") == (5, 0, 0)


def _waiting_for_a_lock() -> int:
    with connections["default"].cursor() as cursor:
        cursor.execute("SELECT count(*) FROM pg_stat_activity"
                       " WHERE wait_event_type = 'Lock' AND pid <> pg_backend_pid()")
        return cursor.fetchone()[0]
