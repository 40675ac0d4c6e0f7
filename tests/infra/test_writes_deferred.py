"""a4co.db.writes_deferred: the inbox and outbox rows of a handled message travel with its other
writes, and a transaction whose writes are one statement runs it without BEGIN/COMMIT; and
a4co.db.sql_array, the one-parameter arrays those hot-path statements use."""
from __future__ import annotations

import tempfile
import uuid

import pytest
from django.conf import settings
from django.db import IntegrityError, connections, transaction

from a4co.db import SLOT, sql_array, statement_defer, statements_run_together, writes_deferred, writes_flush
from infra.outbox import DuplicateDeliveryError, inbox_conflict, inbox_record, outbox_append
from inventory.messages import InventoryOutOfStock
from inventory.models import InboxMessage
from inventory.models import OutboxMessage as InventoryOutbox
from tests.conftest import ALL_DATABASES

pytestmark = pytest.mark.django_db(databases=ALL_DATABASES, transaction=True)
DB = "inventory"


def _commands_sent(block) -> str:
    """What libpq sent to PostgreSQL while `block()` ran (its protocol trace)."""
    connections[DB].ensure_connection()
    pgconn = connections[DB].connection.pgconn
    with tempfile.TemporaryFile("w+") as trace:
        pgconn.trace(trace.fileno())
        try:
            block()
        finally:
            pgconn.untrace()
        trace.seek(0)
        return "\n".join(line for line in trace.read().splitlines() if "\tF\t" in line)


def _record(event_id: str) -> None:
    inbox_record(InboxMessage, consumer="c", event_id=event_id, subject="orders.created", aggregate_id="o",
                 deliveries=1)


def test_queued_rows_are_written_with_the_block_and_only_then():
    event_id = str(uuid.uuid4())
    with transaction.atomic(using=DB, durable=True), writes_deferred(DB):
        _record(event_id)
        outbox_id = outbox_append(InventoryOutbox, InventoryOutOfStock(order_id="o-1", unavailable_items=()),
                                  aggregate_id="o-1")
        # Nothing sent yet: another connection would not see it even after a commit of ours.
        assert not InboxMessage.objects.using(DB).filter(event_id=event_id).exists()
        assert not InventoryOutbox.objects.using(DB).filter(id=outbox_id).exists()
    assert InboxMessage.objects.using(DB).filter(event_id=event_id).exists()
    assert InventoryOutbox.objects.using(DB).filter(id=outbox_id).exists()


def test_queued_rows_go_with_the_next_statement_run_together():
    event_id = str(uuid.uuid4())
    with transaction.atomic(using=DB, durable=True), writes_deferred(DB):
        _record(event_id)
        statements_run_together(DB, [("UPDATE inventory_product SET name = name WHERE false", [])])
        assert InboxMessage.objects.using(DB).filter(event_id=event_id).exists()  # sent, in our transaction
        assert connections[DB].connection.info.transaction_status.name == "INTRANS"


def test_an_exception_in_the_block_writes_nothing():
    event_id = str(uuid.uuid4())
    with pytest.raises(ZeroDivisionError), transaction.atomic(using=DB, durable=True), writes_deferred(DB):
        _record(event_id)
        1 / 0  # noqa: B018
    assert not InboxMessage.objects.using(DB).filter(event_id=event_id).exists()
    assert statement_defer(DB, ("SELECT 1", [])) is False  # the queue is gone with the block


def test_a_lone_statement_commits_by_itself_without_begin_or_commit():
    def lone():
        with transaction.atomic(using=DB, durable=True), writes_deferred(DB):
            _record(event_id)

    def with_a_read():
        with transaction.atomic(using=DB, durable=True), writes_deferred(DB):
            connections[DB].cursor().execute("SELECT 1")
            _record(str(uuid.uuid4()))

    event_id = str(uuid.uuid4())
    sent = _commands_sent(lone)
    assert "INSERT INTO" in sent and "BEGIN" not in sent and "COMMIT" not in sent
    assert InboxMessage.objects.using(DB).filter(event_id=event_id).exists()
    sent = _commands_sent(with_a_read)
    assert "BEGIN" in sent and "COMMIT" in sent and "INSERT INTO" in sent


def test_a_duplicate_is_refused_by_the_inbox_constraint_and_nothing_of_the_block_stays():
    event_id = str(uuid.uuid4())
    with transaction.atomic(using=DB, durable=True), writes_deferred(DB):
        _record(event_id)
    with pytest.raises(IntegrityError) as caught, transaction.atomic(using=DB, durable=True), writes_deferred(DB):
        _record(event_id)
        outbox_append(InventoryOutbox, InventoryOutOfStock(order_id="o-2", unavailable_items=()), aggregate_id="o-2")
    assert inbox_conflict(caught.value, InboxMessage)
    assert not InventoryOutbox.objects.using(DB).filter(aggregate_id="o-2").exists()
    # Outside writes_deferred the same duplicate is told at once.
    with pytest.raises(DuplicateDeliveryError), transaction.atomic(using=DB, durable=True):
        _record(event_id)


def test_another_integrity_error_is_not_taken_for_a_duplicate():
    with pytest.raises(IntegrityError) as caught, transaction.atomic(using=DB, durable=True), writes_deferred(DB):
        statement_defer(DB, ("INSERT INTO inventory_product (product_id, name, available_quantity, reserved_quantity,"
                             " sold_quantity, stocked_quantity, updated_at) VALUES ('p', 'p', -1, 0, 0, 0, now())",
                             []))
    assert not inbox_conflict(caught.value, InboxMessage)


def test_needs_an_atomic_block_and_does_not_nest():
    with pytest.raises(RuntimeError), writes_deferred(DB):
        pass
    with pytest.raises(RuntimeError), transaction.atomic(using=DB), writes_deferred(DB), writes_deferred(DB):
        pass


def test_statements_with_with_queries_of_their_own_travel_together():
    # Each INSERTs an outbox row only if its own data-modifying WITH query wrote something; the
    # three go out as one statement (PostgreSQL wants every data-modifying WITH at the top level).
    table = connections[DB].ops.quote_name(InventoryOutbox._meta.db_table)
    ids = [str(uuid.uuid4()) for _ in range(3)]

    def guarded(n: int, write: bool) -> tuple[str, list]:
        guard = f"g{SLOT}"  # the same name in each: SLOT tells them apart
        return (f"WITH {guard} AS (INSERT INTO {table} (id, subject, aggregate_id, payload, created_at, attempts, "
                f"last_error) SELECT %s, 'probe', 'o', '{{\"text\": \"a ) ( paren\"}}'::jsonb, now(), 0, '' "
                f"WHERE %s RETURNING 1) INSERT INTO {table} (id, subject, aggregate_id, payload, created_at, attempts, "
                f"last_error) SELECT %s, 'after', 'o', '{{}}'::jsonb, now(), 0, '' FROM {guard}",
                [str(uuid.uuid4()), write, ids[n]])

    sent = _commands_sent(lambda: statements_run_together(
        DB, [guarded(0, True), guarded(1, False), guarded(2, True)]))
    assert sent.count("\tParse\t") + sent.count("\tQuery\t") == 1, sent
    after = set(InventoryOutbox.objects.using(DB).filter(subject="after").values_list("id", flat=True))
    assert {str(i) for i in after} == {ids[0], ids[2]}
    assert InventoryOutbox.objects.using(DB).filter(subject="probe", payload__text="a ) ( paren").count() == 2


def test_a_statement_with_with_queries_of_its_own_keeps_one_text_and_is_prepared():
    # Its WITH query is named with SLOT, not after its row: run again with other values, it is the
    # same text, so psycopg prepares it (after DB_PREPARE_THRESHOLD runs) and PostgreSQL stops
    # parsing and planning it.
    table = connections[DB].ops.quote_name(InventoryOutbox._meta.db_table)
    statement = (f"WITH guard{SLOT} AS (INSERT INTO {table} (id, subject, aggregate_id, payload, created_at,"
                 f" attempts, last_error) SELECT %s, 'probe', 'o', '{{}}'::jsonb, now(), 0, '' RETURNING 1)"
                 f" INSERT INTO {table} (id, subject, aggregate_id, payload, created_at, attempts, last_error)"
                 f" SELECT %s, 'after', 'o', '{{}}'::jsonb, now(), 0, '' FROM guard{SLOT}")
    runs = settings.DB_PREPARE_THRESHOLD + 1
    for _ in range(runs):
        statements_run_together(DB, [(statement, [str(uuid.uuid4()), str(uuid.uuid4())])])
    assert InventoryOutbox.objects.using(DB).filter(subject="after").count() == runs
    with connections[DB].cursor() as cursor:
        cursor.execute("SELECT statement FROM pg_prepared_statements WHERE statement LIKE %s",
                       ["WITH guard0 AS (INSERT INTO%"])
        assert len(cursor.fetchall()) == 1


def test_writes_flush_sends_what_is_queued_so_that_the_transaction_reads_it():
    event_id = str(uuid.uuid4())
    with transaction.atomic(using=DB, durable=True), writes_deferred(DB):
        _record(event_id)
        assert not InboxMessage.objects.using(DB).filter(event_id=event_id).exists()
        writes_flush(DB)
        assert InboxMessage.objects.using(DB).filter(event_id=event_id).exists()  # in this transaction
        writes_flush(DB)  # nothing queued: nothing sent
    assert InboxMessage.objects.using(DB).filter(event_id=event_id).count() == 1
    writes_flush(DB)  # outside writes_deferred: nothing to do


@pytest.mark.parametrize(("cast", "values", "expected"), [
    ("text[]", ['plain', 'a "quoted" one', 'back\\slash', 'comma,brace}{', ' spaced ', 'NULL', ''],
     ['plain', 'a "quoted" one', 'back\\slash', 'comma,brace}{', ' spaced ', 'NULL', '']),
    ("text::int[]", [3, -1, 0], [3, -1, 0]),
    ("text::uuid[]", [uuid.UUID(int=1), uuid.UUID(int=2)], [uuid.UUID(int=1), uuid.UUID(int=2)]),
    ("text[]", [], []),
])
def test_sql_array_reaches_postgresql_as_the_values_it_was_given(cast, values, expected):
    with connections[DB].cursor() as cursor:
        cursor.execute(f"SELECT %s::{cast}", [sql_array(values)])
        assert cursor.fetchone()[0] == expected
