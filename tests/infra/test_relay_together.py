"""The relay drains the outboxes that live in one database together: one transaction claims and
marks the pending rows of all of them, against the real PostgreSQL and NATS of the test run."""
from __future__ import annotations

import pytest
from django.db import connections, transaction
from django.test.utils import CaptureQueriesContext

from infra import nats as nats_bus
from infra.outbox import outbox_append_copy
from infra.relay import outbox_groups, outbox_relay_drain
from inventory.models import OutboxMessage as InventoryOutbox
from orders.models import OutboxMessage as OrdersOutbox
from payments.models import OutboxMessage as PaymentsOutbox
from tests.conftest import ALL_DATABASES
from tests.infra.conftest import order_created

pytestmark = pytest.mark.django_db(databases=ALL_DATABASES, transaction=True)


def _reserved(order_id: str, subject: str = "inventory.reserved") -> str:
    with transaction.atomic(using="inventory"):
        return str(outbox_append_copy(InventoryOutbox, subject, {"orderId": order_id},
                                      aggregate_id=order_id))


def test_outboxes_of_one_database_are_one_group_in_the_order_given():
    # The test run points every alias at one database, as the devstack does.
    assert outbox_groups([OrdersOutbox, InventoryOutbox, PaymentsOutbox]) == [
        [OrdersOutbox, InventoryOutbox, PaymentsOutbox]]


def test_one_transaction_claims_and_marks_the_rows_of_every_outbox_in_their_order(jetstream):
    orders_ids = [str(order_created(f"order-t{n}")) for n in range(3)]
    inventory_ids = [_reserved(f"order-t{n}") for n in range(2)]

    with CaptureQueriesContext(connections["orders"]) as queries:
        stats = outbox_relay_drain(models=[OrdersOutbox, InventoryOutbox, PaymentsOutbox])

    assert (stats.published, stats.failed, stats.batches) == (5, 0, 2)
    statements = [q["sql"] for q in queries.captured_queries if not q["sql"].startswith(("BEGIN", "COMMIT"))]
    assert len(statements) == 2  # one claiming SELECT, one marking statement
    assert all(table in statements[0] for table in ('"orders_outbox"', '"inventory_outbox"', '"payments_outbox"'))
    # Each outbox's rows reach their stream in the order they were written.
    assert [m.headers["Nats-Msg-Id"] for m in nats_bus.jetstream_messages("ORDERS")] == orders_ids
    assert [m.headers["Nats-Msg-Id"] for m in nats_bus.jetstream_messages("INVENTORY")] == inventory_ids
    for model, ids in ((OrdersOutbox, orders_ids), (InventoryOutbox, inventory_ids)):
        rows = {str(r.id): r for r in model.objects.filter(id__in=ids)}
        assert [rows[i].stream_sequence for i in ids] == [1, 2, 3][:len(ids)]
        assert all(r.published_at is not None for r in rows.values())


def test_a_drain_goes_on_only_with_the_outboxes_whose_batch_was_full(jetstream):
    orders_ids = [str(order_created(f"order-b{n}")) for n in range(5)]
    inventory_id = _reserved("order-b0")

    with CaptureQueriesContext(connections["orders"]) as queries:
        stats = outbox_relay_drain(batch_size=2, models=[OrdersOutbox, InventoryOutbox])

    # Batches: orders 2 + inventory 1 together, then orders 2, then orders 1 (short: done).
    assert (stats.published, stats.failed, stats.batches) == (6, 0, 4)
    claims = [q["sql"] for q in queries.captured_queries if q["sql"].lstrip().startswith(("SELECT", "WITH c0"))]
    assert len(claims) == 3
    assert '"inventory_outbox"' in claims[0] and all('"inventory_outbox"' not in c for c in claims[1:])
    assert [m.headers["Nats-Msg-Id"] for m in nats_bus.jetstream_messages("ORDERS")] == orders_ids
    assert [m.headers["Nats-Msg-Id"] for m in nats_bus.jetstream_messages("INVENTORY")] == [inventory_id]


def test_a_row_that_fails_stays_pending_while_the_other_outboxes_rows_are_marked(jetstream):
    orders_id = str(order_created("order-p1"))
    stray_id = _reserved("order-p1", subject="nowhere.at.all")  # no stream listens: no PubAck

    stats = outbox_relay_drain(models=[OrdersOutbox, InventoryOutbox])

    assert (stats.published, stats.failed) == (1, 1)
    published = OrdersOutbox.objects.get(id=orders_id)
    assert published.published_at is not None and published.stream_sequence == 1
    stray = InventoryOutbox.objects.get(id=stray_id)
    assert stray.published_at is None and stray.attempts == 1 and stray.last_error
    # The next drain tries the stray row again and nothing else.
    again = outbox_relay_drain(models=[OrdersOutbox, InventoryOutbox])
    assert (again.published, again.failed) == (0, 1)
    assert InventoryOutbox.objects.get(id=stray_id).attempts == 2
    assert len(nats_bus.jetstream_messages("ORDERS")) == 1
