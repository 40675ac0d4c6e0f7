"""A fetched batch of charge requests (payments.handlers.batch_prepare): the Stripe calls side by
side, the rows in one INSERT, every outcome in the batch's one transaction; and whatever it
cannot settle goes one by one, without a second charge for any order."""
from __future__ import annotations

import json
import socket
import threading
import uuid
from decimal import Decimal

import pytest
from django.db import connections
from django.test.utils import CaptureQueriesContext

from a4co import clock
from infra.consumers import Outcome, deliveries_handle_together, delivery_handle, route_handles_batches
from infra.messages import message_envelope
from infra.nats import Delivery
from infra.streams import ROUTES
from payments import stripe_gateway as gateway
from payments.messages import PaymentCancelRequest, PaymentProcessRequest
from payments.models import InboxMessage, OutboxMessage, Payment
from payments.services import payment_settle
from tests.conftest import ALL_DATABASES
from tests.helpers import http_request_read

pytestmark = pytest.mark.django_db(databases=ALL_DATABASES)
PAYMENTS = next(route for route in ROUTES if route.name == "payment-service")


def _charge(method: str = "pm_card_visa", amount: str = "12.34") -> PaymentProcessRequest:
    return PaymentProcessRequest(order_id=str(uuid.uuid4()), customer_id="c", amount=Decimal(amount),
                                 currency="EUR", payment_method=method)


def _delivery(message, event_id: str | None = None) -> Delivery:
    event_id = event_id or str(uuid.uuid4())
    data = json.dumps(message_envelope(message, event_id=event_id, occurred_at=clock.now())).encode()
    return Delivery(subject=message.SUBJECT, data=data, msg_id=event_id, num_delivered=1, stream_sequence=0,
                    _msg=None)


def _one_by_one(deliveries: list[Delivery]) -> list[Outcome]:
    return [delivery_handle(PAYMENTS, subject=d.subject, data=d.data, msg_id=d.msg_id, num_delivered=2)[0]
            for d in deliveries]


def _charged_at_stripe(order_ids: list[str]) -> dict[str, tuple[int, int]]:
    """order id -> (succeeded PaymentIntents, minor units charged) at the Stripe stand-in."""
    money = gateway.money_by_order()
    return {order_id: (money[order_id].succeeded_intents, money[order_id].charged_minor)
            if order_id in money else (0, 0) for order_id in order_ids}


def test_the_payments_route_batches():
    assert route_handles_batches(PAYMENTS)


def test_a_batch_charges_each_order_once_and_stores_every_outcome_in_one_transaction():
    messages = [_charge(), _charge(), _charge("pm_card_chargeCustomerFail"), _charge()]
    deliveries = [_delivery(message) for message in messages]
    with CaptureQueriesContext(connections["payments"]) as queries:
        assert deliveries_handle_together(PAYMENTS, deliveries)
    orders = [message.order_id for message in messages]
    payments = {p.order_id: p for p in Payment.objects.filter(order_id__in=orders)}
    assert [payments[order].status for order in orders] == ["SUCCEEDED", "SUCCEEDED", "FAILED", "SUCCEEDED"]
    assert all(payments[order].attempts == 1 and payments[order].stripe_payment_intent_id for order in orders)
    assert "card declined" in payments[orders[2]].failure_reason
    assert sorted(OutboxMessage.objects.values_list("subject", flat=True)) == [
        "payments.failed", "payments.succeeded", "payments.succeeded", "payments.succeeded"]
    assert set(InboxMessage.objects.values_list("event_id", flat=True)) == {d.msg_id for d in deliveries}
    assert _charged_at_stripe(orders) == {orders[0]: (1, 1234), orders[1]: (1, 1234), orders[2]: (0, 0),
                                          orders[3]: (1, 1234)}
    # The four rows in one INSERT; the outcomes, their events and the inbox rows in one transaction.
    statements = [q["sql"] for q in queries.captured_queries
                  if not q["sql"].startswith(("SAVEPOINT", "RELEASE SAVEPOINT"))]
    assert sum(s.startswith('INSERT INTO "payments_payment"') for s in statements) == 1
    assert len(statements) <= 4, statements

    # Delivered again (a redelivery after a lost ack): duplicates, one by one, nothing charged twice.
    assert not deliveries_handle_together(PAYMENTS, deliveries)
    assert _one_by_one(deliveries) == [Outcome.DUPLICATE] * 4
    assert _charged_at_stripe(orders)[orders[0]] == (1, 1234)


def test_an_order_cancelled_before_its_charge_request_is_not_charged_in_a_batch():
    messages = [_charge(), _charge()]
    payment_settle(order_id=messages[1].order_id, reason="customer cancelled")
    assert deliveries_handle_together(PAYMENTS, [_delivery(message) for message in messages])
    orders = [message.order_id for message in messages]
    assert Payment.objects.get(order_id=orders[0]).status == "SUCCEEDED"
    assert Payment.objects.get(order_id=orders[1]).status == "CANCELED"
    assert _charged_at_stripe(orders) == {orders[0]: (1, 1234), orders[1]: (0, 0)}
    # The batch answers the cancelled order's charge request with its state (payment_settle,
    # called directly here, announces nothing itself).
    assert sorted(OutboxMessage.objects.values_list("subject", flat=True)) == [
        "payments.cancelled", "payments.succeeded"]


@pytest.mark.parametrize("other", [
    lambda first: PaymentCancelRequest(order_id=str(uuid.uuid4()), reason="timeout"),  # not a charge request
    lambda first: first,                                                              # the same order twice
    lambda first: _charge(amount="0.001"),                                            # a request nobody can charge
])
def test_a_batch_it_cannot_take_whole_goes_one_by_one_with_nothing_written(other):
    first = _charge()
    deliveries = [_delivery(first), _delivery(other(first))]
    assert not deliveries_handle_together(PAYMENTS, deliveries)
    assert not InboxMessage.objects.exists() and not OutboxMessage.objects.exists()
    outcomes = _one_by_one(deliveries)
    assert outcomes[0] == Outcome.HANDLED
    assert Payment.objects.get(order_id=first.order_id).status == "SUCCEEDED"
    assert _charged_at_stripe([first.order_id])[first.order_id] == (1, 1234)


def test_stripe_away_for_a_batch_leaves_it_to_the_one_by_one_pass_which_charges_each_order_once(settings):
    messages = [_charge(), _charge(), _charge()]
    deliveries = [_delivery(message) for message in messages]
    orders = [message.order_id for message in messages]
    reachable = settings.STRIPE_API_BASE
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        settings.STRIPE_API_BASE = f"http://127.0.0.1:{closed.getsockname()[1]}"  # nobody listens there
    assert not deliveries_handle_together(PAYMENTS, deliveries)
    # What it asked Stripe about is on record (ops see it; calls not started once Stripe proved
    # away are not made), nothing is charged, nothing is announced yet.
    statuses = list(Payment.objects.filter(order_id__in=orders).values_list("status", flat=True))
    assert 1 <= len(statuses) <= 3 and set(statuses) == {"PROCESSING"}
    assert not InboxMessage.objects.exists() and not OutboxMessage.objects.exists()

    settings.STRIPE_API_BASE = reachable
    assert _one_by_one(deliveries) == [Outcome.HANDLED] * 3
    assert sorted(Payment.objects.filter(order_id__in=orders).values_list("status", flat=True)) == ["SUCCEEDED"] * 3
    assert _charged_at_stripe(orders) == {order: (1, 1234) for order in orders}


def test_a_stripe_that_never_answers_costs_a_batch_one_round_of_timeouts(settings):
    # A Stripe that accepts connections and never answers: each call waits out its timeout. The
    # batch stops asking at the first one, so it does not wait once per STRIPE_CONCURRENCY of its
    # requests (40 requests / 8 at a time would be 5 rounds); then it goes one by one.
    asked, stop = [], threading.Event()

    def silent(conn):
        with conn:
            asked.append(http_request_read(conn))
            stop.wait(30)

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(64)

    def accept():
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            threading.Thread(target=silent, args=(conn,), daemon=True).start()

    threading.Thread(target=accept, daemon=True).start()
    settings.STRIPE_API_BASE = f"http://127.0.0.1:{listener.getsockname()[1]}"
    settings.STRIPE_TIMEOUT_SECONDS = 1
    messages = [_charge() for _ in range(40)]
    try:
        assert not deliveries_handle_together(PAYMENTS, [_delivery(message) for message in messages])
    finally:
        stop.set()
        listener.close()
    assert 1 <= len(asked) <= 2 * settings.STRIPE_CONCURRENCY, len(asked)
    # The requests it asked about are on record; the others are left to the one-by-one pass.
    on_record = Payment.objects.filter(order_id__in=[m.order_id for m in messages])
    assert 1 <= on_record.count() <= len(asked) and {p.status for p in on_record} == {"PROCESSING"}
    assert not InboxMessage.objects.exists() and not OutboxMessage.objects.exists()
