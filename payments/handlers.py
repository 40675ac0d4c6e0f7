"""Payment's message handlers. They call Stripe before writing, so they open their own effect
transaction (see infra.consumers.handler_outside_transaction)."""
from __future__ import annotations

import functools
import re
from collections.abc import Callable

from a4co.money import MoneyError, to_minor_units
from infra.consumers import handler_outside_transaction
from infra.messages import MalformedMessageError
from payments.messages import PaymentCancelRequest, PaymentProcessRequest, PaymentRefundRequest
from payments.services import (
    payment_charge_outcome,
    payment_open,
    payment_outcome_announce,
    payment_outcome_store,
    payment_settle,
    payments_charge_outcomes,
)

# Order ids name Stripe idempotency keys (an HTTP header) and metadata: identifiers only.
ORDER_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:\-]{0,63}")


def _order_id(message) -> str:
    """The message's orderId, or MalformedMessageError (poison: never retried, nothing written)."""
    if not ORDER_ID.fullmatch(message.order_id):
        raise MalformedMessageError(f"{message.SUBJECT}: orderId {message.order_id[:80]!r} is not an order id")
    return message.order_id


def _charge_request(message: PaymentProcessRequest) -> dict:
    """payment_open's arguments for the request; MalformedMessageError for one no retry can charge."""
    if not message.amount > 0:
        raise MalformedMessageError(f"{message.SUBJECT}: amount {message.amount} is not a positive amount")
    try:
        to_minor_units(message.amount, message.currency)
    except MoneyError as exc:  # e.g. 0.001 EUR: Stripe charges whole cents, and no retry changes that
        raise MalformedMessageError(f"{message.SUBJECT}: amount {message.amount} {message.currency}: {exc}") from exc
    return {"order_id": _order_id(message), "customer_id": message.customer_id, "amount": message.amount,
            "currency": message.currency, "payment_method": message.payment_method}


def _outcome_write(payment, outcome: dict | None) -> None:
    if outcome:
        payment_outcome_store(payment=payment, outcome=outcome)
    else:
        payment_outcome_announce(payment=payment)


@handler_outside_transaction
def handle_payments_process_request(message: PaymentProcessRequest, *, effect) -> None:
    payment, counted = payment_open(**_charge_request(message))
    payment, outcome = payment_charge_outcome(payment=payment, attempt_counted=counted)
    with effect():
        _outcome_write(payment, outcome)


def batch_prepare(messages: list) -> list[Callable[[], None]] | None:
    """A fetched batch of charge requests (ConsumerRoute.batch_prepare): their Stripe calls side
    by side (payments_charge_outcomes), then, per request, the write of its outcome for the
    batch's transaction. None (handle them one by one) unless every message is a charge request
    for an order of its own. Raises what payments_charge_outcomes raises, and
    MalformedMessageError for a request no retry can charge: the runner then handles them one by
    one, which repeats safely what was done.
    """
    if not all(isinstance(message, PaymentProcessRequest) for message in messages):
        return None
    requests = [_charge_request(message) for message in messages]
    if len({request["order_id"] for request in requests}) != len(requests):
        return None
    return [functools.partial(_outcome_write, payment, outcome)
            for payment, outcome in payments_charge_outcomes(requests)]


@handler_outside_transaction
def handle_payments_cancel_request(message: PaymentCancelRequest, *, effect) -> None:
    payment = payment_settle(order_id=_order_id(message), reason=message.reason)
    with effect():
        payment_outcome_announce(payment=payment)


@handler_outside_transaction
def handle_payments_refund_request(message: PaymentRefundRequest, *, effect) -> None:
    payment = payment_settle(order_id=_order_id(message), reason=message.reason)
    with effect():
        payment_outcome_announce(payment=payment)


HANDLERS = {
    "payments.process_request": handle_payments_process_request,
    "payments.cancel_request": handle_payments_cancel_request,
    "payments.refund_request": handle_payments_refund_request,
}
