"""The counters the relay and the consumer runner keep, against the real JetStream: what they
count shows up in GET /metrics (as deltas: other tests of this process count too)."""
from __future__ import annotations

import asyncio
import dataclasses
import uuid

import pytest

from infra import nats as nats_bus
from infra.nats import jetstream_session
from infra.relay import outbox_relay_drain
from infra.streams import ROUTES
from inventory.models import DeadLetter, Reservation
from tests.conftest import ALL_DATABASES
from tests.factories import ProductFactory
from tests.helpers import wait_until
from tests.infra.conftest import RunnerThread, order_created

pytestmark = pytest.mark.django_db(databases=ALL_DATABASES, transaction=True)
INVENTORY_ON_ORDERS = next(r for r in ROUTES if r.key == "inventory-service@ORDERS")
FAILING = dataclasses.replace(INVENTORY_ON_ORDERS, handlers="tests.infra.failing_handlers.HANDLERS")
ON_ORDERS = {"consumer": "inventory-service", "stream": "ORDERS"}


def test_the_relay_counts_published_and_failed_rows_and_their_latency(scrape, jetstream, settings):
    before = scrape()
    order_created("order-m1")
    order_created("order-m2")
    good_url = settings.NATS_URL
    settings.NATS_URL = "nats://127.0.0.1:9"  # nothing listens there
    settings.NATS_CONNECT_TIMEOUT_SECONDS = 1
    nats_bus.bridge_reset()
    assert outbox_relay_drain().failed == 2
    settings.NATS_URL = good_url
    nats_bus.bridge_reset()
    assert outbox_relay_drain().published == 2

    after = scrape()
    delta = {name: after.value(name, outbox="orders") - before.value(name, outbox="orders")
             for name in ("a4co_relay_published_total", "a4co_relay_publish_failed_total",
                          "a4co_relay_publish_latency_seconds_count")}
    assert delta == {"a4co_relay_published_total": 2, "a4co_relay_publish_failed_total": 2,
                     "a4co_relay_publish_latency_seconds_count": 2}
    # Written, failed once, then published: well under a minute, more than nothing.
    assert 0 < after.value("a4co_relay_publish_latency_seconds_sum", outbox="orders") - \
        before.value("a4co_relay_publish_latency_seconds_sum", outbox="orders") < 60
    assert after.value("a4co_outbox_pending_messages", outbox="orders") == 0


def test_consumer_outcomes_are_counted_handled_and_poison(scrape, jetstream):
    before = scrape()
    ProductFactory(product_id="oil", available_quantity=5)
    order_created("order-m3")
    outbox_relay_drain()
    _publish_raw("orders.created", b"not json at all")
    with RunnerThread([INVENTORY_ON_ORDERS]):
        wait_until(lambda: Reservation.objects.filter(order_id="order-m3").exists() and DeadLetter.objects.exists(),
                   message="the order handled and the poison dead-lettered")
        after = wait_until(lambda: _changed(before, scrape(), "a4co_consumer_dead_lettered_total",
                                            source="handler", **ON_ORDERS), message="the dead letter counted")

    def delta(name: str, **labels: str) -> float:
        return after.value(name, **labels) - before.value(name, **labels)

    assert delta("a4co_consumer_deliveries_total", outcome="handled", **ON_ORDERS) == 1
    assert delta("a4co_consumer_deliveries_total", outcome="poison", **ON_ORDERS) == 1
    assert delta("a4co_consumer_deliveries_total", outcome="retry", **ON_ORDERS) == 0
    assert delta("a4co_consumer_dead_lettered_total", source="handler", **ON_ORDERS) == 1
    assert after.value("a4co_dead_letters_open_messages", service="inventory", consumer="inventory-service") == 1


def test_a_failing_handler_counts_retries_redeliveries_and_the_dead_letter(scrape, jetstream, settings):
    settings.CONSUMER_BACKOFF_BASE_SECONDS = 0.05
    before = scrape()
    order_created("order-m4")
    outbox_relay_drain()
    with RunnerThread([FAILING]):
        after = wait_until(lambda: _changed(before, scrape(), "a4co_consumer_dead_lettered_total",
                                            source="handler", **ON_ORDERS), message="the dead letter counted")

    def delta(name: str, **labels: str) -> float:
        return after.value(name, **labels) - before.value(name, **labels)

    attempts = settings.CONSUMER_MAX_DELIVER
    assert delta("a4co_consumer_deliveries_total", outcome="retry", **ON_ORDERS) == attempts
    assert delta("a4co_consumer_redeliveries_total", **ON_ORDERS) == attempts - 1
    assert delta("a4co_consumer_dead_lettered_total", source="handler", **ON_ORDERS) == 1
    assert delta("a4co_consumer_dead_lettered_total", source="advisory", **ON_ORDERS) == 0


def _changed(before, after, name: str, **labels: str):
    return after if after.value(name, **labels) > before.value(name, **labels) else None


def _publish_raw(subject: str, data: bytes) -> None:
    async def publish():
        async with jetstream_session("test") as session:
            await session._js.publish(subject, data, headers={"Nats-Msg-Id": str(uuid.uuid4())})

    asyncio.run(publish())
