"""The invariant checker: silent on a system that did everything right, and each check fires on
the corruption it exists for. Runs against a Stripe stand-in of its own (a clean ledger)."""
from __future__ import annotations

import io

import pytest
import requests
from django.core.management import CommandError, call_command
from django.db import transaction

from devstack.servers import start_stripe
from infra.invariants import invariants_check
from infra.outbox import outbox_append
from inventory.models import Product, Reservation
from orders.messages import OrderFailed
from orders.models import Order
from orders.models import OutboxMessage as OrdersOutbox
from payments.models import Payment
from saga.models import SagaInstance
from tests.conftest import ALL_DATABASES
from tests.factories import ProductFactory, order_body
from tests.pump import pump

pytestmark = pytest.mark.django_db(databases=ALL_DATABASES)


@pytest.fixture(scope="module")
def own_stripe(tmp_path_factory):
    server = start_stripe(tmp_path_factory.mktemp("stripe"))
    yield server.url
    server.stop()


@pytest.fixture
def system_after_every_flow(api, settings, own_stripe):
    """A confirmed, a declined, an out-of-stock and a cancelled order, all settled."""
    settings.STRIPE_API_BASE = own_stripe
    requests.delete(f"{own_stripe}/_config/data", timeout=10).raise_for_status()  # a clean ledger per test
    ProductFactory(product_id="oil", available_quantity=10)
    ids = {}
    for name, body in [("confirmed", order_body(("oil", 2, "5"))),
                       ("declined", order_body(("oil", 1, "5"), paymentMethod="pm_card_chargeCustomerFail")),
                       ("out_of_stock", order_body(("oil", 50, "5"))),
                       ("cancelled", order_body(("oil", 1, "5")))]:
        ids[name] = api.post("/api/v1/orders", body, format="json").json()["orderId"]
        if name == "cancelled":
            pump(only={"orders.created", "inventory.reserved", "payments.process_request"})
            api.post(f"/api/v1/orders/{ids[name]}/cancel", {}, format="json")
        pump()
    assert [Order.objects.get(id=i).status for i in ids.values()] == ["CONFIRMED", "CANCELLED", "FAILED",
                                                                       "CANCELLED"]
    return ids


def counts() -> dict[str, int]:
    return {check.name: check.count for check in invariants_check()}


def test_a_healthy_system_has_no_violations(system_after_every_flow):
    assert set(counts().values()) == {0}
    out = io.StringIO()
    call_command("check_invariants", stdout=out)
    assert "all invariants hold" in out.getvalue()


def test_a_pending_order_and_an_unpublished_row_are_reported(api, settings, own_stripe):
    settings.STRIPE_API_BASE = own_stripe
    api.post("/api/v1/orders", order_body(("oil", 1, "5")), format="json")
    found = counts()
    assert found["orders_not_terminal"] == 1 and found["outbox_unpublished"] == 1
    with pytest.raises(CommandError, match="violation"):
        call_command("check_invariants", stdout=io.StringIO())


def test_stock_that_does_not_add_up_is_reported(system_after_every_flow):
    Product.objects.filter(product_id="oil").update(sold_quantity=3, stocked_quantity=11)
    assert counts()["stock_not_adding_up"] == 1


def test_a_cancelled_order_still_holding_stock_or_money_is_reported(system_after_every_flow):
    order_id = system_after_every_flow["cancelled"]
    Reservation.objects.filter(order_id=order_id).update(status="ACTIVE")
    Payment.objects.filter(order_id=order_id).update(status="SUCCEEDED")
    found = counts()
    assert found["ended_unpaid_holding_stock"] == 1 and found["ended_unpaid_holding_money"] == 1


def test_money_kept_at_stripe_for_a_cancelled_order_is_reported(system_after_every_flow, settings):
    import stripe

    order_id = system_after_every_flow["declined"]
    client = stripe.StripeClient(settings.STRIPE_SECRET_KEY, base_addresses={"api": settings.STRIPE_API_BASE})
    client.v1.payment_intents.create(params={"amount": 500, "currency": "eur", "payment_method": "pm_card_visa",
                                             "confirm": True, "metadata": {"order_id": order_id}})
    assert counts()["ended_unpaid_holding_money"] == 1


def test_a_second_charge_is_reported(system_after_every_flow, settings):
    import stripe

    order_id = system_after_every_flow["confirmed"]
    client = stripe.StripeClient(settings.STRIPE_SECRET_KEY, base_addresses={"api": settings.STRIPE_API_BASE})
    client.v1.payment_intents.create(params={"amount": 1000, "currency": "eur", "payment_method": "pm_card_visa",
                                             "confirm": True, "metadata": {"order_id": order_id}})
    found = counts()
    assert found["orders_charged_twice"] == 1 and found["confirmed_not_settled"] == 1


def test_saga_problems_are_reported(system_after_every_flow):
    SagaInstance.objects.filter(order_id=system_after_every_flow["confirmed"]).update(status="FAILED")
    assert counts()["order_saga_mismatch"] == 1


def test_a_transition_applied_twice_is_reported(system_after_every_flow):
    from saga.models import SagaStep

    saga = SagaInstance.objects.get(order_id=system_after_every_flow["confirmed"])
    step = saga.steps.get(status_to="COMPLETED")
    SagaStep.objects.create(saga=saga, step=step.step, trigger=step.trigger, outcome=step.outcome,
                            status_from=step.status_from, status_to=step.status_to, event_id="evt-dup")
    assert counts()["messages_applied_twice"] == 1


def test_outbox_grace_ignores_young_rows(system_after_every_flow):
    order_id = system_after_every_flow["out_of_stock"]
    with transaction.atomic(using="orders"):
        outbox_append(OrdersOutbox, OrderFailed(order_id=order_id, reason="x", failure_stage="inventory"),
                      aggregate_id=order_id)
    assert {c.name: c.count for c in invariants_check(outbox_grace_seconds=60)}["outbox_unpublished"] == 0


def test_open_dead_letters_are_reported_but_are_not_violations(system_after_every_flow):
    from infra.invariants import invariants_violations
    from inventory.models import DeadLetter

    DeadLetter.objects.create(consumer="inventory-service", stream="ORDERS", stream_sequence=1,
                              subject="orders.created", payload="x", error="malformed")
    checks = invariants_check()
    assert {c.name: c.count for c in checks}["dead_letters_open"] == 1
    assert invariants_violations(checks) == 0, [c for c in checks if c.count]
