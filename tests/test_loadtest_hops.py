"""loadtest's hop breakdown: where a saga's time went between services, read from the outbox and
inbox timestamps of each service's own database (issue "Throughput and latency")."""
from __future__ import annotations

import datetime as dt
import uuid

import pytest

from infra.loadtest import hops_measure
from inventory.models import InboxMessage as InventoryInbox
from inventory.models import OutboxMessage as InventoryOutbox
from orders.models import InboxMessage as OrdersInbox
from orders.models import OutboxMessage as OrdersOutbox
from tests.conftest import ALL_DATABASES

pytestmark = pytest.mark.django_db(databases=ALL_DATABASES)

T0 = dt.datetime(2026, 12, 5, 12, 0, tzinfo=dt.UTC)


def ms(n: float) -> dt.datetime:
    return T0 + dt.timedelta(milliseconds=n)


def sent(outbox, order_id: str, subject: str, *, created: float, published: float | None) -> str:
    row = outbox.objects.create(id=uuid.uuid4(), subject=subject, aggregate_id=order_id, payload={},
                                created_at=ms(created), published_at=None if published is None else ms(published))
    return str(row.id)


def taken(inbox, event_id: str, order_id: str, subject: str, consumer: str, *, at: float) -> None:
    inbox.objects.create(consumer=consumer, event_id=event_id, subject=subject, aggregate_id=order_id,
                         received_at=ms(at))


def test_each_hop_is_its_medians_in_saga_order_from_both_sides_databases():
    a, b, c, other = (str(uuid.uuid4()) for _ in range(4))
    placed = {a: ms(0), b: ms(100), c: ms(200)}
    # orders.created: appended 1, 3 and 2 ms after each POST; relayed in 10, 30, 20; taken up in 5, 7, 6.
    for order_id, appended, relay, delivery in ((a, 1, 10, 5), (b, 3, 30, 7), (c, 2, 20, 6)):
        start = (placed[order_id] - T0).total_seconds() * 1000 + appended
        event = sent(OrdersOutbox, order_id, "orders.created", created=start, published=start + relay)
        taken(InventoryInbox, event, order_id, "orders.created", "inventory-service", at=start + relay + delivery)
    # inventory.reserved, later in each saga: two orders (an even count: the median is the mean of the middle two).
    for order_id, appended in ((a, 40), (b, 50)):
        start = (placed[order_id] - T0).total_seconds() * 1000 + appended
        event = sent(InventoryOutbox, order_id, "inventory.reserved", created=start, published=start + 4)
        taken(OrdersInbox, event, order_id, "inventory.reserved", "order-service-inventory", at=start + 4 + 2)
    # Left out: another order's hop, a row not published yet, and a message nobody has taken up.
    event = sent(OrdersOutbox, other, "orders.created", created=0, published=500)
    taken(InventoryInbox, event, other, "orders.created", "inventory-service", at=900)
    sent(InventoryOutbox, c, "inventory.reserved", created=260, published=None)
    sent(OrdersOutbox, a, "orders.confirmed", created=70, published=75)

    hops = hops_measure(placed)

    assert [hop.as_dict() for hop in hops] == [
        {"subject": "orders.created", "consumer": "inventory-service", "count": 3,
         "appended_ms": 2.0, "relay_ms": 20.0, "delivery_ms": 6.0},
        {"subject": "inventory.reserved", "consumer": "order-service-inventory", "count": 2,
         "appended_ms": 45.0, "relay_ms": 4.0, "delivery_ms": 2.0},
    ]


def test_no_hops_for_orders_that_sent_nothing():
    assert hops_measure({str(uuid.uuid4()): T0}) == []
