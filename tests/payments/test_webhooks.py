"""Stripe webhooks: signature checked on the one clock, deduplicated by event id, and fed into the
same idempotent path as our own charges, so a 3-D Secure payment that completes later finishes
the saga."""
from __future__ import annotations

import json

import pytest
import requests
import stripe

from a4co import clock as the_clock
from orders.models import Order
from payments import stripe_gateway as gateway
from payments.models import Payment, StripeWebhookEvent
from tests.conftest import ALL_DATABASES
from tests.factories import ProductFactory, order_body
from tests.pump import pump

pytestmark = pytest.mark.django_db(databases=ALL_DATABASES)
SECRET = "whsec_test_secret"
URL = "/api/v1/payments/stripe/webhook"


@pytest.fixture(autouse=True)
def webhook_secret(settings):
    settings.STRIPE_WEBHOOK_SECRET = SECRET


def event_body(event_type: str, intent_id: str, event_id: str = "evt_1") -> bytes:
    return json.dumps({"id": event_id, "type": event_type, "object": "event",
                       "data": {"object": {"id": intent_id, "object": "payment_intent"}}}).encode()


def post_webhook(client, body: bytes, *, timestamp: int | None = None, secret: str = SECRET):
    timestamp = int(the_clock.now().timestamp()) if timestamp is None else timestamp
    signature = gateway.webhook_signature_for_tests(payload=body, secret=secret, timestamp=timestamp)
    return client.post(URL, data=body, content_type="application/json", HTTP_STRIPE_SIGNATURE=signature)


def three_d_secure_order(api, settings) -> tuple[str, Payment]:
    client = stripe.StripeClient(settings.STRIPE_SECRET_KEY, base_addresses={"api": settings.STRIPE_API_BASE})
    method = client.v1.payment_methods.create(params={
        "type": "card", "card": {"number": "4000002500003155", "exp_month": 12, "exp_year": 2034, "cvc": "123"}})
    ProductFactory(product_id="oil", available_quantity=5)
    order_id = api.post("/api/v1/orders", order_body(("oil", 1, "9.99"), paymentMethod=method.id),
                        format="json").json()["orderId"]
    pump()
    payment = Payment.objects.get(order_id=order_id)
    assert payment.status == "REQUIRES_ACTION"
    return order_id, payment


def authenticate_at_stripe(settings, payment: Payment, *, success: bool) -> None:
    """The customer passes (or fails) 3-D Secure: the stand-in's test endpoint for it."""
    client = stripe.StripeClient(settings.STRIPE_SECRET_KEY, base_addresses={"api": settings.STRIPE_API_BASE})
    intent = client.v1.payment_intents.retrieve(payment.stripe_payment_intent_id)
    response = requests.post(f"{settings.STRIPE_API_BASE}/v1/payment_intents/{intent.id}/_authenticate",
                             data={"client_secret": intent.client_secret, "success": str(success).lower()},
                             headers={"Authorization": f"Bearer {settings.STRIPE_SECRET_KEY}"}, timeout=10)
    assert response.status_code == 200, response.text


def test_a_3d_secure_payment_completed_later_confirms_the_order(api, client, settings):
    order_id, payment = three_d_secure_order(api, settings)
    authenticate_at_stripe(settings, payment, success=True)
    response = post_webhook(client, event_body("payment_intent.succeeded", payment.stripe_payment_intent_id))
    assert response.status_code == 200 and response.json()["outcome"] == "payment SUCCEEDED"
    pump()
    assert Order.objects.get(id=order_id).status == "CONFIRMED"


def test_a_3d_secure_failure_cancels_the_order(api, client, settings):
    order_id, payment = three_d_secure_order(api, settings)
    authenticate_at_stripe(settings, payment, success=False)
    response = post_webhook(client, event_body("payment_intent.payment_failed", payment.stripe_payment_intent_id))
    assert response.json()["outcome"] == "payment FAILED"
    pump()
    order = Order.objects.get(id=order_id)
    assert order.status == "CANCELLED" and "payment" in order.cancellation_reason


def test_a_webhook_is_applied_once(api, client, settings):
    _, payment = three_d_secure_order(api, settings)
    authenticate_at_stripe(settings, payment, success=True)
    body = event_body("payment_intent.succeeded", payment.stripe_payment_intent_id)
    assert post_webhook(client, body).json()["outcome"] == "payment SUCCEEDED"
    assert post_webhook(client, body).json()["outcome"] == "duplicate"
    from payments.models import OutboxMessage
    assert OutboxMessage.objects.filter(subject="payments.succeeded").count() == 1
    assert StripeWebhookEvent.objects.count() == 1


def test_the_webhook_body_is_not_trusted_over_stripe(api, client, settings):
    _, payment = three_d_secure_order(api, settings)  # still waiting for authentication at Stripe
    body = event_body("payment_intent.succeeded", payment.stripe_payment_intent_id)
    assert "requires_action" in post_webhook(client, body).json()["outcome"]
    payment.refresh_from_db()
    assert payment.status == "REQUIRES_ACTION"


def test_other_event_types_are_recorded_and_ignored(client):
    response = post_webhook(client, event_body("charge.refunded", "pi_x", event_id="evt_other"))
    assert response.status_code == 200 and response.json()["outcome"] == "ignored"


@pytest.mark.parametrize("how", ["wrong secret", "stale", "future", "missing", "garbage"])
def test_a_bad_or_stale_signature_is_a_400(client, clock, how):
    body = event_body("payment_intent.succeeded", "pi_x")
    now = int(clock.now().timestamp())
    if how == "missing":
        response = client.post(URL, data=body, content_type="application/json")
    elif how == "garbage":
        response = client.post(URL, data=body, content_type="application/json", HTTP_STRIPE_SIGNATURE="t=x,v1=y")
    else:
        response = post_webhook(client, body, secret="whsec_other" if how == "wrong secret" else SECRET,
                                timestamp={"stale": now - 301, "future": now + 301}.get(how, now))
    assert response.status_code == 400
    assert not StripeWebhookEvent.objects.exists()


def test_the_tolerance_follows_the_one_clock(client, clock):
    body = event_body("charge.refunded", "pi_x", event_id="evt_clock")
    # Frozen on a whole second: a running clock adds the test's own run time (and the signature's
    # truncated fraction of a second) to the 299 s, which pushed it past the tolerance once.
    signed_at = int(clock.freeze(clock.now().replace(microsecond=0)).timestamp())
    clock.advance(299)
    assert post_webhook(client, body, timestamp=signed_at).status_code == 200
    clock.advance(10)
    assert post_webhook(client, body, timestamp=signed_at).status_code == 400


def test_without_a_configured_secret_the_endpoint_is_503(client, settings):
    settings.STRIPE_WEBHOOK_SECRET = ""
    assert post_webhook(client, event_body("charge.refunded", "pi_x")).status_code == 503
