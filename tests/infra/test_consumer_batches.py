"""A fetched batch handled in one transaction (infra.consumers.deliveries_handle_together): all
of it commits together, or nothing of it is written and the messages go one by one."""
from __future__ import annotations

import json
import threading
import uuid
from decimal import Decimal

import pytest
from django.db import connections
from prometheus_client import REGISTRY

from a4co import clock
from infra.consumers import Outcome, deliveries_handle_together, delivery_handle, route_handles_batches
from infra.messages import message_envelope
from infra.nats import Delivery, publish_batch_bypassing_outbox
from infra.relay import outbox_relay_drain
from infra.streams import ROUTES
from inventory.models import Product, Reservation
from orders.messages import OrderCreated
from orders.models import DeadLetter
from orders.models import InboxMessage as OrdersInbox
from orders.models import OutboxMessage as OrdersOutbox
from saga.models import SagaInstance
from tests.conftest import ALL_DATABASES
from tests.factories import ProductFactory, order_body
from tests.helpers import wait_until
from tests.infra.conftest import RunnerThread
from tests.pump import pending_rows, pump

pytestmark = pytest.mark.django_db(databases=ALL_DATABASES)
SAGA_INVENTORY = next(route for route in ROUTES if route.name == "order-service-inventory")


def _reserved(api, count: int) -> list:
    """`count` orders placed and reserved: their inventory.reserved rows, not delivered yet."""
    ProductFactory(product_id="oil", available_quantity=100)
    for _ in range(count):
        assert api.post("/api/v1/orders", order_body(("oil", 1, "2.00")), format="json").status_code == 201
    pump(only={"orders.created"})
    return pending_rows({"inventory.reserved"})


def _delivery(row, *, data: bytes | None = None) -> Delivery:
    return Delivery(subject=row.subject, data=json.dumps(row.payload).encode() if data is None else data,
                    msg_id=str(row.id), num_delivered=1, stream_sequence=0, _msg=None)


def _statuses(rows) -> list[str]:
    return [SagaInstance.objects.get(order_id=row.aggregate_id).status for row in rows]


def test_a_batch_is_handled_in_one_transaction_with_each_message_recorded(api):
    rows = _reserved(api, 3)
    assert deliveries_handle_together(SAGA_INVENTORY, [_delivery(row) for row in rows])
    assert _statuses(rows) == ["PAYMENT_PROCESSING"] * 3
    assert set(OrdersInbox.objects.values_list("event_id", flat=True)) == {str(row.id) for row in rows}
    assert OrdersOutbox.objects.filter(subject="payments.process_request").count() == 3


@pytest.mark.parametrize("spoil", ["duplicate", "malformed", "bad order id"])
def test_a_batch_with_anything_not_plain_writes_nothing_and_goes_one_by_one(api, spoil):
    rows = _reserved(api, 3)
    deliveries = [_delivery(row) for row in rows]
    if spoil == "duplicate":
        assert delivery_handle(SAGA_INVENTORY, subject=rows[1].subject, data=deliveries[1].data,
                               msg_id=str(rows[1].id), num_delivered=1)[0] is Outcome.HANDLED
    elif spoil == "malformed":
        deliveries[1] = _delivery(rows[1], data=b"{not json")
    else:
        deliveries[1] = _delivery(rows[1], data=json.dumps({**rows[1].payload, "orderId": "x" * 80}).encode())
    inbox, outbox = OrdersInbox.objects.count(), OrdersOutbox.objects.count()

    assert not deliveries_handle_together(SAGA_INVENTORY, deliveries)
    assert (OrdersInbox.objects.count(), OrdersOutbox.objects.count()) == (inbox, outbox)
    assert _statuses([rows[0], rows[2]]) == ["STARTED", "STARTED"]

    outcomes = [delivery_handle(SAGA_INVENTORY, subject=d.subject, data=d.data, msg_id=d.msg_id, num_delivered=1)[0]
                for d in deliveries]
    expected = {"duplicate": Outcome.DUPLICATE, "malformed": Outcome.POISON, "bad order id": Outcome.POISON}[spoil]
    assert outcomes == [Outcome.HANDLED, expected, Outcome.HANDLED]
    assert _statuses([rows[0], rows[2]]) == ["PAYMENT_PROCESSING"] * 2


def test_which_routes_batch(settings):
    by_key = {route.key: route_handles_batches(route) for route in ROUTES}
    # The saga's routes lock their own order's rows only; inventory's take their shared product
    # rows first (batch_locks); payments make their Stripe calls first (batch_prepare).
    assert by_key == {"inventory-service@ORDERS": True, "inventory-service@INVENTORY": True,
                      "payment-service@PAYMENTS": True, "order-service-inventory@INVENTORY": True,
                      "order-service-payment@PAYMENTS": True}
    settings.CONSUMER_BATCH_TRANSACTIONS = False
    assert not any(route_handles_batches(route) for route in ROUTES)


@pytest.mark.django_db(databases=ALL_DATABASES, transaction=True)
def test_through_jetstream_a_batch_commits_and_a_spoiled_one_goes_one_by_one(api, jetstream):
    def batches(outcome: str) -> float:
        return REGISTRY.get_sample_value("a4co_consumer_batches_total", {
            "consumer": "order-service-inventory", "stream": "INVENTORY", "outcome": outcome}) or 0

    committed, one_by_one = batches("committed"), batches("one_by_one")
    first = _reserved(api, 3)
    outbox_relay_drain()  # all in the stream before the runner starts: its first fetch takes them
    with RunnerThread([SAGA_INVENTORY]) as runner:
        wait_until(lambda: _statuses(first) == ["PAYMENT_PROCESSING"] * 3, message="first batch handled")
        assert batches("committed") == committed + 1 and batches("one_by_one") == one_by_one
    assert runner.counts == {("order-service-inventory", "handled"): 3}

    second = _reserved(api, 2)
    outbox_relay_drain()
    publish_batch_bypassing_outbox([("inventory.reserved", b"{not json", "poison-1")])
    with RunnerThread([SAGA_INVENTORY]) as runner:
        wait_until(lambda: DeadLetter.objects.exists(), message="the poison dead-lettered")
        wait_until(lambda: _statuses(second) == ["PAYMENT_PROCESSING"] * 2, message="the others handled")
    assert batches("one_by_one") == one_by_one + 1
    assert runner.counts == {("order-service-inventory", "handled"): 2, ("order-service-inventory", "poison"): 1,
                             ("order-service-inventory", "dead_lettered"): 1}


def _created_deliveries(lines_per_order: list[tuple[str, ...]]) -> list[Delivery]:
    """orders.created deliveries, one per order, each reserving one unit of its products."""
    deliveries = []
    for products in lines_per_order:
        order_id = str(uuid.uuid4())
        message = OrderCreated(order_id=order_id, customer_id="c", total_amount=Decimal(len(products)),
                               currency="EUR", items=tuple({"productId": p, "quantity": 1, "unitPrice": "1.00"}
                                                           for p in products))
        event_id = str(uuid.uuid4())
        payload = message_envelope(message, event_id=event_id, occurred_at=clock.now())
        deliveries.append(Delivery(subject="orders.created", data=json.dumps(payload).encode(), msg_id=event_id,
                                   num_delivered=1, stream_sequence=0, _msg=None))
    return deliveries


@pytest.mark.django_db(databases=ALL_DATABASES, transaction=True)
def test_inventory_batches_taking_shared_products_in_opposite_orders_do_not_deadlock(settings):
    # Each batch reserves "a" then "f" in one order and "f" then "a" in the other: without its
    # locks taken up front (batch_locks), two such batches at once wait on each other.
    for pid in ("a", "f"):
        ProductFactory(product_id=pid, available_quantity=1000)
    route = next(r for r in ROUTES if r.key == "inventory-service@ORDERS")
    rounds, results = 8, []

    def run(batch, barrier):
        try:
            barrier.wait(timeout=10)
            results.append(deliveries_handle_together(route, batch))
        finally:
            connections.close_all()

    for _ in range(rounds):
        barrier = threading.Barrier(2)
        threads = [threading.Thread(target=run, args=(_created_deliveries([("a",), ("f",)] * 3), barrier)),
                   threading.Thread(target=run, args=(_created_deliveries([("f",), ("a",)] * 3), barrier))]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=30)
    assert results == [True] * (2 * rounds)
    for pid in ("a", "f"):
        product = Product.objects.get(product_id=pid)
        assert (product.available_quantity, product.reserved_quantity) == (1000 - 6 * rounds, 6 * rounds)
    assert Reservation.objects.count() == 12 * rounds


@pytest.mark.django_db(databases=ALL_DATABASES, transaction=True)
def test_a_batch_route_fetches_its_own_larger_batches(api, jetstream, settings):
    settings.CONSUMER_FETCH_BATCH, settings.CONSUMER_BATCH_FETCH = 2, 10
    committed = REGISTRY.get_sample_value("a4co_consumer_batches_total", {
        "consumer": "order-service-inventory", "stream": "INVENTORY", "outcome": "committed"}) or 0
    rows = _reserved(api, 5)
    outbox_relay_drain()
    with RunnerThread([SAGA_INVENTORY]):
        wait_until(lambda: _statuses(rows) == ["PAYMENT_PROCESSING"] * 5, message="all handled")
    # One pull of up to 10 took all five: one transaction (pulls of 2 would have made three).
    assert REGISTRY.get_sample_value("a4co_consumer_batches_total", {
        "consumer": "order-service-inventory", "stream": "INVENTORY", "outcome": "committed"}) == committed + 1
