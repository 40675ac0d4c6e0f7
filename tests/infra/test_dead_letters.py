"""Dead letters against the real JetStream server: poison goes straight there, a handler that
keeps failing goes there after max_deliver attempts, JetStream's MAX_DELIVERIES advisory is
caught, nothing is recorded twice, and ops can redeliver (new event id) or discard."""
from __future__ import annotations

import asyncio
import dataclasses
import uuid

import pytest
from django.core.management import call_command

from infra import nats as nats_bus
from infra.consumers import ConsumerRunner
from infra.deadletters import DeadLetterStateError, dead_letter_discard, dead_letter_redeliver
from infra.nats import jetstream_session
from infra.relay import outbox_relay_drain
from infra.streams import ROUTES, STREAMS
from inventory.models import DeadLetter, InboxMessage, Reservation
from inventory.models import OutboxMessage as InventoryOutbox
from tests.conftest import ALL_DATABASES
from tests.factories import ProductFactory
from tests.helpers import wait_until
from tests.infra import failing_handlers
from tests.infra.conftest import RunnerThread, order_created

pytestmark = pytest.mark.django_db(databases=ALL_DATABASES, transaction=True)
INVENTORY_ON_ORDERS = next(r for r in ROUTES if r.key == "inventory-service@ORDERS")
FAILING = dataclasses.replace(INVENTORY_ON_ORDERS, handlers="tests.infra.failing_handlers.HANDLERS")


def publish_raw(subject: str, data: bytes) -> None:
    """A message from outside our code base (a foreign producer or a bug), straight onto the stream."""

    async def publish():
        async with jetstream_session("test") as session:
            await session._js.publish(subject, data, headers={"Nats-Msg-Id": str(uuid.uuid4())})

    asyncio.run(publish())


@pytest.mark.parametrize("data, why", [
    (b"this is not json", "not JSON"),
    (b'{"orderId": "o-1", "schemaVersion": 99}', "unsupported schemaVersion"),
    (b'{"orderId": "o-1"}', "missing field"),
])
def test_a_malformed_message_goes_straight_to_dead_letters(jetstream, data, why):
    publish_raw("orders.created", data)
    with RunnerThread([INVENTORY_ON_ORDERS]) as runner:
        dead = wait_until(lambda: DeadLetter.objects.first(), message="a dead letter")
    assert runner.counts == {("inventory-service", "poison"): 1, ("inventory-service", "dead_lettered"): 1}
    assert dead.status == "OPEN" and dead.deliveries == 1 and why in dead.error
    assert dead.payload == data.decode() and dead.stream == "ORDERS" and dead.subject == "orders.created"
    assert not InboxMessage.objects.exists()


def test_a_handler_that_keeps_failing_is_dead_lettered_after_max_deliver(jetstream, settings):
    settings.CONSUMER_BACKOFF_BASE_SECONDS = 0.05
    failing_handlers.CALLS.clear()
    event_id = order_created("order-5")
    outbox_relay_drain()
    with RunnerThread([FAILING]) as runner:
        dead = wait_until(lambda: DeadLetter.objects.first(), message="a dead letter")
    assert failing_handlers.CALLS == ["order-5"] * settings.CONSUMER_MAX_DELIVER
    assert runner.counts[("inventory-service", "retry")] == settings.CONSUMER_MAX_DELIVER
    assert dead.deliveries == settings.CONSUMER_MAX_DELIVER and dead.event_id == str(event_id)
    assert "simulated handler failure" in dead.error and dead.aggregate_id == "order-5"
    assert not InboxMessage.objects.exists()  # every failed attempt rolled back


def test_redelivery_republishes_under_a_new_event_id_that_records_the_original(jetstream, settings):
    settings.CONSUMER_BACKOFF_BASE_SECONDS = 0.05
    event_id = order_created("order-6")
    outbox_relay_drain()
    with RunnerThread([FAILING]):
        dead = wait_until(lambda: DeadLetter.objects.first(), message="a dead letter")
    ProductFactory(product_id="oil", available_quantity=5)

    call_command("dead_letters", "redeliver", str(dead.id), "--by", "ops-alice")
    dead.refresh_from_db()
    assert dead.status == "REDELIVERED" and dead.resolved_by == "ops-alice"
    copy = InventoryOutbox.objects.get(id=dead.redelivered_event_id)
    assert copy.payload["redeliveredFrom"] == str(event_id) and copy.payload["eventId"] == str(copy.id)
    outbox_relay_drain()
    with RunnerThread([INVENTORY_ON_ORDERS]):
        wait_until(lambda: Reservation.objects.filter(order_id="order-6").exists(), message="handled at last")
    assert InboxMessage.objects.get().event_id == str(copy.id)
    with pytest.raises(DeadLetterStateError):
        dead_letter_redeliver(dead_letter_id=str(dead.id), by="again")


def test_discard_closes_a_dead_letter(jetstream):
    publish_raw("orders.created", b"garbage")
    with RunnerThread([INVENTORY_ON_ORDERS]):
        dead = wait_until(lambda: DeadLetter.objects.first(), message="a dead letter")
    with pytest.raises(DeadLetterStateError):
        dead_letter_redeliver(dead_letter_id=str(dead.id), by="ops")  # not JSON: can only be discarded
    dead_letter_discard(dead_letter_id=str(dead.id), by="ops", note="junk from a test")
    dead.refresh_from_db()
    assert dead.status == "DISCARDED" and dead.resolution_note == "junk from a test"


def test_max_deliveries_advisory_is_caught_and_recorded_once(jetstream, settings):
    """A message never acked (the process dies while handling it, every time)."""
    settings.CONSUMER_ACK_WAIT_SECONDS = 1
    nats_bus.jetstream_ensure(STREAMS, [INVENTORY_ON_ORDERS.consumer])
    order_created("order-7")
    outbox_relay_drain()
    advisories = []

    async def deliver_without_ever_acking():
        async with jetstream_session("test") as session:
            async def collect(advisory):
                advisories.append(advisory)

            await session.on_max_deliveries(INVENTORY_ON_ORDERS.consumer, collect)
            pull = await session.pull(INVENTORY_ON_ORDERS.consumer)
            seen = []
            while len(seen) < settings.CONSUMER_MAX_DELIVER:
                seen += [d.num_delivered for d in await pull.fetch(1, timeout=2)]
            for _ in range(20):  # the server notices on its next delivery attempt, after ack-wait
                if advisories:
                    break
                assert await pull.fetch(1, timeout=0.5) == []  # no fourth delivery
            return seen

    assert asyncio.run(deliver_without_ever_acking()) == [1, 2, 3]
    (advisory,) = advisories
    assert advisory["deliveries"] == 3 and advisory["stream_seq"] == 1

    async def feed_the_runner():
        async with jetstream_session("test") as session:
            runner = ConsumerRunner([INVENTORY_ON_ORDERS])
            await runner._on_max_deliveries(INVENTORY_ON_ORDERS, session, advisory)
            await runner._on_max_deliveries(INVENTORY_ON_ORDERS, session, advisory)  # a second process
            return runner.counts

    assert asyncio.run(feed_the_runner()) == {("inventory-service", "dead_lettered"): 1}
    dead = DeadLetter.objects.get()
    assert dead.deliveries == 3 and "without an ack" in dead.error and dead.aggregate_id == "order-7"


def test_dead_letters_command_lists_them(jetstream, capsys):
    publish_raw("orders.created", b"garbage")
    with RunnerThread([INVENTORY_ON_ORDERS]):
        wait_until(lambda: DeadLetter.objects.exists(), message="a dead letter")
    call_command("dead_letters", "list")
    out = capsys.readouterr().out
    assert "inventory-service" in out and "orders.created" in out and "not JSON" in out


def test_an_unavailable_dependency_is_waited_out_without_spending_deliveries(jetstream, settings):
    failing_handlers.CALLS.clear()
    failing_handlers.FLAKY_FAILURES["left"] = 4  # more failures than max_deliver allows deliveries
    flaky = dataclasses.replace(INVENTORY_ON_ORDERS, handlers="tests.infra.failing_handlers.FLAKY_HANDLERS")
    order_created("order-flaky")
    outbox_relay_drain()
    with RunnerThread([flaky]) as runner:
        wait_until(lambda: InboxMessage.objects.filter(aggregate_id="order-flaky").exists(), message="handled")
    assert failing_handlers.CALLS == ["order-flaky"] * 5
    assert InboxMessage.objects.get(aggregate_id="order-flaky").deliveries == 1
    assert runner.counts == {("inventory-service", "handled"): 1}
    assert not DeadLetter.objects.exists()
