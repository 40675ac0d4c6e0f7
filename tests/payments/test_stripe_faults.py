"""Payments through the devstack's Stripe fault proxy: a 500, a delay past the client timeout and a
response dropped after a successful charge are all "outcome unknown", never a decline; the retry
uses the same PaymentIntent and the card is charged exactly once."""
from __future__ import annotations

from decimal import Decimal

import pytest
import requests
import stripe

from devstack.servers import start_stripe, start_stripe_proxy
from payments import stripe_gateway as gateway
from payments.models import Payment
from payments.services import payment_charge, payment_prepare
from tests.conftest import ALL_DATABASES

pytestmark = pytest.mark.django_db(databases=ALL_DATABASES)


@pytest.fixture(scope="module")
def stripe_behind_proxy(tmp_path_factory):
    upstream = start_stripe(tmp_path_factory.mktemp("stripe"))
    proxy = start_stripe_proxy(tmp_path_factory.mktemp("proxy"), upstream.url)
    yield upstream.url, proxy.url
    proxy.stop()
    upstream.stop()


@pytest.fixture
def proxy(stripe_behind_proxy, settings):
    upstream, proxied = stripe_behind_proxy
    settings.STRIPE_API_BASE = proxied
    settings.STRIPE_TIMEOUT_SECONDS = 1
    control = f"{proxied}/_chaos"

    def inject(**faults):
        requests.post(control, json={"seed": 1, **faults}, timeout=5).raise_for_status()

    yield inject
    requests.delete(control, timeout=5).raise_for_status()


def intents_of(order_id: str, settings) -> list:
    client = stripe.StripeClient(settings.STRIPE_SECRET_KEY,
                                 base_addresses={"api": settings.STRIPE_API_BASE.replace("/_chaos", "")})
    return [i for i in client.v1.payment_intents.list(params={"limit": 100}).data
            if i.metadata.to_dict().get("order_id") == order_id]


def prepared(order_id: str) -> Payment:
    return payment_prepare(order_id=order_id, customer_id="c", amount=Decimal("10.00"), currency="EUR",
                           payment_method="pm_card_visa")


@pytest.mark.parametrize("fault", [
    {"error_probability": 1.0},
    {"delay_probability": 1.0, "delay_seconds": 2.0},
    {"drop_after_success_probability": 1.0, "only_paths": "/v1/payment_intents/"},
], ids=["stripe-500", "stripe-slow", "stripe-drop-after-success"])
def test_an_unknown_outcome_is_retried_with_the_same_intent_and_charges_once(proxy, settings, fault):
    order_id = f"order-{next(iter(fault))}"
    payment = prepared(order_id)
    if "only_paths" in fault:
        # The intent is created normally; the confirmation's answer is lost after Stripe charged.
        payment = _create_intent_only(payment)
    proxy(**fault)
    with pytest.raises(gateway.GatewayUnavailableError):
        payment_charge(payment=payment)
    payment.refresh_from_db()
    assert payment.status == "PROCESSING"  # not a decline

    requests.delete(f"{settings.STRIPE_API_BASE}/_chaos", timeout=5)  # Stripe answers again
    settled = payment_charge(payment=payment)
    assert settled.status == "SUCCEEDED"
    succeeded = [i for i in intents_of(order_id, settings) if i.status == "succeeded"]
    assert [i.id for i in succeeded] == [settled.stripe_payment_intent_id]


def _create_intent_only(payment: Payment) -> Payment:
    intent = gateway.payment_intent_create(amount_minor=1000, currency="EUR", payment_method="pm_card_visa",
                                           order_id=payment.order_id, customer_id="c", idempotency_key="k")
    Payment.objects.filter(id=payment.id).update(stripe_payment_intent_id=intent.id)
    payment.refresh_from_db()
    return payment
