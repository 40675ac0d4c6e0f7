"""The relay against awkward timing: a row committed late by a long transaction is not skipped,
and a NATS outage longer than JetStream's duplicate window loses nothing and applies nothing
twice (rows stay pending; the consumers' inboxes deduplicate what JetStream no longer can)."""
from __future__ import annotations

import datetime as dt
import threading

import pytest
from django.db import connections, transaction

from infra import nats as nats_bus
from infra.relay import outbox_relay_drain
from infra.streams import ROUTES, STREAMS
from inventory.models import InboxMessage, Reservation
from orders.models import OutboxMessage as OrdersOutbox
from tests.conftest import ALL_DATABASES
from tests.factories import ProductFactory
from tests.helpers import wait_until
from tests.infra.conftest import RunnerThread, order_created

pytestmark = pytest.mark.django_db(databases=ALL_DATABASES, transaction=True)
INVENTORY_ON_ORDERS = next(r for r in ROUTES if r.key == "inventory-service@ORDERS")


def test_a_row_committed_late_by_a_long_transaction_is_not_skipped(jetstream):
    in_transaction, release = threading.Event(), threading.Event()

    def long_transaction():
        try:
            with transaction.atomic(using="orders"):
                order_created("slow-order")  # created first ...
                OrdersOutbox.objects.filter(aggregate_id="slow-order").update(
                    created_at=OrdersOutbox.objects.get(aggregate_id="slow-order").created_at - dt.timedelta(hours=1))
                in_transaction.set()
                release.wait(timeout=30)
        finally:
            connections.close_all()

    thread = threading.Thread(target=long_transaction)
    thread.start()
    try:
        assert in_transaction.wait(timeout=10)
        order_created("fast-order")  # ... committed first
        assert outbox_relay_drain().published == 1
    finally:
        release.set()
        thread.join(timeout=30)
    assert outbox_relay_drain().published == 1  # the older row, once it is visible
    subjects = [m.headers["Nats-Msg-Id"] for m in nats_bus.jetstream_messages("ORDERS")]
    assert len(subjects) == 2
    assert not OrdersOutbox.objects.filter(published_at__isnull=True).exists()


def test_an_outage_longer_than_the_duplicate_window_loses_nothing_and_applies_nothing_twice(settings):
    # A one-second duplicate window, so that "longer than the window" fits in a test.
    settings.JETSTREAM_DUPLICATE_WINDOW_SECONDS = 1
    nats_bus.bridge_reset()
    nats_bus.jetstream_delete_streams_destroying_data([s.name for s in STREAMS])
    nats_bus.jetstream_ensure(STREAMS, [route.consumer for route in ROUTES])
    ProductFactory(product_id="oil", available_quantity=10)
    event_id = order_created("order-outage")
    outbox_relay_drain()  # published, and then the relay dies before marking it (simulated below)
    OrdersOutbox.objects.filter(id=event_id).update(published_at=None)

    good_url = settings.NATS_URL
    settings.NATS_URL, settings.NATS_CONNECT_TIMEOUT_SECONDS = "nats://127.0.0.1:9", 1  # NATS is down
    nats_bus.bridge_reset()
    for n in range(3):
        order_created(f"order-backlog-{n}")
        assert outbox_relay_drain().published == 0
    assert OrdersOutbox.objects.filter(published_at__isnull=True).count() == 4
    stale = OrdersOutbox.objects.get(id=event_id)
    assert stale.attempts >= 1 and stale.last_error

    settings.NATS_URL = good_url  # NATS is back, long after the duplicate window closed
    nats_bus.bridge_reset()
    wait_until(lambda: outbox_relay_drain().published == 0 and not OrdersOutbox.objects.filter(
        published_at__isnull=True).exists(), message="backlog drained")
    assert len(nats_bus.jetstream_messages("ORDERS")) == 5  # the re-sent row is in the stream twice
    with RunnerThread([INVENTORY_ON_ORDERS]) as runner:
        wait_until(lambda: InboxMessage.objects.count() == 4, message="four events handled")
        wait_until(lambda: runner.counts.get(("inventory-service", "duplicate"), 0) == 1, message="the duplicate")
    assert Reservation.objects.filter(order_id="order-outage").count() == 1
    nats_bus.bridge_reset()
