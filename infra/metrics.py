"""Metrics: `GET /metrics` in the Prometheus text format, right whichever process did the work.

A scrape merges three sources (`metrics_view`):

1. Counters observed where things happen: the relay (Celery workers), the consumer runner
   (`run_consumers`) and django-prometheus's request metrics (web). With
   PROMETHEUS_MULTIPROC_DIR set (`make run` and `make test` set it), prometheus_client keeps
   them in per-process files in that directory and the scrape adds up every process's files,
   dead ones included, so a counter never goes backwards when a process restarts. Unset, the
   scrape exports only the answering process's own registry (tests, manage.py).
   The directory must be emptied before the processes start (the devstack does it).
2. `DatabaseCollector`: business and backlog figures computed from the service databases at
   scrape time with a few aggregate queries, each served by an index (see `metrics_bench`
   for the cost with 100,000 orders). They are right whichever process changed the data, and
   after any restart. The `_total` ones count rows that never leave the counted state, so they
   only go up (unless rows are deleted).
3. `JetStreamCollector`: each durable consumer's backlog as the NATS server reports it,
   through infra.nats, cached for METRICS_NATS_CACHE_SECONDS. NATS being down is reported as
   `a4co_nats_up 0`, never as a failed scrape.

A database that cannot be queried is reported as `a4co_database_up{alias} 0` (its figures are
left out of that scrape and the error is logged); the scrape still answers 200.

Names: the seed's names are kept exactly (`saga_success_rate`, `saga_duration_seconds`,
`saga_compensation_total`, `saga_compensation_success_rate`, `order_status_count`,
`inventory_reservations_active`, `payments_processed_total`); every other one is
`a4co_<component>_<what>_<unit|total>`. docs/operations.md lists them all with their meaning.
"""
from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import math
import os
import threading
import time
from collections.abc import Iterable, Iterator, Sequence

from django.apps import apps
from django.conf import settings
from django.db import DatabaseError, connections, router, transaction
from django.http import HttpResponse
from django.views.decorators.http import require_GET
from prometheus_client import CONTENT_TYPE_PLAIN_0_0_4, REGISTRY, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector

from a4co import clock
from infra import nats as nats_bus

log = logging.getLogger(__name__)

# --- 1. Counters observed in the processes --------------------------------------------------

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)

RELAY_PUBLISHED = Counter(
    "a4co_relay_published_total", "Outbox rows the relay published to JetStream (PubAck received, row marked).",
    ["outbox"])
RELAY_PUBLISH_FAILED = Counter(
    "a4co_relay_publish_failed_total", "Outbox rows whose publish failed; they stay pending and are retried.",
    ["outbox"])
RELAY_ATOMIC_FALLBACKS = Counter(
    "a4co_relay_atomic_fallbacks_total",
    "Atomic batches the relay re-sent message by message, by reason: duplicate (a row was in the stream "
    "already), atomic_disabled (stream without allow_atomic), refused, plain_puback.",
    ["stream", "reason"])
RELAY_PUBLISH_LATENCY = Histogram(
    "a4co_relay_publish_latency_seconds",
    "Time from an event being written to its outbox to the relay marking it published.",
    ["outbox"], buckets=LATENCY_BUCKETS)
CONSUMER_DELIVERIES = Counter(
    "a4co_consumer_deliveries_total",
    "JetStream deliveries settled by the consumer runner, by outcome: handled, duplicate (skipped by "
    "the inbox), retry (handler failed, redelivered later), poison (malformed).",
    ["consumer", "stream", "outcome"])
CONSUMER_REDELIVERIES = Counter(
    "a4co_consumer_redeliveries_total", "Deliveries that were a redelivery (JetStream num_delivered > 1).",
    ["consumer", "stream"])
CONSUMER_DEAD_LETTERED = Counter(
    "a4co_consumer_dead_lettered_total",
    "Messages recorded as dead letters, by source: handler (malformed, or failed on the last "
    "delivery) or advisory (JetStream's MAX_DELIVERIES: never acked).",
    ["consumer", "stream", "source"])
CONSUMER_BATCHES = Counter(
    "a4co_consumer_batches_total",
    "Fetched batches a consumer handled in one transaction, by outcome: committed, or one_by_one "
    "(something in it was not plain: rolled back, then handled message by message).",
    ["consumer", "stream", "outcome"])

OUTCOMES = ("handled", "duplicate", "retry", "poison")
DEAD_LETTER_SOURCES = ("handler", "advisory")


def relay_batch_observe(model, *, published_created_epochs: Sequence[float], failed: int,
                        now: dt.datetime) -> None:
    """Relay hook, called inside the batch's transaction: count the batch once it commits.

    `published_created_epochs` are the creation times (Unix seconds) of the rows marked published
    (they give the outbox-to-stream latency), `failed` how many were not. If the transaction rolls
    back nothing is counted (the rows are re-published).
    """
    outbox = model._meta.app_label
    published = published_created_epochs
    now_epoch = now.timestamp()
    latencies = [max(now_epoch - created, 0.0) for created in published_created_epochs]

    def count() -> None:
        if published:
            RELAY_PUBLISHED.labels(outbox).inc(len(published))
        if failed:
            RELAY_PUBLISH_FAILED.labels(outbox).inc(failed)
        histogram = RELAY_PUBLISH_LATENCY.labels(outbox)
        for seconds in latencies:
            histogram.observe(seconds)

    transaction.on_commit(count, using=router.db_for_write(model))


def relay_atomic_fallback(stream: str, reason: str) -> None:
    """Relay hook (infra.nats): an atomic batch to `stream` goes out message by message instead."""
    RELAY_ATOMIC_FALLBACKS.labels(stream, reason).inc()


def consumer_delivery_settled(route, delivery, outcome) -> None:
    """Consumer runner hook: one delivery of `route` was settled with `outcome` (an Outcome)."""
    stream = route.consumer.stream
    CONSUMER_DELIVERIES.labels(route.name, stream, str(outcome)).inc()
    if delivery.num_delivered > 1:
        CONSUMER_REDELIVERIES.labels(route.name, stream).inc()


def consumer_batch_settled(route, *, committed: bool) -> None:
    """Consumer runner hook: a fetched batch of `route` was committed in one transaction, or not."""
    CONSUMER_BATCHES.labels(route.name, route.consumer.stream, "committed" if committed else "one_by_one").inc()


def consumer_dead_lettered(route, *, source: str) -> None:
    """Consumer runner hook: a message of `route` became a dead letter (source: handler|advisory)."""
    CONSUMER_DEAD_LETTERED.labels(route.name, route.consumer.stream, source).inc()


_series_ready = False
_series_lock = threading.Lock()


def _series_initialize() -> None:
    """Create every known label combination at 0 in this process, so that each series exists
    (and rate() works) before its first event. Idempotent; cheap after the first call."""
    global _series_ready
    if _series_ready:
        return
    from infra.streams import ROUTES

    with _series_lock:
        for label in settings.OUTBOX_MODELS:
            outbox = label.split(".")[0]
            RELAY_PUBLISHED.labels(outbox)
            RELAY_PUBLISH_FAILED.labels(outbox)
            RELAY_PUBLISH_LATENCY.labels(outbox)
        for route in ROUTES:
            stream = route.consumer.stream
            for outcome in OUTCOMES:
                CONSUMER_DELIVERIES.labels(route.name, stream, outcome)
            CONSUMER_REDELIVERIES.labels(route.name, stream)
            for source in DEAD_LETTER_SOURCES:
                CONSUMER_DEAD_LETTERED.labels(route.name, stream, source)
            if route.batch:
                for outcome in ("committed", "one_by_one"):
                    CONSUMER_BATCHES.labels(route.name, stream, outcome)
        _series_ready = True


# --- 2. Figures computed from the databases ---------------------------------------------------

SAGA_DURATION_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0)


def _ratio(part: int, whole: int) -> float:
    return part / whole if whole else math.nan


class _Families:
    """The metric families of one scrape, filled by the probes, then yielded in this order."""

    def __init__(self) -> None:
        self.order_status = GaugeMetricFamily(
            "order_status_count", "Orders currently in each status.", labels=["status"])
        self.saga_instances = GaugeMetricFamily(
            "a4co_saga_instances", "Sagas currently in each status.", labels=["status"])
        self.saga_success_rate = GaugeMetricFamily(
            "saga_success_rate", "Of the sagas that ended (COMPLETED, FAILED, COMPENSATED, or stopped in "
            "COMPENSATION_FAILED), the fraction COMPLETED, over all time (NaN before any ended). For a "
            "recent window divide rates of saga_duration_seconds_count by status.")
        self.saga_duration = HistogramMetricFamily(
            "saga_duration_seconds", "Start to end of each finished saga (finished_at - started_at), by final "
            "status; cumulative over all finished sagas.", labels=["status"])
        self.saga_compensation_total = CounterMetricFamily(
            "saga_compensation_total", "Sagas that started compensating (COMPENSATING, COMPENSATED or "
            "COMPENSATION_FAILED now).")
        self.saga_compensation_success_rate = GaugeMetricFamily(
            "saga_compensation_success_rate", "Of the compensations that ended, the fraction COMPENSATED "
            "(the rest are in COMPENSATION_FAILED), over all time (NaN before any ended).")
        self.saga_past_deadline = GaugeMetricFamily(
            "a4co_saga_past_deadline_instances", "Sagas not ended whose deadline_at has passed (the timeout "
            "sweep has not acted on them yet).")
        self.saga_past_deadline_oldest = GaugeMetricFamily(
            "a4co_saga_past_deadline_oldest_seconds", "How long ago the deadline of the most overdue saga "
            "passed (0 when none is overdue).")
        self.reservations_active = GaugeMetricFamily(
            "inventory_reservations_active", "Stock reservations currently ACTIVE (held for an order).")
        self.payments_processed = CounterMetricFamily(
            "payments_processed_total", "Payments Stripe answered: succeeded (charged; refunded ones included) "
            "or failed (declined or rejected).", labels=["status"])
        self.payments_refunded = CounterMetricFamily(
            "a4co_payments_refunded_total", "Payments refunded (compensation after a charge).")
        self.outbox_pending = GaugeMetricFamily(
            "a4co_outbox_pending_messages", "Outbox rows not yet published, per service outbox.", labels=["outbox"])
        self.outbox_oldest = GaugeMetricFamily(
            "a4co_outbox_oldest_pending_age_seconds", "Age of the oldest unpublished outbox row (0 when none).",
            labels=["outbox"])
        self.dead_letters_open = GaugeMetricFamily(
            "a4co_dead_letters_open_messages", "Dead letters waiting for ops (status OPEN), per service and "
            "consumer.", labels=["service", "consumer"])
        self.database_up = GaugeMetricFamily(
            "a4co_database_up", "1 if the scrape could query this database alias, else 0.", labels=["alias"])
        self.collect_duration = GaugeMetricFamily(
            "a4co_metrics_collect_duration_seconds", "Time this scrape spent on each source.", labels=["source"])

    def __iter__(self) -> Iterator[Metric]:
        return iter(vars(self).values())


def _orders_probe(cursor, families: _Families, now: dt.datetime) -> None:
    model = apps.get_model("orders", "Order")
    cursor.execute(f'SELECT status, count(*) FROM "{model._meta.db_table}" GROUP BY status')
    counts = dict(cursor.fetchall())
    for status in model.Status.values:
        families.order_status.add_metric([status], counts.get(status, 0))


@dataclasses.dataclass(frozen=True)
class _SagaAggregate:
    """Per final status: how many finished sagas, their total duration, cumulative bucket counts."""

    count: dict[str, int]
    seconds: dict[str, float]
    buckets: dict[str, tuple[int, ...]]

    def __add__(self, other: _SagaAggregate) -> _SagaAggregate:
        statuses = set(self.count) | set(other.count)
        zero = (0,) * len(SAGA_DURATION_BUCKETS)
        return _SagaAggregate(
            count={s: self.count.get(s, 0) + other.count.get(s, 0) for s in statuses},
            seconds={s: self.seconds.get(s, 0.0) + other.seconds.get(s, 0.0) for s in statuses},
            buckets={s: tuple(a + b for a, b in zip(self.buckets.get(s, zero), other.buckets.get(s, zero),
                                                       strict=True)) for s in statuses})


def _saga_finished_aggregate(cursor, table: str, *, since: dt.datetime | None,
                             until: dt.datetime | None) -> _SagaAggregate:
    """Aggregate the sagas with since <= finished_at < until (either bound optional), in one
    pass over the partial index saga_finished_metrics (finished_at) INCLUDE (status, started_at)."""
    buckets = ", ".join(f"count(*) FILTER (WHERE d <= {float(b)!r})" for b in SAGA_DURATION_BUCKETS)
    conditions, params = ["finished_at IS NOT NULL"], []
    if since is not None:
        conditions.append("finished_at >= %s")
        params.append(since)
    if until is not None:
        conditions.append("finished_at < %s")
        params.append(until)
    cursor.execute(
        f"SELECT status, count(*), coalesce(sum(d), 0), {buckets} FROM ("
        f" SELECT status, date_part('epoch', finished_at - started_at) AS d FROM \"{table}\""
        f" WHERE {' AND '.join(conditions)}) s GROUP BY status", params)
    rows = cursor.fetchall()
    return _SagaAggregate(count={r[0]: int(r[1]) for r in rows}, seconds={r[0]: float(r[2]) for r in rows},
                          buckets={r[0]: tuple(int(c) for c in r[3:]) for r in rows})


@dataclasses.dataclass(frozen=True)
class _SettledSagas:
    """The aggregate of every saga that finished before `until`, kept by this process.

    A finished saga never changes again (a terminal status is final; started_at and finished_at
    are written once), so this part only has to be extended, never recomputed. Each scrape adds
    the sagas finished since `until` (a small range of the finished_at index). `until` trails
    the clock by METRICS_SAGA_SETTLE_SECONDS, far longer than any transaction that sets
    finished_at takes to commit; should one ever commit later than that, the full recount every
    METRICS_SAGA_RECOUNT_SECONDS picks it up (the counts only ever go up).
    """

    database: tuple
    until: dt.datetime
    aggregate: _SagaAggregate
    counted_at: float  # time.monotonic() of the last full recount


SETTLED_ADVANCE_SECONDS = 60
_settled: _SettledSagas | None = None
_settled_lock = threading.Lock()


def saga_cache_clear() -> None:
    """Forget the settled saga aggregate (tests, whose rows roll back; a restored database)."""
    global _settled
    with _settled_lock:
        _settled = None


def _saga_settled(cursor, table: str, database: tuple, now: dt.datetime) -> _SettledSagas:
    global _settled
    horizon = now - dt.timedelta(seconds=settings.METRICS_SAGA_SETTLE_SECONDS)
    with _settled_lock:
        settled = _settled
        stale = (settled is None or settled.database != database or settled.until > horizon
                 or time.monotonic() - settled.counted_at > settings.METRICS_SAGA_RECOUNT_SECONDS)
        if stale:
            settled = _SettledSagas(database, horizon, _saga_finished_aggregate(cursor, table, since=None,
                                                                                 until=horizon), time.monotonic())
        elif (horizon - settled.until).total_seconds() >= SETTLED_ADVANCE_SECONDS:
            more = _saga_finished_aggregate(cursor, table, since=settled.until, until=horizon)
            settled = dataclasses.replace(settled, until=horizon, aggregate=settled.aggregate + more)
        _settled = settled
        return settled


def _saga_probe(cursor, families: _Families, now: dt.datetime) -> None:
    from saga.definition import TERMINAL, SagaStatus

    table = apps.get_model("saga", "SagaInstance")._meta.db_table
    database = settings.DATABASES[router.db_for_read(apps.get_model("saga", "SagaInstance"))]
    settled = _saga_settled(cursor, table, (database["HOST"], str(database["PORT"]), database["NAME"]), now)
    finished = settled.aggregate + _saga_finished_aggregate(cursor, table, since=settled.until, until=None)
    # Sagas still running (or stopped in COMPENSATION_FAILED) are few: index range on saga_status.
    running = [s.value for s in SagaStatus if s not in TERMINAL]
    cursor.execute(f'SELECT status, count(*) FROM "{table}" WHERE status = ANY(%s) GROUP BY status', [running])
    count = {**{s.value: 0 for s in SagaStatus}, **dict(cursor.fetchall())}
    for status in sorted(TERMINAL):
        count[status.value] = finished.count.get(status.value, 0)
    for status in SagaStatus:
        families.saga_instances.add_metric([status.value], count[status.value])
    zero = (0,) * len(SAGA_DURATION_BUCKETS)
    for status in sorted(TERMINAL):
        points = [(str(float(bound)), cumulative) for bound, cumulative
                  in zip(SAGA_DURATION_BUCKETS, finished.buckets.get(status.value, zero), strict=True)]
        points.append(("+Inf", finished.count.get(status.value, 0)))
        families.saga_duration.add_metric([status.value], points, finished.seconds.get(status.value, 0.0))
    S = SagaStatus
    ended = count[S.COMPLETED] + count[S.FAILED] + count[S.COMPENSATED] + count[S.COMPENSATION_FAILED]
    families.saga_success_rate.add_metric([], _ratio(count[S.COMPLETED], ended))
    families.saga_compensation_total.add_metric(
        [], count[S.COMPENSATING] + count[S.COMPENSATED] + count[S.COMPENSATION_FAILED])
    families.saga_compensation_success_rate.add_metric(
        [], _ratio(count[S.COMPENSATED], count[S.COMPENSATED] + count[S.COMPENSATION_FAILED]))

    # deadline_at is only set while a saga waits on something (partial index saga_pending_deadline).
    cursor.execute(f'SELECT count(*), min(deadline_at) FROM "{table}" WHERE deadline_at <= %s'
                   " AND NOT (status = ANY(%s))", [now, [s.value for s in TERMINAL]])
    overdue, oldest = cursor.fetchone()
    families.saga_past_deadline.add_metric([], overdue)
    families.saga_past_deadline_oldest.add_metric([], (now - oldest).total_seconds() if oldest else 0.0)


def _reservations_probe(cursor, families: _Families, now: dt.datetime) -> None:
    table = apps.get_model("inventory", "Reservation")._meta.db_table
    cursor.execute(f"SELECT count(*) FROM \"{table}\" WHERE status = 'ACTIVE'")  # reservation_active_expiry
    families.reservations_active.add_metric([], cursor.fetchone()[0])


def _payments_probe(cursor, families: _Families, now: dt.datetime) -> None:
    table = apps.get_model("payments", "Payment")._meta.db_table
    cursor.execute(f'SELECT status, count(*) FROM "{table}" GROUP BY status')  # payments_payment_status_idx
    counts = dict(cursor.fetchall())
    families.payments_processed.add_metric(["succeeded"], counts.get("SUCCEEDED", 0) + counts.get("REFUNDED", 0))
    families.payments_processed.add_metric(["failed"], counts.get("FAILED", 0))
    families.payments_refunded.add_metric([], counts.get("REFUNDED", 0))


def _outbox_probe(model):
    def probe(cursor, families: _Families, now: dt.datetime) -> None:
        outbox = model._meta.app_label
        # The relay's partial index (<app>_outbox_pending) holds exactly the pending rows.
        cursor.execute(f'SELECT count(*), min(created_at) FROM "{model._meta.db_table}" WHERE published_at IS NULL')
        pending, oldest = cursor.fetchone()
        families.outbox_pending.add_metric([outbox], pending)
        families.outbox_oldest.add_metric([outbox], max((now - oldest).total_seconds(), 0.0) if oldest else 0.0)
    return probe


def _dead_letters_probe(model):
    def probe(cursor, families: _Families, now: dt.datetime) -> None:
        from infra.streams import CONSUMER_NAMES, ROUTES

        service = model._meta.app_label
        cursor.execute(f"SELECT consumer, count(*) FROM \"{model._meta.db_table}\" WHERE status = 'OPEN'"
                       " GROUP BY consumer")
        counts = dict(cursor.fetchall())
        consumers = {route.name for route in ROUTES if route.service == service} | set(counts)
        for consumer in sorted(consumers, key=lambda c: (c not in CONSUMER_NAMES, c)):
            families.dead_letters_open.add_metric([service, consumer], counts.get(consumer, 0))
    return probe


def _probes() -> list[tuple[str, object]]:
    """(alias, probe) pairs, grouped by database alias in the order they run."""
    from infra.deadletters import dead_letter_models
    from infra.outbox import outbox_models

    probes = [
        (apps.get_model("orders", "Order"), _orders_probe),
        (apps.get_model("saga", "SagaInstance"), _saga_probe),
        (apps.get_model("inventory", "Reservation"), _reservations_probe),
        (apps.get_model("payments", "Payment"), _payments_probe),
    ]
    probes += [(model, _outbox_probe(model)) for model in outbox_models()]
    probes += [(model, _dead_letters_probe(model)) for model in dead_letter_models()]
    by_alias: dict[str, list] = {}
    for model, probe in probes:
        by_alias.setdefault(router.db_for_read(model), []).append(probe)
    return [(alias, probe) for alias, group in by_alias.items() for probe in group]


class DatabaseCollector:
    """Business and backlog figures from the service databases, computed at each collect().

    Read-only, one connection per alias (the calling thread's), no locks taken. A database
    error on an alias skips that alias's remaining probes and reports `a4co_database_up 0`.
    """

    def collect(self) -> Iterable[Metric]:
        families = _Families()
        now = clock.now()
        probes = _probes()
        aliases = list(dict.fromkeys(alias for alias, _ in probes))
        for alias in aliases:
            started = time.perf_counter()
            up = 1
            try:
                with connections[alias].cursor() as cursor:
                    for probe_alias, probe in probes:
                        if probe_alias == alias:
                            probe(cursor, families, now)
            except DatabaseError as exc:
                up = 0
                log.warning("metrics: database %s could not be queried: %s", alias, exc)
            families.database_up.add_metric([alias], up)
            families.collect_duration.add_metric([f"db:{alias}"], time.perf_counter() - started)
        yield from families


# --- 3. JetStream consumer backlog -----------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class _NatsReading:
    states: tuple[nats_bus.ConsumerState, ...]
    up: bool
    seconds: float


_nats_cache: tuple[float, _NatsReading] | None = None
_nats_lock = threading.Lock()


def _nats_reading() -> _NatsReading:
    """The consumers' states, at most METRICS_NATS_CACHE_SECONDS old; one query at a time."""
    global _nats_cache
    with _nats_lock:
        if _nats_cache is not None and _nats_cache[0] > time.monotonic():
            return _nats_cache[1]
        from infra.streams import ROUTES

        started = time.perf_counter()
        try:
            states = nats_bus.jetstream_consumer_states([route.consumer for route in ROUTES],
                                                        timeout=settings.METRICS_NATS_TIMEOUT_SECONDS)
            reading = _NatsReading(tuple(states), up=True, seconds=time.perf_counter() - started)
        except nats_bus.NatsUnavailableError as exc:
            log.warning("metrics: JetStream consumer states unavailable: %s", exc)
            reading = _NatsReading((), up=False, seconds=time.perf_counter() - started)
        _nats_cache = (time.monotonic() + settings.METRICS_NATS_CACHE_SECONDS, reading)
        return reading


def nats_cache_clear() -> None:
    """Forget the cached JetStream reading (tests; settings changes)."""
    global _nats_cache
    with _nats_lock:
        _nats_cache = None


class JetStreamCollector:
    """`a4co_nats_up` and each durable consumer's backlog (see `_nats_reading` for the caching)."""

    def collect(self) -> Iterable[Metric]:
        reading = _nats_reading()
        yield GaugeMetricFamily("a4co_nats_up", "1 if the last JetStream query answered, else 0.",
                                value=1 if reading.up else 0)
        families = {
            "num_pending": GaugeMetricFamily(
                "a4co_jetstream_consumer_pending_messages",
                "Messages in the stream for this consumer not delivered yet (JetStream num_pending).",
                labels=["stream", "consumer"]),
            "num_ack_pending": GaugeMetricFamily(
                "a4co_jetstream_consumer_ack_pending_messages",
                "Messages delivered and not acked yet (JetStream num_ack_pending).", labels=["stream", "consumer"]),
            "num_redelivered": GaugeMetricFamily(
                "a4co_jetstream_consumer_redelivered_messages",
                "Messages delivered more than once and not acked yet (JetStream num_redelivered).",
                labels=["stream", "consumer"]),
        }
        for state in reading.states:
            for field, family in families.items():
                family.add_metric([state.stream, state.name], getattr(state, field))
        yield from families.values()
        yield GaugeMetricFamily("a4co_metrics_nats_query_duration_seconds",
                                "Time the last (possibly cached) JetStream query took.", value=reading.seconds)


# --- The view ----------------------------------------------------------------------------------------


def multiprocess_dir() -> str:
    """PROMETHEUS_MULTIPROC_DIR, or "" when every process exports only its own counters."""
    return os.environ.get("PROMETHEUS_MULTIPROC_DIR", "")


class _Scrape:
    """The collectors of one scrape, in exposition order."""

    def __init__(self, collectors: Sequence) -> None:
        self.collectors = collectors

    def collect(self) -> Iterable[Metric]:
        for collector in self.collectors:
            yield from collector.collect()


def scrape_collectors() -> list:
    """The process counters (every process's in multiprocess mode), the database and JetStream."""
    _series_initialize()
    path = multiprocess_dir()
    counters = MultiProcessCollector(None, path=path) if path else REGISTRY
    return [counters, DatabaseCollector(), JetStreamCollector()]


@require_GET
def metrics_view(request) -> HttpResponse:
    """GET /metrics: the Prometheus text format (version 0.0.4). Open, like the probes: keep it
    off the public internet at the proxy."""
    body = generate_latest(_Scrape(scrape_collectors()))
    return HttpResponse(body, content_type=CONTENT_TYPE_PLAIN_0_0_4)
