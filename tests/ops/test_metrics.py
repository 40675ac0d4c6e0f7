"""GET /metrics in-process, against the real PostgreSQL and NATS of the test run: every seed name
is there, the figures follow the databases, failures are reported as 0 instead of failing the
scrape, and counters observed in other processes are added up."""
from __future__ import annotations

import datetime as dt
import os
import subprocess
import sys
import uuid
from decimal import Decimal
from pathlib import Path

import pytest
from django.db import OperationalError

from a4co import clock as the_clock
from infra import metrics
from infra import nats as nats_bus
from inventory.models import Reservation
from orders.models import Order
from orders.models import OutboxMessage as OrdersOutbox
from payments.models import DeadLetter as PaymentsDeadLetter
from payments.models import Payment
from saga.models import SagaInstance
from tests.conftest import ALL_DATABASES

pytestmark = pytest.mark.django_db(databases=ALL_DATABASES)
REPO = Path(__file__).resolve().parents[2]

SEED_NAMES = {
    "saga_success_rate", "saga_duration_seconds_bucket", "saga_duration_seconds_sum", "saga_duration_seconds_count",
    "saga_compensation_total", "saga_compensation_success_rate", "order_status_count",
    "inventory_reservations_active", "payments_processed_total",
}
MACHINERY_NAMES = {
    "a4co_outbox_pending_messages", "a4co_outbox_oldest_pending_age_seconds",
    "a4co_relay_published_total", "a4co_relay_publish_failed_total", "a4co_relay_publish_latency_seconds_bucket",
    "a4co_consumer_deliveries_total", "a4co_consumer_redeliveries_total", "a4co_consumer_dead_lettered_total",
    "a4co_dead_letters_open_messages", "a4co_saga_past_deadline_instances", "a4co_saga_past_deadline_oldest_seconds",
    "a4co_saga_instances", "a4co_nats_up", "a4co_jetstream_consumer_pending_messages",
    "a4co_jetstream_consumer_ack_pending_messages", "a4co_database_up", "a4co_metrics_collect_duration_seconds",
    "django_http_requests_before_middlewares_total",
}


def given_saga(order_status: str, saga_status: str, *, took: float | None = None, ago: float = 60.0,
               deadline_in: float | None = None) -> Order:
    """An order and its saga, started `ago` seconds ago; finished after `took` seconds if given."""
    now = the_clock.now()
    started = now - dt.timedelta(seconds=ago)
    order = Order.objects.create(owner_id=1, customer_id="c", status=order_status, total_amount=Decimal("10"),
                                 reservation_ttl_seconds=900, created_at=started)
    SagaInstance.objects.create(
        order=order, status=saga_status, saga_deadline_at=started + dt.timedelta(minutes=5), started_at=started,
        finished_at=started + dt.timedelta(seconds=took) if took is not None else None,
        deadline_at=now + dt.timedelta(seconds=deadline_in) if deadline_in is not None else None)
    return order


def given_payment(status: str) -> None:
    Payment.objects.create(order_id=str(uuid.uuid4()), customer_id="c", amount=Decimal("10"), currency="EUR",
                           payment_method="pm_card_visa", status=status)


def test_every_seed_metric_and_the_machinery_are_exposed(scrape, jetstream):
    scrape()  # a first request, so that django-prometheus has counted one
    names = scrape().names
    assert SEED_NAMES <= names
    assert MACHINERY_NAMES <= names
    assert not {name for name in names if not name.startswith(("a4co_", "django_", "python_", "process_"))} - (
        SEED_NAMES | {"saga_compensation_created", "payments_processed_created"})


def test_the_business_figures_follow_the_databases(scrape):
    for took in (0.3, 0.7, 4.0):
        given_saga("CONFIRMED", "COMPLETED", took=took)
    given_saga("CANCELLED", "COMPENSATED", took=40)
    given_saga("FAILED", "FAILED", took=0.2)
    given_saga("PENDING", "PAYMENT_PROCESSING", deadline_in=-30)  # overdue: the sweep is behind
    given_saga("PENDING", "COMPENSATING", deadline_in=20)
    given_saga("PENDING", "COMPENSATION_FAILED")
    for status in ("SUCCEEDED", "SUCCEEDED", "REFUNDED", "FAILED", "CANCELED", "PROCESSING"):
        given_payment(status)
    for status in ("ACTIVE", "ACTIVE", "COMMITTED", "RELEASED"):
        Reservation.objects.create(order_id=str(uuid.uuid4()), status=status, expires_at=the_clock.now())
    for age in (90, 5):
        OrdersOutbox.objects.create(id=uuid.uuid4(), subject="orders.created", aggregate_id="o", payload={},
                                    created_at=the_clock.now() - dt.timedelta(seconds=age))
    OrdersOutbox.objects.create(id=uuid.uuid4(), subject="orders.created", aggregate_id="o", payload={},
                                created_at=the_clock.now() - dt.timedelta(hours=1), published_at=the_clock.now())
    for status in ("OPEN", "DISCARDED"):
        PaymentsDeadLetter.objects.create(consumer="payment-service", stream="PAYMENTS",
                                          stream_sequence=1 if status == "OPEN" else 2, subject="s",
                                          payload="{}", error="e", status=status)

    m = scrape()

    assert {s: m.value("order_status_count", status=s) for s in ("PENDING", "CONFIRMED", "CANCELLED", "FAILED")} \
        == {"PENDING": 3, "CONFIRMED": 3, "CANCELLED": 1, "FAILED": 1}
    assert m.value("a4co_saga_instances", status="COMPLETED") == 3
    assert m.value("a4co_saga_instances", status="COMPENSATION_FAILED") == 1
    assert m.value("a4co_saga_instances", status="STARTED") == 0
    assert m.value("saga_success_rate") == pytest.approx(3 / 6)  # 3 completed of 6 ended
    assert m.value("saga_compensation_total") == 3  # compensating, compensated, compensation failed
    assert m.value("saga_compensation_success_rate") == pytest.approx(1 / 2)
    completed = {"status": "COMPLETED"}
    assert m.value("saga_duration_seconds_bucket", le="0.25", **completed) == 0
    assert m.value("saga_duration_seconds_bucket", le="0.5", **completed) == 1
    assert m.value("saga_duration_seconds_bucket", le="1.0", **completed) == 2
    assert m.value("saga_duration_seconds_bucket", le="5.0", **completed) == 3
    assert m.value("saga_duration_seconds_bucket", le="+Inf", **completed) == 3
    assert m.value("saga_duration_seconds_count", **completed) == 3
    assert m.value("saga_duration_seconds_sum", **completed) == pytest.approx(5.0)
    assert m.value("saga_duration_seconds_bucket", le="30.0", status="COMPENSATED") == 0
    assert m.value("saga_duration_seconds_bucket", le="60.0", status="COMPENSATED") == 1
    assert m.value("a4co_saga_past_deadline_instances") == 1
    assert 29 <= m.value("a4co_saga_past_deadline_oldest_seconds") < 60
    assert m.value("inventory_reservations_active") == 2
    assert m.value("payments_processed_total", status="succeeded") == 3  # the refunded one was charged
    assert m.value("payments_processed_total", status="failed") == 1
    assert m.value("a4co_payments_refunded_total") == 1
    assert m.value("a4co_outbox_pending_messages", outbox="orders") == 2
    assert 89 <= m.value("a4co_outbox_oldest_pending_age_seconds", outbox="orders") < 120
    assert m.value("a4co_outbox_pending_messages", outbox="inventory") == 0
    assert m.value("a4co_outbox_oldest_pending_age_seconds", outbox="inventory") == 0
    assert m.value("a4co_dead_letters_open_messages", service="payments", consumer="payment-service") == 1
    assert m.value("a4co_dead_letters_open_messages", service="orders", consumer="order-service-payment") == 0
    assert {m.value("a4co_database_up", alias=a) for a in ("orders", "inventory", "payments")} == {1}


def test_rates_are_nan_before_any_saga_ended(scrape):
    given_saga("PENDING", "STARTED", deadline_in=60)
    m = scrape()
    assert m.value("saga_success_rate") != m.value("saga_success_rate")  # NaN
    assert m.value("saga_compensation_success_rate") != m.value("saga_compensation_success_rate")
    assert m.value("saga_duration_seconds_count", status="COMPLETED") == 0


def test_settled_sagas_are_counted_once_and_the_counts_match_a_full_recount(scrape, clock, settings):
    settings.METRICS_SAGA_SETTLE_SECONDS = 300
    given_saga("CONFIRMED", "COMPLETED", took=2, ago=7200)  # settled at the first scrape
    given_saga("CONFIRMED", "COMPLETED", took=0.4, ago=30)  # recent: queried at every scrape
    first = scrape()
    assert first.value("saga_duration_seconds_count", status="COMPLETED") == 2

    clock.advance(settings.METRICS_SAGA_SETTLE_SECONDS + 120)  # the recent one settles too
    given_saga("FAILED", "FAILED", took=0.1, ago=1)
    cached = scrape()
    metrics.saga_cache_clear()
    recounted = scrape()
    for name in ("saga_duration_seconds_bucket", "saga_duration_seconds_count", "saga_duration_seconds_sum",
                 "a4co_saga_instances", "saga_success_rate"):
        assert {k: v for k, v in cached.samples.items() if k[0] == name} == \
               {k: v for k, v in recounted.samples.items() if k[0] == name}, name
    assert cached.value("saga_duration_seconds_count", status="COMPLETED") == 2
    assert cached.value("saga_duration_seconds_count", status="FAILED") == 1
    assert cached.value("saga_duration_seconds_sum", status="COMPLETED") == pytest.approx(2.4)


def test_a_saga_committed_behind_the_settled_horizon_is_picked_up_by_the_recount(scrape, settings):
    given_saga("CONFIRMED", "COMPLETED", took=1, ago=7200)
    assert scrape().value("saga_duration_seconds_count", status="COMPLETED") == 1
    # A transaction that wrote finished_at long ago commits only now (far beyond any real one).
    given_saga("CONFIRMED", "COMPLETED", took=1, ago=3600)
    assert scrape().value("saga_duration_seconds_count", status="COMPLETED") == 1  # not yet
    settings.METRICS_SAGA_RECOUNT_SECONDS = 0
    assert scrape().value("saga_duration_seconds_count", status="COMPLETED") == 2


def test_a_database_that_cannot_be_queried_is_reported_not_raised(scrape, monkeypatch):
    def broken(cursor, families, now):
        raise OperationalError("connection refused (simulated)")

    monkeypatch.setattr(metrics, "_payments_probe", broken)
    m = scrape()
    assert m.value("a4co_database_up", alias="payments") == 0
    assert m.value("a4co_database_up", alias="orders") == 1
    assert "payments_processed_total" not in m.names
    assert "order_status_count" in m.names


def test_nats_down_is_reported_as_nats_up_0_quickly(scrape, settings):
    settings.NATS_URL = f"nats://127.0.0.1:{_closed_port()}"
    settings.METRICS_NATS_TIMEOUT_SECONDS = 1
    nats_bus.bridge_reset()
    try:
        started = the_clock.now()
        m = scrape()
        assert (the_clock.now() - started).total_seconds() < 5
        assert m.value("a4co_nats_up") == 0
        assert not [k for k in m.samples if k[0] == "a4co_jetstream_consumer_pending_messages"]
        assert m.value("a4co_database_up", alias="orders") == 1
    finally:
        nats_bus.bridge_reset()


def _closed_port() -> int:
    from devstack.servers import free_port

    return free_port()


def test_the_jetstream_backlog_is_read_from_the_server(scrape, jetstream):
    from django.db import transaction

    from infra.outbox import outbox_append
    from infra.relay import outbox_relay_drain
    from orders.messages import OrderCreated

    with transaction.atomic(using="orders"):
        outbox_append(OrdersOutbox, OrderCreated(
            order_id="o-1", customer_id="c", items=({"productId": "p", "quantity": 1, "unitPrice": "1.00"},),
            total_amount=1, currency="EUR"), aggregate_id="o-1")
    assert outbox_relay_drain().published == 1
    m = scrape()
    assert m.value("a4co_nats_up") == 1
    assert m.value("a4co_jetstream_consumer_pending_messages", stream="ORDERS", consumer="inventory-service") == 1
    assert m.value("a4co_jetstream_consumer_pending_messages", stream="PAYMENTS", consumer="payment-service") == 0
    assert m.value("a4co_jetstream_consumer_ack_pending_messages", stream="ORDERS", consumer="inventory-service") == 0


def test_counters_of_other_processes_are_added_up(scrape, monkeypatch, tmp_path):
    """Two other processes count relay publishes into a shared directory; the scrape adds them."""
    script = ("import django; django.setup(); from infra import metrics; "
              "metrics.RELAY_PUBLISHED.labels('orders').inc(3); "
              "metrics.CONSUMER_DELIVERIES.labels('payment-service', 'PAYMENTS', 'duplicate').inc()")
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path), "DJANGO_SETTINGS_MODULE": "a4co.settings.test"}
    for _ in range(2):
        subprocess.run([sys.executable, "-c", script], cwd=REPO, env=env, check=True, timeout=60)
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))
    m = scrape()
    assert m.value("a4co_relay_published_total", outbox="orders") == 6
    assert m.value("a4co_consumer_deliveries_total", consumer="payment-service", stream="PAYMENTS",
                   outcome="duplicate") == 2
    assert "order_status_count" in m.names  # and the database figures alongside


def test_without_a_multiprocess_directory_the_process_exports_its_own_counters(scrape, monkeypatch):
    monkeypatch.delenv("PROMETHEUS_MULTIPROC_DIR", raising=False)
    before = scrape().value("a4co_relay_publish_failed_total", outbox="inventory")
    metrics.RELAY_PUBLISH_FAILED.labels("inventory").inc(2)
    m = scrape()
    assert m.value("a4co_relay_publish_failed_total", outbox="inventory") == before + 2
    assert "saga_success_rate" in m.names
