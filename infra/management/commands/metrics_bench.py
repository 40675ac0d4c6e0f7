"""metrics_bench: how long the /metrics database queries take with many orders.

Writes N synthetic orders with their sagas, payments, reservations, outbox rows and a few dead
letters into the configured databases (generate_series, one INSERT per table and alias),
VACUUM ANALYZEs them (as autovacuum would have), then times DatabaseCollector.collect()
once cold (a process's first scrape counts every finished saga) and then --repeat times, and
prints the median, the spread and the time per database alias. The rows are
deleted again at the end unless --keep. Rows of an earlier run are always deleted first.

Synthetic rows are recognisable: order ids start with BENCH_PREFIX, customers are
`metrics-bench`, and they are spread over the last 30 days like real traffic (the few sagas
still running are recent).
"""
from __future__ import annotations

import statistics
import time

from django.apps import apps
from django.conf import settings
from django.core.management.base import BaseCommand, CommandError
from django.db import connections, router, transaction

from infra.metrics import DatabaseCollector, saga_cache_clear

BENCH_PREFIX = "bbbbbbbb-0000-4000-8000-"
CUSTOMER = "metrics-bench"
# The bench order id for series number n.
ORDER_ID = f"('{BENCH_PREFIX}' || lpad(to_hex(n), 12, '0'))"

# mod(n, 100) -> the order's story. Finished ones spread over 30 days, running ones recent.
#  0-84 confirmed | 85-88 cancelled (refunded / cancelled before charge) | 89-91 out of stock
#  92-94 cancelled after a declined card | 95-97 paying | 98 compensating | 99 compensation failed
CASE_ORDER = """CASE WHEN k < 85 THEN 'CONFIRMED' WHEN k < 89 THEN 'CANCELLED' WHEN k < 92 THEN 'FAILED'
                     WHEN k < 95 THEN 'CANCELLED' ELSE 'PENDING' END"""
CASE_SAGA = """CASE WHEN k < 85 THEN 'COMPLETED' WHEN k < 89 THEN 'COMPENSATED' WHEN k < 92 THEN 'FAILED'
                    WHEN k < 95 THEN 'COMPENSATED' WHEN k < 98 THEN 'PAYMENT_PROCESSING'
                    WHEN k < 99 THEN 'COMPENSATING' ELSE 'COMPENSATION_FAILED' END"""
CASE_PAYMENT = """CASE WHEN k < 85 THEN 'SUCCEEDED' WHEN k < 89 THEN (CASE WHEN mod(n, 2) = 0 THEN 'REFUNDED'
                       ELSE 'CANCELED' END) WHEN k < 95 THEN 'FAILED' WHEN k < 98 THEN 'PROCESSING'
                       ELSE 'CANCELED' END"""
CASE_RESERVATION = """CASE WHEN k < 85 THEN 'COMMITTED' WHEN k < 95 THEN 'RELEASED' WHEN k < 98 THEN 'ACTIVE'
                           ELSE 'RELEASED' END"""
# Creation time: finished orders over the last 30 days, running ones in the last 5 minutes.
CREATED = """(now() - CASE WHEN k < 95 THEN (n::float8 / %(orders)s) * interval '30 days'
                           ELSE (mod(n, 300)) * interval '1 second' END)"""
SERIES = "FROM (SELECT n, mod(n, 100) AS k FROM generate_series(1, %(orders)s) AS n) s"


def _table(label: str) -> tuple[str, str]:
    model = apps.get_model(label)
    return router.db_for_write(model), connections[router.db_for_write(model)].ops.quote_name(model._meta.db_table)


class Command(BaseCommand):
    help = ("Insert N synthetic orders (with sagas, payments, reservations, outbox rows) into the configured "
            "databases and time the /metrics database queries (median of --repeat). Deletes them afterwards "
            "unless --keep. Refuses to run with DEBUG off unless --force.")

    def add_arguments(self, parser):
        parser.add_argument("--orders", type=int, default=100_000, help="How many orders to insert (default 100000).")
        parser.add_argument("--repeat", type=int, default=10, help="How many timed scrapes (default 10).")
        parser.add_argument("--keep", action="store_true", help="Leave the synthetic rows in the databases.")
        parser.add_argument("--force", action="store_true",
                            help="Run even with DEBUG off (it writes fake orders into the configured databases).")

    def handle(self, *args, orders: int, repeat: int, keep: bool, force: bool, **options):
        if orders < 1 or repeat < 1:
            raise CommandError("--orders and --repeat must be at least 1")
        if not settings.DEBUG and not force:
            raise CommandError("refusing to write fake orders with DEBUG off; pass --force if this database is "
                               "meant for it")
        self._delete()
        started = time.perf_counter()
        self._insert(orders)
        inserted = time.perf_counter() - started
        self.stdout.write(f"inserted {orders} orders with sagas, payments, reservations and "
                          f"{4 * orders} outbox rows in {inserted:.1f} s; VACUUM ANALYZE done")
        try:
            self._measure(repeat)
        finally:
            if not keep:
                self._delete()
                self.stdout.write("synthetic rows deleted (--keep leaves them)")

    def _measure(self, repeat: int) -> None:
        collector = DatabaseCollector()
        saga_cache_clear()
        started = time.perf_counter()
        list(collector.collect())  # a process's first scrape: counts every finished saga once
        first = time.perf_counter() - started
        totals, per_source = [], {}
        for _ in range(repeat):
            started = time.perf_counter()
            families = list(collector.collect())
            totals.append(time.perf_counter() - started)
            for family in families:
                if family.name == "a4co_metrics_collect_duration_seconds":
                    for sample in family.samples:
                        per_source.setdefault(sample.labels["source"], []).append(sample.value)
        counts = {f.name: f for f in families}
        confirmed = next(s.value for s in counts["order_status_count"].samples if s.labels["status"] == "CONFIRMED")
        self.stdout.write(f"orders in the database: {sum(s.value for s in counts['order_status_count'].samples):.0f} "
                          f"(CONFIRMED {confirmed:.0f})")
        self.stdout.write(f"first DatabaseCollector.collect() of a process (all finished sagas counted): "
                          f"{first * 1000:.1f} ms")
        self.stdout.write(f"DatabaseCollector.collect() x{repeat} after it: "
                          f"median {statistics.median(totals) * 1000:.1f} ms, "
                          f"min {min(totals) * 1000:.1f} ms, max {max(totals) * 1000:.1f} ms")
        for source, values in per_source.items():
            self.stdout.write(f"  {source}: median {statistics.median(values) * 1000:.1f} ms")

    def _insert(self, orders: int) -> None:
        params = {"orders": orders}
        alias, order_t = _table("orders.Order")
        _, saga_t = _table("saga.SagaInstance")
        with transaction.atomic(using=alias), connections[alias].cursor() as cursor:
            cursor.execute(
                f"INSERT INTO {order_t} (id, owner_id, customer_id, status, currency, total_amount, payment_method,"
                " reservation_ttl_seconds, cancellation_reason, failure_reason, payment_id, reservation_id,"
                " idempotency_key, request_fingerprint, created_at, updated_at)"
                f" SELECT {ORDER_ID}::uuid, 0, '{CUSTOMER}', {CASE_ORDER}, 'EUR', (mod(n, 500)) + 9.99, 'pm_card_visa',"
                f" 900, '', '', '', '', NULL, '', {CREATED}, {CREATED} {SERIES}", params)
            cursor.execute(
                f"INSERT INTO {saga_t} (id, order_id, status, current_step, compensation_reason,"
                " compensation_attempts, compensations_pending, saga_deadline_at, step_deadline_at, deadline_at,"
                " events_ignored, started_at, updated_at, finished_at)"
                f" SELECT gen_random_uuid(), {ORDER_ID}::uuid, {CASE_SAGA}, 'bench', '', 0, '[]'::jsonb,"
                f" {CREATED} + interval '5 minutes', NULL,"
                # Running sagas wait on a deadline; one in a thousand is overdue (the sweep is behind).
                f" CASE WHEN k < 95 OR k = 99 THEN NULL WHEN mod(n, 1000) = 950 THEN now() - interval '90 seconds'"
                f"      ELSE {CREATED} + interval '2 minutes' END,"
                f" 0, {CREATED}, {CREATED},"
                f" CASE WHEN k < 85 THEN {CREATED} + (0.3 + (mod(n, 40)) * 0.1) * interval '1 second'"
                f"      WHEN k < 95 THEN {CREATED} + (2 + (mod(n, 300))) * interval '1 second' ELSE NULL END {SERIES}",
                params)
            self._outbox(cursor, "orders.OutboxMessage", params, ("orders.created", "orders.confirmed"))
        alias, payment_t = _table("payments.Payment")
        with transaction.atomic(using=alias), connections[alias].cursor() as cursor:
            cursor.execute(
                f"INSERT INTO {payment_t} (id, order_id, customer_id, amount, currency, payment_method, status,"
                " stripe_payment_intent_id, failure_reason, attempts, refunded_amount, stripe_refund_id,"
                " refund_reason, created_at, updated_at)"
                f" SELECT gen_random_uuid(), {ORDER_ID}, '{CUSTOMER}', (mod(n, 500)) + 9.99, 'EUR', 'pm_card_visa',"
                f" {CASE_PAYMENT}, 'pi_bench_' || n, '', 1, 0, '', '', {CREATED}, {CREATED} {SERIES}"
                " WHERE k NOT BETWEEN 89 AND 91", params)
            self._outbox(cursor, "payments.OutboxMessage", params, ("payments.succeeded",))
        alias, reservation_t = _table("inventory.Reservation")
        with transaction.atomic(using=alias), connections[alias].cursor() as cursor:
            cursor.execute(
                f"INSERT INTO {reservation_t} (id, order_id, status, expires_at, release_reason, created_at,"
                f" updated_at) SELECT gen_random_uuid(), {ORDER_ID}, {CASE_RESERVATION},"
                f" {CREATED} + interval '15 minutes', '', {CREATED}, {CREATED} {SERIES}"
                " WHERE k NOT BETWEEN 89 AND 91", params)
            self._outbox(cursor, "inventory.OutboxMessage", params, ("inventory.reserved",))
        for service in ("orders", "inventory", "payments"):
            alias, dead_t = _table(f"{service}.DeadLetter")
            with connections[alias].cursor() as cursor:
                # 100 resolved and 3 open dead letters per service.
                cursor.execute(
                    f"INSERT INTO {dead_t} (id, consumer, stream, stream_sequence, subject, event_id, aggregate_id,"
                    " payload, error, deliveries, first_failed_at, last_failed_at, status, resolved_by,"
                    " resolution_note, redelivered_event_id)"
                    f" SELECT gen_random_uuid(), 'metrics-bench', 'BENCH', n, 'bench', '', {ORDER_ID}, '{{}}',"
                    " 'bench', 3, now(), now(), CASE WHEN n <= 3 THEN 'OPEN' ELSE 'DISCARDED' END, '', '', ''"
                    " FROM generate_series(1, 103) AS n")
        self._vacuum()

    def _outbox(self, cursor, label: str, params: dict, subjects: tuple[str, ...]) -> None:
        _, table = _table(label)
        for subject in subjects:
            # All published (the relay keeps up), except the newest 20 of the first subject.
            cursor.execute(
                f"INSERT INTO {table} (id, subject, aggregate_id, payload, created_at, published_at,"
                " stream_sequence, attempts, last_error)"
                f" SELECT gen_random_uuid(), %(subject)s, {ORDER_ID},"
                f" jsonb_build_object('orderId', {ORDER_ID}, 'occurredAt', {CREATED}),"
                f" {CREATED}, CASE WHEN %(pending)s AND n > %(orders)s - 20 THEN NULL"
                f" ELSE {CREATED} + interval '20 milliseconds' END, n, 0, '' {SERIES}",
                {**params, "subject": subject, "pending": subject == subjects[0]})

    def _vacuum(self) -> None:
        labels = ["orders.Order", "saga.SagaInstance", "payments.Payment", "inventory.Reservation",
                  *settings.OUTBOX_MODELS, "orders.DeadLetter", "inventory.DeadLetter", "payments.DeadLetter"]
        for label in labels:
            alias, table = _table(label)
            with connections[alias].cursor() as cursor:
                cursor.execute(f"VACUUM ANALYZE {table}")

    def _delete(self) -> None:
        like = BENCH_PREFIX + "%"
        alias, order_t = _table("orders.Order")
        _, saga_t = _table("saga.SagaInstance")
        with transaction.atomic(using=alias), connections[alias].cursor() as cursor:
            cursor.execute(f"DELETE FROM {saga_t} WHERE order_id IN (SELECT id FROM {order_t}"
                           " WHERE customer_id = %s)", [CUSTOMER])
            cursor.execute(f"DELETE FROM {order_t} WHERE customer_id = %s", [CUSTOMER])
        for label in ("payments.Payment", "inventory.Reservation"):
            alias, table = _table(label)
            with connections[alias].cursor() as cursor:
                cursor.execute(f"DELETE FROM {table} WHERE order_id LIKE %s", [like])
        for label in settings.OUTBOX_MODELS:
            alias, table = _table(label)
            with connections[alias].cursor() as cursor:
                cursor.execute(f"DELETE FROM {table} WHERE aggregate_id LIKE %s", [like])
        for service in ("orders", "inventory", "payments"):
            alias, table = _table(f"{service}.DeadLetter")
            with connections[alias].cursor() as cursor:
                cursor.execute(f"DELETE FROM {table} WHERE consumer = 'metrics-bench'")
