"""A charge's outcome and the event announcing it are stored together, in the consumer's effect
statement, and only while the payment is still open (payments.services.payment_outcome_store)."""
from __future__ import annotations

import json
import uuid
from decimal import Decimal

import pytest
from django.db import connections, transaction
from django.test.utils import CaptureQueriesContext

from a4co import clock
from a4co.db import writes_deferred
from infra.consumers import Outcome, delivery_handle
from infra.messages import message_envelope
from infra.streams import ROUTES
from payments.messages import PaymentProcessRequest
from payments.models import OutboxMessage, Payment
from payments.services import (
    payment_charge_outcome,
    payment_open,
    payment_outcome_store,
    payment_prepare,
    payment_settle,
)
from tests.conftest import ALL_DATABASES

pytestmark = pytest.mark.django_db(databases=ALL_DATABASES)
PAYMENTS = next(route for route in ROUTES if route.name == "payment-service")


def _process(order_id: str, method: str = "pm_card_visa") -> tuple[Outcome, str]:
    message = PaymentProcessRequest(order_id=order_id, customer_id="c", amount=Decimal("12.34"), currency="EUR",
                                    payment_method=method)
    event_id = str(uuid.uuid4())
    data = json.dumps(message_envelope(message, event_id=event_id, occurred_at=clock.now())).encode()
    return delivery_handle(PAYMENTS, subject=message.SUBJECT, data=data, msg_id=event_id, num_delivered=1)


@pytest.mark.parametrize(("method", "status", "subject"), [
    ("pm_card_visa", "SUCCEEDED", "payments.succeeded"),
    ("pm_card_chargeCustomerFail", "FAILED", "payments.failed"),
])
def test_the_outcome_its_event_and_the_inbox_row_are_one_statement(method, status, subject):
    with CaptureQueriesContext(connections["payments"]) as queries:
        assert _process("order-1", method) == (Outcome.HANDLED, "")
    payment = Payment.objects.get(order_id="order-1")
    assert payment.status == status and payment.attempts == 1
    assert list(OutboxMessage.objects.values_list("subject", flat=True)) == [subject]
    # The payment row with its PaymentIntent's id (created at Stripe first, unconfirmed), then one
    # statement for the outcome, its event and the inbox row.
    statements = [q["sql"] for q in queries.captured_queries
                  if not q["sql"].startswith(("SAVEPOINT", "RELEASE SAVEPOINT"))]
    assert len(statements) == 2, statements
    last = statements[-1]
    assert "payments_inbox" in last and "UPDATE" in last and "payments_outbox" in last


def test_an_outcome_arriving_after_a_cancel_stores_and_announces_nothing():
    payment = payment_prepare(order_id="order-1", customer_id="c", amount=Decimal("5.00"), currency="EUR",
                              payment_method="pm_card_chargeCustomerFail")
    payment, outcome = payment_charge_outcome(payment=payment)
    assert outcome["status"] == "FAILED"
    # The cancel request is handled between the charge and the effect (it announces its own outcome).
    assert payment_settle(order_id="order-1", reason="saga timed out").status == "CANCELED"
    with transaction.atomic(using="payments"), writes_deferred("payments"):
        payment_outcome_store(payment=payment, outcome=outcome)
    assert Payment.objects.get(order_id="order-1").status == "CANCELED"
    assert not OutboxMessage.objects.exists()


def test_a_payment_waiting_for_3d_secure_is_stored_open_and_announced_later(settings):
    import stripe

    client = stripe.StripeClient(settings.STRIPE_SECRET_KEY, base_addresses={"api": settings.STRIPE_API_BASE})
    method = client.v1.payment_methods.create(params={
        "type": "card", "card": {"number": "4000002500003155", "exp_month": 12, "exp_year": 2034, "cvc": "123"}})
    assert _process("order-3ds", method.id) == (Outcome.HANDLED, "")
    payment = Payment.objects.get(order_id="order-3ds")
    assert payment.status == "REQUIRES_ACTION" and payment.stripe_payment_intent_id
    assert not OutboxMessage.objects.exists()  # the webhook announces it once the customer is done


def _intents_at_stripe(settings, order_id: str) -> dict[str, str]:
    import stripe

    client = stripe.StripeClient(settings.STRIPE_SECRET_KEY, base_addresses={"api": settings.STRIPE_API_BASE})
    return {intent.id: intent.status for intent in client.v1.payment_intents.list(params={"limit": 100}).data
            if intent.metadata and intent.metadata.to_dict().get("order_id") == order_id}


def _open(order_id: str, method: str = "pm_card_visa"):
    return payment_open(order_id=order_id, customer_id="c", amount=Decimal("7.00"), currency="eur",
                        payment_method=method)


def test_a_charge_request_after_a_cancel_charges_nothing_and_cancels_its_spare_intent(settings):
    assert payment_settle(order_id="order-c", reason="saga timed out").status == "CANCELED"
    payment, counted = _open("order-c")
    assert (payment.status, payment.stripe_payment_intent_id, counted) == ("CANCELED", "", False)
    assert payment_charge_outcome(payment=payment) == (payment, None)
    assert list(_intents_at_stripe(settings, "order-c").values()) == ["canceled"]


def test_a_repeated_charge_request_keeps_the_first_intent_and_charges_once(settings):
    first, counted = _open("order-r")
    assert counted and first.stripe_payment_intent_id and first.attempts == 1
    again, counted = _open("order-r")  # the same request delivered again before any outcome
    assert (again.id, again.stripe_payment_intent_id, counted) == (first.id, first.stripe_payment_intent_id, False)
    again, outcome = payment_charge_outcome(payment=again)
    assert outcome["status"] == "SUCCEEDED" and again.attempts == 2
    intents = _intents_at_stripe(settings, "order-r")
    assert intents.pop(first.stripe_payment_intent_id) == "succeeded"
    assert list(intents.values()) == ["canceled"]  # the spare one


def test_a_payment_method_stripe_refuses_fails_the_payment():
    payment, counted = _open("order-x", method="pm_does_not_exist")
    assert (payment.status, payment.stripe_payment_intent_id, counted) == ("PROCESSING", "", False)
    payment, outcome = payment_charge_outcome(payment=payment)
    assert outcome["status"] == "FAILED" and "rejected by Stripe" in outcome["failure_reason"]


def test_a_charge_request_while_stripe_is_away_is_on_record_and_its_retry_charges_once(settings):
    from payments import stripe_gateway as gateway

    reachable = settings.STRIPE_API_BASE
    settings.STRIPE_API_BASE = "http://127.0.0.1:9"
    with pytest.raises(gateway.GatewayUnavailableError):
        _open("order-o")
    waiting = Payment.objects.get(order_id="order-o")
    assert (waiting.status, waiting.stripe_payment_intent_id, waiting.attempts) == ("PROCESSING", "", 0)
    settings.STRIPE_API_BASE = reachable
    payment, counted = _open("order-o")  # the redelivery
    assert counted and payment.id == waiting.id and payment.attempts == 1
    payment, outcome = payment_charge_outcome(payment=payment, attempt_counted=counted)
    assert outcome["status"] == "SUCCEEDED"
    assert list(_intents_at_stripe(settings, "order-o").values()) == ["succeeded"]


def test_a_charge_request_for_a_settled_payment_needs_no_stripe(settings):
    assert payment_settle(order_id="order-s", reason="cancelled").status == "CANCELED"
    settings.STRIPE_API_BASE = "http://127.0.0.1:9"  # Stripe away: the request is still answered
    assert _process("order-s") == (Outcome.HANDLED, "")
    assert Payment.objects.get(order_id="order-s").status == "CANCELED"
    assert list(OutboxMessage.objects.values_list("subject", flat=True)) == ["payments.cancelled"]
