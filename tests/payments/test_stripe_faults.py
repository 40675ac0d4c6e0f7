"""Payments through the devstack's Stripe fault proxy: a 500, a delay past the client timeout and a
response dropped after a successful charge are all "outcome unknown", never a decline; the retry
uses the same PaymentIntent and the card is charged exactly once."""
from __future__ import annotations

import json
import uuid
from decimal import Decimal

import pytest
import requests
import stripe

from a4co import clock
from devstack.servers import start_stripe, start_stripe_proxy
from infra.consumers import Outcome, deliveries_handle_together, delivery_handle
from infra.messages import message_envelope
from infra.nats import Delivery
from infra.streams import ROUTES
from payments import stripe_gateway as gateway
from payments.messages import PaymentProcessRequest
from payments.models import InboxMessage, Payment
from payments.services import payment_charge, payment_prepare
from tests.conftest import ALL_DATABASES

pytestmark = pytest.mark.django_db(databases=ALL_DATABASES)
PAYMENTS = next(route for route in ROUTES if route.name == "payment-service")


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


def test_a_batch_whose_confirmations_are_lost_after_stripe_charged_is_charged_once_one_by_one(proxy, settings):
    # The batch's rows and intents are written, Stripe charges, its answers never arrive: the batch
    # goes one by one, which confirms those same intents (Stripe: already succeeded) and cancels
    # the spare intents it creates on the way: each order is charged exactly once.
    messages = [PaymentProcessRequest(order_id=f"order-batch-{n}", customer_id="c", amount=Decimal("10.00"),
                                      currency="EUR", payment_method="pm_card_visa") for n in range(3)]
    deliveries = []
    for message in messages:
        event_id = str(uuid.uuid4())
        data = json.dumps(message_envelope(message, event_id=event_id, occurred_at=clock.now())).encode()
        deliveries.append(Delivery(subject=message.SUBJECT, data=data, msg_id=event_id, num_delivered=1,
                                   stream_sequence=0, _msg=None))
    proxy(drop_after_success_probability=1.0, only_paths="/v1/payment_intents/")  # the confirmations only
    assert not deliveries_handle_together(PAYMENTS, deliveries)
    rows = Payment.objects.filter(order_id__startswith="order-batch-")
    stored = {payment.order_id: payment.stripe_payment_intent_id for payment in rows}
    assert len(stored) == 3 and all(stored.values())
    assert not InboxMessage.objects.exists()

    requests.delete(f"{settings.STRIPE_API_BASE}/_chaos", timeout=5)  # Stripe answers again
    for delivery in deliveries:
        assert delivery_handle(PAYMENTS, subject=delivery.subject, data=delivery.data, msg_id=delivery.msg_id,
                               num_delivered=2)[0] is Outcome.HANDLED
    for message in messages:
        payment = Payment.objects.get(order_id=message.order_id)
        assert payment.status == "SUCCEEDED" and payment.stripe_payment_intent_id == stored[message.order_id]
        succeeded = [i for i in intents_of(message.order_id, settings) if i.status == "succeeded"]
        assert [i.id for i in succeeded] == [payment.stripe_payment_intent_id]
