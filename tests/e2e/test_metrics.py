"""GET /metrics of the whole running system (web, Celery worker and beat, consumers, three
databases): the business figures follow the orders placed through the API, the counters of the
worker and consumer processes reach the web's scrape, and the Grafana dashboard and the alert
rules read only metrics that this live scrape exposes."""
from __future__ import annotations

import json
import os
import uuid
from pathlib import Path

import pytest
import requests
import yaml

from infra.streams import ROUTES
from tests.helpers import wait_until
from tests.ops.promtext import PROMETHEUS_SYNTHETIC, Scrape, expression_metric_names

pytestmark = pytest.mark.e2e
REPO = Path(__file__).resolve().parents[2]
TERMINAL = {"CONFIRMED", "CANCELLED", "FAILED"}
MULTIPROCESS = bool(os.environ.get("PROMETHEUS_MULTIPROC_DIR"))


def scrape(system) -> Scrape:
    response = requests.get(f"{system.base_url}/metrics", timeout=10)
    assert response.status_code == 200, response.text[:500]
    return Scrape(response.text)


def place_and_finish(system, shop, product_id: str, payment_method: str) -> dict:
    body = {"customerId": "customer-metrics", "paymentMethod": payment_method,
            "items": [{"productId": product_id, "quantity": 1, "unitPrice": "3.00"}]}
    response = shop.post(f"{system.base_url}/api/v1/orders", json=body)
    assert response.status_code == 201, response.text
    order_id = response.json()["orderId"]

    def ended():
        order = shop.get(f"{system.base_url}/api/v1/orders/{order_id}").json()
        return order if order["status"] in TERMINAL else None

    try:
        return wait_until(ended, timeout=30, interval=0.1, message=f"order {order_id} to end")
    except AssertionError:
        print(system.log_tail())
        raise


def test_metrics_follow_the_orders_placed_through_the_api(system):
    shop, ops = system.client(), system.client(system.staff_token)
    product_id = f"p-{uuid.uuid4().hex[:10]}"
    created = ops.put(f"{system.base_url}/api/v1/inventory/products/{product_id}",
                      json={"name": product_id, "availableQuantity": 10})
    assert created.status_code == 201, created.text
    before = scrape(system)

    outcomes = [place_and_finish(system, shop, product_id, method)["status"]
                for method in ("pm_card_visa", "pm_card_visa", "pm_card_chargeCustomerFail")]
    assert outcomes == ["CONFIRMED", "CONFIRMED", "CANCELLED"]

    def settled() -> Scrape | None:
        # The events that follow an order's end (stock committed or released) may still be flowing.
        m = scrape(system)
        grew = (m.value("payments_processed_total", status="succeeded")
                - before.value("payments_processed_total", status="succeeded") >= 2
                and m.value("payments_processed_total", status="failed")
                - before.value("payments_processed_total", status="failed") >= 1)
        quiet = sum(m.value("a4co_outbox_pending_messages", outbox=o) for o in ("orders", "inventory", "payments"))
        return m if grew and quiet == 0 else None

    after = wait_until(settled, timeout=20, interval=0.2, message="the payments counted and the outboxes drained")

    # The order counts are the API's (staff see every order); other tests' orders may still be
    # ending, so compare a scrape and a listing until they agree.
    def counts_agree():
        m = scrape(system)
        listed = {status: ops.get(f"{system.base_url}/api/v1/orders", params={"status": status, "limit": 1})
                  .json()["count"] for status in ("PENDING", "CONFIRMED", "CANCELLED", "FAILED")}
        exposed = {status: m.value("order_status_count", status=status) for status in listed}
        return listed if exposed == listed else None

    listed = wait_until(counts_agree, timeout=20, interval=0.2, message="order_status_count to match the API")
    assert listed["CONFIRMED"] >= 2 and listed["CANCELLED"] >= 1
    assert after.value("saga_duration_seconds_count", status="COMPLETED") \
        - before.value("saga_duration_seconds_count", status="COMPLETED") >= 2
    assert after.value("saga_compensation_total") - before.value("saga_compensation_total") >= 1
    assert 0 < after.value("saga_success_rate") < 1
    assert 0 < after.value("saga_compensation_success_rate") <= 1
    assert after.value("inventory_reservations_active") >= 0
    assert after.value("a4co_nats_up") == 1
    for route in ROUTES:
        assert after.value("a4co_jetstream_consumer_pending_messages", stream=route.consumer.stream,
                           consumer=route.name) >= 0
    assert {after.value("a4co_database_up", alias=a) for a in ("orders", "inventory", "payments")} == {1}
    assert after.total("django_http_requests_total_by_view_transport_method_total", view="orders") >= 3


@pytest.mark.skipif(not MULTIPROCESS, reason="PROMETHEUS_MULTIPROC_DIR is not set (make test sets it)")
def test_counters_of_the_worker_and_the_consumers_reach_the_web_scrape(system):
    shop, ops = system.client(), system.client(system.staff_token)
    product_id = f"p-{uuid.uuid4().hex[:10]}"
    ops.put(f"{system.base_url}/api/v1/inventory/products/{product_id}",
            json={"name": product_id, "availableQuantity": 5})
    before = scrape(system)
    assert place_and_finish(system, shop, product_id, "pm_card_visa")["status"] == "CONFIRMED"

    def counted() -> Scrape | None:
        m = scrape(system)
        relay = m.value("a4co_relay_published_total", outbox="orders") \
            - before.value("a4co_relay_published_total", outbox="orders")
        handled = m.value("a4co_consumer_deliveries_total", consumer="payment-service", stream="PAYMENTS",
                          outcome="handled") - before.value("a4co_consumer_deliveries_total",
                                                            consumer="payment-service", stream="PAYMENTS",
                                                            outcome="handled")
        return m if relay >= 2 and handled >= 1 else None  # orders.created, orders.confirmed

    after = wait_until(counted, timeout=20, interval=0.2, message="the worker's and the consumers' counters")
    assert after.value("a4co_relay_publish_latency_seconds_count", outbox="payments") \
        > before.value("a4co_relay_publish_latency_seconds_count", outbox="payments")


def test_the_dashboard_and_the_alerts_read_only_metrics_the_system_exposes(system):
    system.client().get(f"{system.base_url}/api/v1/orders")  # at least one API view has answered
    exposed = scrape(system).names
    dashboard = json.loads((REPO / "infra" / "grafana" / "dashboards" / "saga-monitoring.json").read_text())
    expressions = [(panel["title"], target["expr"]) for panel in dashboard["panels"]
                   for target in panel.get("targets", [])]
    assert expressions
    missing = {(title, name) for title, expr in expressions for name in expression_metric_names(expr)
               if name not in exposed}
    assert not missing, "dashboard panels read metrics /metrics does not expose"

    alerts = yaml.safe_load((REPO / "infra" / "prometheus" / "alerts.yml").read_text())
    missing = {(rule["alert"], name) for group in alerts["groups"] for rule in group["rules"]
               for name in expression_metric_names(rule["expr"]) if name not in exposed | PROMETHEUS_SYNTHETIC}
    assert not missing, "alerts read metrics /metrics does not expose"
