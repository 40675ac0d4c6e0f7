"""Integration: outbox -> relay -> JetStream -> durable consumer -> handler, against the real
PostgreSQL and NATS servers of the test run (no fakes)."""
from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import threading

import pytest

from infra import nats as nats_bus
from infra.consumers import Outcome, delivery_handle
from infra.nats import jetstream_session
from infra.relay import outbox_relay_drain
from infra.streams import ROUTES
from inventory.models import InboxMessage as InventoryInbox
from inventory.models import OutboxMessage as InventoryOutbox
from inventory.models import Reservation
from orders.models import OutboxMessage as OrdersOutbox
from tests.conftest import ALL_DATABASES
from tests.factories import ProductFactory
from tests.helpers import wait_until
from tests.infra.conftest import RunnerThread, order_created

pytestmark = pytest.mark.django_db(databases=ALL_DATABASES, transaction=True)
INVENTORY_ON_ORDERS = next(r for r in ROUTES if r.key == "inventory-service@ORDERS")


def test_the_event_id_travels_from_outbox_row_to_nats_msg_id_to_inbox(jetstream):
    ProductFactory(product_id="oil", available_quantity=5)
    event_id = order_created("order-1")
    assert outbox_relay_drain().published == 1
    row = OrdersOutbox.objects.get(id=event_id)
    assert row.published_at is not None and row.stream_sequence == 1
    (stored,) = nats_bus.jetstream_messages("ORDERS")
    assert stored.subject == "orders.created"
    assert stored.headers["Nats-Msg-Id"] == str(event_id)
    assert json.loads(stored.data)["eventId"] == str(event_id)

    with RunnerThread([INVENTORY_ON_ORDERS]) as runner:
        inbox = wait_until(lambda: InventoryInbox.objects.filter(event_id=str(event_id)).first(),
                           message="inventory inbox row")
    assert inbox.consumer == "inventory-service" and inbox.aggregate_id == "order-1"
    assert Reservation.objects.get(order_id="order-1").status == "ACTIVE"
    assert InventoryOutbox.objects.get(aggregate_id="order-1").subject == "inventory.reserved"
    assert runner.counts == {("inventory-service", "handled"): 1}


def test_a_redelivered_message_that_was_already_handled_is_acked_and_skipped(jetstream):
    ProductFactory(product_id="oil", available_quantity=5)
    order_created("order-2")
    outbox_relay_drain()

    async def handle_then_lose_the_ack():
        async with jetstream_session("test") as session:
            pull = await session.pull(INVENTORY_ON_ORDERS.consumer)
            outcomes = []
            for _ in range(2):
                (delivery,) = await pull.fetch(1, timeout=5)
                outcome, _ = await asyncio.to_thread(
                    delivery_handle, INVENTORY_ON_ORDERS, subject=delivery.subject, data=delivery.data,
                    msg_id=delivery.msg_id, num_delivered=delivery.num_delivered)
                outcomes.append((outcome, delivery.num_delivered))
                if delivery.num_delivered == 1:
                    await delivery.nak()  # as if the process died after commit, before the ack
                else:
                    await delivery.ack()
            return outcomes

    assert asyncio.run(handle_then_lose_the_ack()) == [(Outcome.HANDLED, 1), (Outcome.DUPLICATE, 2)]
    product = ProductFactory._meta.model.objects.get(product_id="oil")
    assert (product.available_quantity, product.reserved_quantity) == (3, 2)
    assert InventoryOutbox.objects.filter(aggregate_id="order-2").count() == 1


def test_a_failed_publish_leaves_the_row_pending_and_a_later_relay_sends_it(jetstream, settings):
    ProductFactory(product_id="oil", available_quantity=5)
    event_id = order_created("order-3")
    good_url = settings.NATS_URL
    settings.NATS_URL = "nats://127.0.0.1:9"  # nothing listens there
    settings.NATS_CONNECT_TIMEOUT_SECONDS = 1
    nats_bus.bridge_reset()
    stats = outbox_relay_drain()
    assert (stats.published, stats.failed) == (0, 1)
    row = OrdersOutbox.objects.get(id=event_id)
    assert row.published_at is None and row.attempts == 1 and row.last_error

    settings.NATS_URL = good_url
    nats_bus.bridge_reset()
    assert outbox_relay_drain().published == 1
    with RunnerThread([INVENTORY_ON_ORDERS]) as runner:
        wait_until(lambda: Reservation.objects.filter(order_id="order-3").exists(), message="reservation")
    assert runner.counts == {("inventory-service", "handled"): 1}
    assert len(nats_bus.jetstream_messages("ORDERS")) == 1


def test_a_relay_that_fails_while_publishing_rolls_back_and_the_next_one_sends_the_rows(jetstream, monkeypatch):
    # Anything raised half-way (here: while publishing) rolls the batch's transaction back: the
    # rows stay pending, their locks go, and the connection is left idle for the next drain.
    from django.db import connections
    from psycopg import pq

    ids = [str(order_created(f"order-f{n}")) for n in range(3)]
    real_publish = nats_bus.publish_batch_bypassing_outbox
    seen_locked = []

    def publish_then_fail(items, **kwargs):
        seen_locked.append(_claimable_elsewhere())  # the claimed rows are locked meanwhile
        raise RuntimeError("the process is being torn down")

    monkeypatch.setattr(nats_bus, "publish_batch_bypassing_outbox", publish_then_fail)
    with pytest.raises(RuntimeError, match="torn down"):
        outbox_relay_drain()
    assert seen_locked == [0]
    assert connections["orders"].connection.info.transaction_status == pq.TransactionStatus.IDLE
    assert _claimable_elsewhere() == 3
    assert OrdersOutbox.objects.filter(id__in=ids, published_at__isnull=True).count() == 3

    monkeypatch.setattr(nats_bus, "publish_batch_bypassing_outbox", real_publish)
    assert outbox_relay_drain().published == 3
    assert {m.headers["Nats-Msg-Id"] for m in nats_bus.jetstream_messages("ORDERS")} == set(ids)
    # Past psycopg's prepare threshold the claim and the marking run as prepared statements:
    # batch after batch still commits.
    for n in range(8):
        order_created(f"order-g{n}")
        assert outbox_relay_drain().published == 1
    assert OrdersOutbox.objects.filter(published_at__isnull=True).count() == 0


def _claimable_elsewhere() -> int:
    """How many pending orders outbox rows another connection could claim right now."""
    import psycopg
    from django.db import connections

    params = connections["orders"].get_connection_params()
    params.pop("cursor_factory", None)
    with psycopg.connect(**params, autocommit=True) as other:
        return len(other.execute("SELECT id FROM orders_outbox WHERE published_at IS NULL"
                                 " FOR UPDATE SKIP LOCKED").fetchall())


def test_republishing_a_row_is_deduplicated_by_jetstream(jetstream):
    event_id = order_created("order-4")
    outbox_relay_drain()
    # As if the relay died after the PubAck but before marking the row.
    OrdersOutbox.objects.filter(id=event_id).update(published_at=None)
    assert outbox_relay_drain().published == 1
    assert len(nats_bus.jetstream_messages("ORDERS")) == 1
    assert OrdersOutbox.objects.get(id=event_id).published_at is not None


def test_concurrent_relays_publish_each_row_once(jetstream):
    ids = {str(order_created(f"order-c{n}")) for n in range(60)}
    results = []

    def relay():
        from django.db import connections

        results.append(outbox_relay_drain(batch_size=7).published)
        connections.close_all()

    threads = [threading.Thread(target=relay) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert sum(results) == 60
    stored = nats_bus.jetstream_messages("ORDERS")
    assert {m.headers["Nats-Msg-Id"] for m in stored} == ids and len(stored) == 60


def test_run_consumers_stops_cleanly_on_sigterm(jetstream):
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "a4co.settings.test"}
    from django.conf import settings as live

    env["DATABASE_URL"] = os.environ.get("DATABASE_URL", "")
    env["NATS_URL"] = live.NATS_URL
    process = subprocess.Popen([sys.executable, "manage.py", "run_consumers", "--only", "inventory-service"],
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, text=True)
    try:
        lines = []
        wait_until(lambda: lines.append(process.stdout.readline()) or "consumers running" in lines[-1],
                   timeout=30, message="consumers running")
        # The handlers were loaded and the startup heap frozen before the first fetch (a4co.heap).
        frozen = [line for line in lines if "startup heap frozen" in line]
        assert frozen and int(frozen[0].split("frozen: ")[1].split()[0]) > 10_000, lines
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=15) == 0
        rest = process.stdout.read()
        assert "consumers stopped" in rest
    finally:
        if process.poll() is None:
            process.kill()
