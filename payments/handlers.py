"""Payment's message handlers. They call Stripe before writing, so they open their own effect
transaction (see infra.consumers.handler_outside_transaction)."""
from __future__ import annotations

from infra.consumers import handler_outside_transaction
from payments.messages import PaymentCancelRequest, PaymentProcessRequest, PaymentRefundRequest
from payments.services import payment_charge, payment_outcome_announce, payment_prepare, payment_settle


@handler_outside_transaction
def handle_payments_process_request(message: PaymentProcessRequest, *, effect) -> None:
    payment = payment_prepare(order_id=message.order_id, customer_id=message.customer_id,
                              amount=message.amount, currency=message.currency,
                              payment_method=message.payment_method)
    payment = payment_charge(payment=payment)
    with effect():
        payment_outcome_announce(payment=payment)


@handler_outside_transaction
def handle_payments_cancel_request(message: PaymentCancelRequest, *, effect) -> None:
    payment = payment_settle(order_id=message.order_id, reason=message.reason)
    with effect():
        payment_outcome_announce(payment=payment)


@handler_outside_transaction
def handle_payments_refund_request(message: PaymentRefundRequest, *, effect) -> None:
    payment = payment_settle(order_id=message.order_id, reason=message.reason)
    with effect():
        payment_outcome_announce(payment=payment)


HANDLERS = {
    "payments.process_request": handle_payments_process_request,
    "payments.cancel_request": handle_payments_cancel_request,
    "payments.refund_request": handle_payments_refund_request,
}
