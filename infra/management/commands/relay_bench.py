import threading
import time
from collections import Counter

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError
from django.db import connections, transaction

from infra import nats as nats_bus
from infra.machine import machine_line, machine_probed
from infra.relay import outbox_relay_drain
from infra.streams import STREAMS
from orders.models import OutboxMessage

BENCH_STREAM = "A4CO_BENCH"
BENCH_SUBJECT = "a4cobench.relay"


class Command(BaseCommand):
    help = ("Benchmark the relay: fill the orders outbox with N messages (realistic ~400-byte payloads) on a "
            "scratch subject, time the drain to JetStream (file storage, acks awaited; atomic batches of "
            "RELAY_ATOMIC_BATCH_MAX where the server has them), print messages/s, then remove the rows and the "
            "scratch stream.")

    def add_arguments(self, parser):
        parser.add_argument("--messages", type=int, default=100_000, help="How many messages (default 100000).")
        parser.add_argument("--batch", type=int, default=1000, help="Relay batch size (default 1000).")
        parser.add_argument("--relays", type=int, default=1,
                            help="Relays draining in parallel (threads; SKIP LOCKED shares the rows).")
        parser.add_argument("--per-message", action="store_true",
                            help="Declare the scratch stream without allow_atomic, so that the relay falls back "
                                 "to one publish per message (the path for NATS before 2.12).")

    def handle(self, *args, messages: int, batch: int, relays: int, per_message: bool, **options):
        if messages < 1 or batch < 1 or relays < 1:
            raise CommandError("--messages, --batch and --relays must be at least 1")
        # Measure the relay, not Django's debug cursor (which DEBUG, the dev default, turns on).
        settings.DEBUG = False
        if OutboxMessage.objects.filter(published_at__isnull=True).exists():
            raise CommandError("the orders outbox has pending rows: run the benchmark on an idle system")
        stream = nats_bus.StreamSpec(BENCH_STREAM, (BENCH_SUBJECT,), atomic=not per_message)
        nats_bus.jetstream_delete_streams_destroying_data([BENCH_STREAM])
        nats_bus.jetstream_ensure([stream], [])
        try:
            self._fill(messages)
            self.stdout.write(machine_line(machine_probed()))
            self.stdout.write(f"outbox filled with {messages} rows; draining with {relays} relay(s), batch {batch}"
                              f"{', one publish per message' if per_message else ''}")
            started = time.perf_counter()
            totals = []

            def drain():
                totals.append(outbox_relay_drain(batch_size=batch, max_batches=10**9,
                                                 streams=(*STREAMS, stream)).published)
                connections.close_all()

            threads = [threading.Thread(target=drain) for _ in range(relays)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            seconds = time.perf_counter() - started
            left = OutboxMessage.objects.filter(subject=BENCH_SUBJECT, published_at__isnull=True)
            if left.exists():
                errors = Counter(left.values_list("last_error", flat=True))
                raise CommandError(f"{left.count()} rows left pending after a failed batch: {errors.most_common(2)}")
            stored = nats_bus.jetstream_stream_message_count(BENCH_STREAM)
            self.stdout.write(f"published {sum(totals)} messages in {seconds:.2f}s -> "
                              f"{sum(totals) / seconds:,.0f} messages/s (stream holds {stored})")
            if stored != messages:
                raise CommandError(f"the stream holds {stored} messages, expected {messages}")
        finally:
            OutboxMessage.objects.filter(subject=BENCH_SUBJECT).delete()
            nats_bus.jetstream_delete_streams_destroying_data([BENCH_STREAM])

    def _fill(self, messages: int) -> None:
        table = OutboxMessage._meta.db_table
        with transaction.atomic(using="orders"), connections["orders"].cursor() as cursor:
            # Parameters cast: with server-side binding PostgreSQL types them itself, and cannot
            # inside jsonb_build_object.
            cursor.execute(
                f"INSERT INTO {table} (id, subject, aggregate_id, payload, created_at, attempts, last_error)"
                " SELECT gen_random_uuid(), %s::text, 'bench', jsonb_build_object("
                "'eventId', gen_random_uuid(), 'eventType', %s::text, 'occurredAt', now(), 'schemaVersion', 1,"
                "'orderId', gen_random_uuid(), 'customerId', 'customer-' || g, 'totalAmount', '42.50',"
                "'currency', 'EUR', 'items', jsonb_build_array("
                "jsonb_build_object('productId', 'aceite-oliva-1l', 'quantity', 2, 'unitPrice', '12.50'),"
                "jsonb_build_object('productId', 'miel-azahar-500g', 'quantity', 1, 'unitPrice', '17.50'))),"
                " clock_timestamp(), 0, '' FROM generate_series(1, %s::int) AS g",
                [BENCH_SUBJECT, BENCH_SUBJECT, messages])
