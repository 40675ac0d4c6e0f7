"""Horizontal scale against the real PostgreSQL and JetStream: two relays drain the outbox while two
consumer runners share one durable consumer, as two worker and two consumer containers would.
Every event is published once and handled once."""
from __future__ import annotations

import threading

import pytest
from django.db import connections

from infra import nats as nats_bus
from infra.relay import outbox_relay_drain
from infra.streams import ROUTES
from inventory.models import InboxMessage as InventoryInbox
from inventory.models import OutboxMessage as InventoryOutbox
from inventory.models import Product, Reservation
from orders.models import OutboxMessage as OrdersOutbox
from tests.conftest import ALL_DATABASES
from tests.factories import ProductFactory
from tests.helpers import wait_until
from tests.infra.conftest import RunnerThread, order_created

pytestmark = pytest.mark.django_db(databases=ALL_DATABASES, transaction=True)
INVENTORY_ON_ORDERS = next(r for r in ROUTES if r.key == "inventory-service@ORDERS")
EVENTS = 200


def test_two_relays_and_two_consumer_processes_publish_and_handle_every_event_once(jetstream, settings):
    settings.CONSUMER_FETCH_BATCH = 4  # small pulls, so both runners get a share
    ProductFactory(product_id="oil", available_quantity=EVENTS * 2)
    event_ids = {str(order_created(f"scale-{n}", quantity=2)) for n in range(EVENTS)}
    published = []

    def relay() -> None:
        try:
            while OrdersOutbox.objects.filter(published_at__isnull=True).exists():
                published.append(outbox_relay_drain(batch_size=9).published)
        finally:
            connections.close_all()

    with RunnerThread([INVENTORY_ON_ORDERS]) as first, RunnerThread([INVENTORY_ON_ORDERS]) as second:
        relays = [threading.Thread(target=relay) for _ in range(2)]
        for thread in relays:
            thread.start()
        for thread in relays:
            thread.join(timeout=120)
        wait_until(lambda: InventoryInbox.objects.count() >= EVENTS, timeout=120, message=f"{EVENTS} inbox rows")

    # Published once: the relays shared the rows (SKIP LOCKED), JetStream holds each event once.
    assert not OrdersOutbox.objects.filter(published_at__isnull=True).exists() and sum(published) >= EVENTS
    stored = nats_bus.jetstream_messages("ORDERS")
    assert len(stored) == EVENTS and {m.headers["Nats-Msg-Id"] for m in stored} == event_ids
    # Handled once: both runners took part, nothing was handled twice or skipped.
    handled = [runner.counts.get(("inventory-service", "handled"), 0) for runner in (first, second)]
    assert sum(handled) == EVENTS and min(handled) > 0, handled
    assert not any(key[1] in ("duplicate", "retry", "poison") for runner in (first, second) for key in runner.counts)
    assert set(InventoryInbox.objects.values_list("event_id", flat=True)) == event_ids
    assert InventoryInbox.objects.count() == EVENTS
    # The domain effects happened once per event.
    assert Reservation.objects.count() == EVENTS
    assert InventoryOutbox.objects.filter(subject="inventory.reserved").count() == EVENTS
    oil = Product.objects.get(product_id="oil")
    assert (oil.available_quantity, oil.reserved_quantity) == (EVENTS * 2 - EVENTS * 2, EVENTS * 2)
