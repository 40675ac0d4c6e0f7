"""Payments against the Stripe stand-in: one charge per order whatever the retries, exact
minor units, declines as business failures, outages as retries, refunds exactly once."""
from __future__ import annotations

from decimal import Decimal

import pytest
import stripe

from payments import stripe_gateway as gateway
from payments.models import Payment
from payments.services import payment_charge, payment_prepare, payment_settle
from tests.conftest import ALL_DATABASES

pytestmark = pytest.mark.django_db(databases=ALL_DATABASES)


def prepare(order_id="order-1", amount="12.34", method="pm_card_visa", currency="EUR") -> Payment:
    return payment_prepare(order_id=order_id, customer_id="c-1", amount=Decimal(amount), currency=currency,
                           payment_method=method)


def stripe_intent(settings, intent_id):
    client = stripe.StripeClient(settings.STRIPE_SECRET_KEY, base_addresses={"api": settings.STRIPE_API_BASE})
    return client.v1.payment_intents.retrieve(intent_id)


def test_a_charge_succeeds_in_minor_units(settings):
    payment = payment_charge(payment=prepare(amount="12.34"))
    assert payment.status == "SUCCEEDED" and payment.attempts == 1
    intent = stripe_intent(settings, payment.stripe_payment_intent_id)
    assert intent.amount == 1234 and intent.currency == "eur" and intent.status == "succeeded"
    assert intent.metadata["order_id"] == "order-1"


def test_a_zero_decimal_currency_is_charged_in_whole_units(settings):
    payment = payment_charge(payment=prepare(amount="1500", currency="JPY"))
    assert stripe_intent(settings, payment.stripe_payment_intent_id).amount == 1500


def test_a_decline_is_a_failure_with_the_reason():
    payment = payment_charge(payment=prepare(method="pm_card_chargeCustomerFail"))
    assert payment.status == "FAILED" and "card_declined" in payment.failure_reason


def test_the_payment_row_is_unique_per_order_and_keeps_the_first_request():
    first = prepare(amount="10.00")
    again = prepare(amount="99.00")
    assert again.id == first.id and again.amount == Decimal("10.00")
    assert Payment.objects.count() == 1


def test_charging_a_settled_payment_again_does_not_call_stripe(settings):
    payment = payment_charge(payment=prepare())
    settings.STRIPE_API_BASE = "http://127.0.0.1:9"  # would fail if called
    assert payment_charge(payment=payment).status == "SUCCEEDED"


def test_stripe_unreachable_is_retried_with_the_same_payment_intent(settings):
    good = settings.STRIPE_API_BASE
    payment = prepare()
    settings.STRIPE_API_BASE = "http://127.0.0.1:9"
    settings.STRIPE_TIMEOUT_SECONDS = 2
    with pytest.raises(gateway.GatewayUnavailableError):
        payment_charge(payment=payment)
    payment.refresh_from_db()
    assert payment.status == "PROCESSING" and payment.stripe_payment_intent_id == ""

    # Stripe comes back between creating the intent and confirming it.
    settings.STRIPE_API_BASE = good
    intent = gateway.payment_intent_create(amount_minor=1234, currency="EUR", payment_method="pm_card_visa",
                                           order_id="order-1", customer_id="c-1", idempotency_key="k")
    Payment.objects.filter(id=payment.id).update(stripe_payment_intent_id=intent.id)
    payment.refresh_from_db()
    done = payment_charge(payment=payment)
    assert done.status == "SUCCEEDED" and done.stripe_payment_intent_id == intent.id


def test_a_lost_confirmation_answer_is_recovered_from_the_intent(settings):
    payment = payment_charge(payment=prepare())
    # As if our record had not been written after Stripe charged: retry confirms again.
    Payment.objects.filter(id=payment.id).update(status="PROCESSING")
    payment.refresh_from_db()
    again = payment_charge(payment=payment)
    assert again.status == "SUCCEEDED" and again.stripe_payment_intent_id == payment.stripe_payment_intent_id
    assert again.attempts == 2


def test_refund_gives_back_the_whole_amount_exactly_once(settings):
    payment = payment_charge(payment=prepare(amount="20.00"))
    refunded = payment_settle(order_id="order-1", reason="late success")
    assert refunded.status == "REFUNDED" and refunded.refunded_amount == Decimal("20.00")
    # A repeated refund request (e.g. a crash before our record was written) finds the refund.
    Payment.objects.filter(id=payment.id).update(status="SUCCEEDED")
    again = payment_settle(order_id="order-1", reason="late success")
    assert again.stripe_refund_id == refunded.stripe_refund_id
    client = stripe.StripeClient(settings.STRIPE_SECRET_KEY, base_addresses={"api": settings.STRIPE_API_BASE})
    refunds = client.v1.refunds.list(params={"payment_intent": payment.stripe_payment_intent_id}).data
    assert [r.amount for r in refunds] == [2000]


def test_settling_a_failed_payment_changes_nothing():
    payment_charge(payment=prepare(method="pm_card_chargeCustomerFail"))
    assert payment_settle(order_id="order-1", reason="x").status == "FAILED"


def test_settling_before_the_charge_request_blocks_the_charge(settings):
    settled = payment_settle(order_id="order-1", reason="cancelled")
    assert settled.status == "CANCELED"
    payment = prepare()
    assert payment.id == settled.id
    settings.STRIPE_API_BASE = "http://127.0.0.1:9"  # Stripe must not even be called
    assert payment_charge(payment=payment).status == "CANCELED"


def test_settling_an_open_payment_without_intent_cancels_it():
    payment = prepare()
    settled = payment_settle(order_id="order-1", reason="timeout")
    assert settled.status == "CANCELED" and settled.id == payment.id
    assert payment_charge(payment=settled).stripe_payment_intent_id == ""


def test_settling_an_unconfirmed_intent_cancels_it_at_stripe(settings):
    payment = prepare()
    intent = gateway.payment_intent_create(amount_minor=1234, currency="EUR", payment_method="pm_card_visa",
                                           order_id="order-1", customer_id="c-1", idempotency_key="k")
    Payment.objects.filter(id=payment.id).update(stripe_payment_intent_id=intent.id)
    assert payment_settle(order_id="order-1", reason="cancel").status == "CANCELED"
    assert stripe_intent(settings, intent.id).status == "canceled"
    # A charge attempt that was racing with the cancel charges nothing.
    payment.refresh_from_db()
    assert payment_charge(payment=payment).status == "CANCELED"


def test_settling_a_payment_waiting_for_3d_secure_cancels_it(settings):
    client = stripe.StripeClient(settings.STRIPE_SECRET_KEY, base_addresses={"api": settings.STRIPE_API_BASE})
    method = client.v1.payment_methods.create(params={
        "type": "card", "card": {"number": "4000002500003155", "exp_month": 12, "exp_year": 2034, "cvc": "123"}})
    payment = payment_charge(payment=prepare(method=method.id))
    assert payment.status == "REQUIRES_ACTION"
    assert payment_settle(order_id="order-1", reason="cancel").status == "CANCELED"
    assert stripe_intent(settings, payment.stripe_payment_intent_id).status == "canceled"
