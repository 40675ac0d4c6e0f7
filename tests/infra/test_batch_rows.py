"""A consumer batch locks its rows up front and hands them to its handlers (ConsumerRoute.batch_locks
as a context manager): fewer SELECTs, the same outcome as handling the messages one by one. A
later message of the batch sees what an earlier one wrote."""
from __future__ import annotations

import json
import uuid
from decimal import Decimal

import pytest
from django.db import connections
from django.test.utils import CaptureQueriesContext

from a4co import clock
from infra.consumers import deliveries_handle_together
from infra.messages import message_envelope
from infra.nats import Delivery
from infra.streams import ROUTES
from inventory.messages import InventoryReleaseRequest, InventoryReserved
from inventory.models import Product, Reservation
from orders.messages import OrderCancelled, OrderConfirmed, OrderCreated
from saga.models import SagaInstance, SagaStep
from tests.conftest import ALL_DATABASES
from tests.factories import ProductFactory, order_body
from tests.pump import pending_rows, pump

pytestmark = pytest.mark.django_db(databases=ALL_DATABASES)
INVENTORY_ORDERS = next(r for r in ROUTES if r.key == "inventory-service@ORDERS")
SAGA_INVENTORY = next(r for r in ROUTES if r.key == "order-service-inventory@INVENTORY")


def _delivery(message) -> Delivery:
    event_id = str(uuid.uuid4())
    payload = message_envelope(message, event_id=event_id, occurred_at=clock.now())
    return Delivery(subject=message.SUBJECT, data=json.dumps(payload).encode(), msg_id=event_id, num_delivered=1,
                    stream_sequence=0, _msg=None)


def _created(order_id: str, *lines: tuple[str, int]) -> Delivery:
    return _delivery(OrderCreated(order_id=order_id, customer_id="c", total_amount=Decimal("1.00"), currency="EUR",
                                  items=tuple({"productId": p, "quantity": q, "unitPrice": "1.00"} for p, q in lines)))


def _selects(queries) -> list[str]:
    return [q["sql"] for q in queries if q["sql"].lstrip().upper().startswith("SELECT")]


def _stock(pid: str) -> tuple[int, int, int]:
    product = Product.objects.get(product_id=pid)
    return product.available_quantity, product.reserved_quantity, product.sold_quantity


def test_inventory_batch_reads_its_rows_once_and_later_messages_see_earlier_writes():
    ProductFactory(product_id="a", available_quantity=5)
    ProductFactory(product_id="b", available_quantity=10)
    batch = [
        _created("o1", ("a", 3), ("b", 1)),
        _created("o2", ("a", 3)),  # only 2 left after o1: out of stock
        _delivery(OrderConfirmed(order_id="o1", payment_id="p", timestamp=clock.now())),
        _created("o3", ("b", 2)),
        _delivery(InventoryReleaseRequest(order_id="o3", reason="declined")),
        _delivery(InventoryReleaseRequest(order_id="o4", reason="timeout")),  # nothing reserved: tombstone
        _created("o4", ("b", 1)),  # arrives after its release: reserves nothing
    ]
    with CaptureQueriesContext(connections["inventory"]) as queries:
        assert deliveries_handle_together(INVENTORY_ORDERS, batch)
    # The batch's reservations and products, locked once; no reservation existed, so no lines to read.
    assert len(_selects(queries.captured_queries)) == 2, _selects(queries.captured_queries)
    assert _stock("a") == (2, 0, 3)
    assert _stock("b") == (9, 0, 1)
    assert dict(Reservation.objects.values_list("order_id", "status")) == {
        "o1": "COMMITTED", "o3": "RELEASED", "o4": "RELEASED"}
    assert [row.subject for row in pending_rows()] == [
        "inventory.reserved", "inventory.out_of_stock", "inventory.reserved", "inventory.released",
        "inventory.released", "inventory.released"]


def test_inventory_batch_uses_the_lines_of_reservations_it_found():
    ProductFactory(product_id="a", available_quantity=10)
    ProductFactory(product_id="b", available_quantity=10)
    assert deliveries_handle_together(INVENTORY_ORDERS, [_created("o1", ("a", 2), ("b", 1)), _created("o2", ("b", 4))])
    with CaptureQueriesContext(connections["inventory"]) as queries:
        assert deliveries_handle_together(INVENTORY_ORDERS, [
            _delivery(OrderConfirmed(order_id="o1", payment_id="p", timestamp=clock.now())),
            _delivery(OrderCancelled(order_id="o2", reason="ops", timestamp=clock.now())),
            _delivery(OrderCancelled(order_id="o1", reason="too late", timestamp=clock.now())),  # committed: kept
        ])
    # Reservations, products, the reservations' lines: three SELECTs for the whole batch.
    assert len(_selects(queries.captured_queries)) == 3, _selects(queries.captured_queries)
    assert _stock("a") == (8, 0, 2)
    assert _stock("b") == (9, 0, 1)
    assert dict(Reservation.objects.values_list("order_id", "status")) == {"o1": "COMMITTED", "o2": "RELEASED"}


def test_inventory_batch_with_a_missing_product_row_goes_one_by_one():
    ProductFactory(product_id="a", available_quantity=10)
    assert deliveries_handle_together(INVENTORY_ORDERS, [_created("o1", ("a", 2))])
    Product.objects.filter(product_id="a").delete()  # ops deleted it (no FK from the lines)
    assert not deliveries_handle_together(INVENTORY_ORDERS, [
        _delivery(OrderConfirmed(order_id="o1", payment_id="p", timestamp=clock.now()))])
    assert Reservation.objects.get(order_id="o1").status == "ACTIVE"


def test_saga_batch_hands_each_saga_out_once_and_a_second_event_reads_it_again(api):
    ProductFactory(product_id="oil", available_quantity=100)
    for _ in range(2):
        assert api.post("/api/v1/orders", order_body(("oil", 1, "2.00")), format="json").status_code == 201
    pump(only={"orders.created"})
    first, second = pending_rows({"inventory.reserved"})
    reserved = [Delivery(subject=row.subject, data=json.dumps(row.payload).encode(), msg_id=str(row.id),
                         num_delivered=1, stream_sequence=0, _msg=None) for row in (first, second)]
    # The same event again under a new id: the saga has moved on, so the engine ignores it.
    again = _delivery(InventoryReserved(order_id=first.aggregate_id, reservation_id=first.payload["reservationId"],
                                        items=({"productId": "oil", "quantity": 1},), expires_at=clock.now()))
    with CaptureQueriesContext(connections["orders"]) as queries:
        assert deliveries_handle_together(SAGA_INVENTORY, [*reserved, again])
    # One SELECT locks both sagas; the repeat of the first order's event selects its saga again.
    assert len(_selects(queries.captured_queries)) == 2, _selects(queries.captured_queries)
    assert [SagaInstance.objects.get(order_id=row.aggregate_id).status for row in (first, second)] == [
        "PAYMENT_PROCESSING"] * 2
    # The repeat saw the first event's write: it found the saga in PAYMENT_PROCESSING.
    ignored = SagaStep.objects.get(saga__order_id=first.aggregate_id, applied=False)
    assert (ignored.status_from, ignored.event_id) == ("PAYMENT_PROCESSING", again.msg_id)
    assert SagaInstance.objects.get(order_id=first.aggregate_id).events_ignored == 1
