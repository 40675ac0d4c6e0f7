"""Payment writes: one payment per order, charged at most once, refunded at most once.

The Stripe calls happen outside any database transaction (a slow Stripe must not hold row
locks); the state that makes retries safe is committed around them:
1. a charge request first creates the PaymentIntent (unconfirmed: nothing is charged yet), then
   commits the payment row (unique per order) with the intent's id in one INSERT
   (`payment_open`). If the order already has a row (a redelivery, or a cancel that came
   first), that row wins and the new intent is cancelled at Stripe;
2. `payment_charge_outcome` confirms the stored intent, so every retry confirms that same
   intent (a row without one, e.g. from `payment_prepare`, gets its intent id committed before
   the confirm); the Stripe idempotency keys derive from the order id;
3. the outcome is written, and the event announced, in the consumer's effect transaction, only
   while the payment is still open (`payment_outcome_store`).
A fetched batch of charge requests takes the same steps, each for the whole batch
(`payments_charge_outcomes`): its intents created side by side, its rows in one INSERT, its
intents confirmed side by side, its outcomes stored in one transaction.
"""
from __future__ import annotations

import logging
import threading
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal

from django.conf import settings
from django.db import connections, transaction

from a4co import clock
from a4co.db import SLOT, mark_saved, sql_array, sql_execute, sql_insert, sql_update_values, statements_run_together
from a4co.money import to_minor_units
from infra.outbox import outbox_append, outbox_append_statement
from payments import stripe_gateway as gateway
from payments.messages import PaymentCancelled, PaymentFailed, PaymentRefunded, PaymentSucceeded
from payments.models import OutboxMessage, Payment, StripeWebhookEvent

log = logging.getLogger(__name__)
DB = "payments"
OPEN = (Payment.Status.PROCESSING, Payment.Status.REQUIRES_ACTION)
OPEN_SQL_ARRAY = sql_array(OPEN)  # the parameter of "status = ANY(%s::text[])", built once
SETTLED = (Payment.Status.FAILED, Payment.Status.CANCELED, Payment.Status.REFUNDED)


def payment_prepare(*, order_id: str, customer_id: str, amount: Decimal, currency: str,
                    payment_method: str) -> Payment:
    """Get or create the order's payment row (committed). A repeated request keeps the first amount.

    Hot path: the first request is one autocommitted INSERT; a repeat (redelivery) finds the
    unique order id taken and reads the row that holds it.
    """
    payment = Payment(order_id=order_id, customer_id=customer_id, amount=amount, currency=currency.upper(),
                      payment_method=payment_method)
    if not _payment_insert(payment):
        payment = Payment.objects.using(DB).get(order_id=order_id)
        _differing_request_log(payment, amount, currency.upper())
    return payment


def _payment_insert(payment: Payment) -> bool:
    """Write a new payment row (one statement; autocommitted outside a transaction). False, and
    nothing written, if the order has a row already (that one holds: one payment per order)."""
    return bool(_payments_insert([payment]))


def _differing_request_log(payment: Payment, amount: Decimal, currency: str) -> None:
    # A row written by a cancel that came first has no amount of its own to differ from.
    if payment.currency and (payment.amount != amount or payment.currency != currency):
        log.error("payment request differs from the first one orderId=%s first=%s %s now=%s %s",
                  payment.order_id, payment.amount, payment.currency, amount, currency)


def payment_open(*, order_id: str, customer_id: str, amount: Decimal, currency: str,
                 payment_method: str) -> tuple[Payment, bool]:
    """The order's payment row (committed), with a PaymentIntent for it when Stripe took one;
    returns (payment, whether this call counted a charge attempt on it).

    Hot path (every charge request): the intent is created at Stripe (unconfirmed: nothing is
    charged), then the row is written with the intent's id and the attempt in one autocommitted
    INSERT, instead of an INSERT before Stripe and an UPDATE after it. If the order already has
    a row (a redelivery, an ops re-send, or a cancel that arrived first), that row wins: an open
    one without an intent (written while Stripe was away) takes this intent; otherwise the row
    is returned as it is and the new intent is cancelled at Stripe, unless it is the row's own (a
    Stripe that replays an idempotent create). A payment method Stripe refuses leaves the row
    without an intent (payment_charge_outcome records the refusal). While Stripe cannot be
    reached, the row is written without an intent (the request is on record, ops see it) and
    GatewayUnavailableError is raised, unless the payment is settled already.
    """
    request = {"order_id": order_id, "customer_id": customer_id, "amount": amount, "currency": currency.upper(),
               "payment_method": payment_method}
    return _payment_open_with(_intent_open(request), request)


def _intent_open(request: dict) -> gateway.IntentState | gateway.GatewayRejectedError | gateway.GatewayUnavailableError:
    """The unconfirmed PaymentIntent for a charge request (payment_open's kwargs, currency in
    upper case), or the gateway error that refused it: returned, not raised, so that a batch can
    create its intents concurrently and sort the answers out afterwards."""
    try:
        return gateway.payment_intent_create(
            amount_minor=to_minor_units(request["amount"], request["currency"]), currency=request["currency"],
            payment_method=request["payment_method"], order_id=request["order_id"],
            customer_id=request["customer_id"], idempotency_key=f"a4co-order-{request['order_id']}-create")
    except (gateway.GatewayRejectedError, gateway.GatewayUnavailableError) as exc:
        return exc


def _payment_open_with(intent, request: dict) -> tuple[Payment, bool]:
    """payment_open once Stripe has answered the intent's creation (`_intent_open`)."""
    if isinstance(intent, gateway.GatewayRejectedError):
        return payment_prepare(**request), False
    if isinstance(intent, gateway.GatewayUnavailableError):
        # The request is on record (and shown to ops) while Stripe is away; the retry stores its
        # intent on this row. A payment settled already (a cancel came first) needs no Stripe.
        payment = payment_prepare(**request)
        if payment.status in OPEN:
            raise intent
        return payment, False
    payment = Payment(**request, stripe_payment_intent_id=intent.id, attempts=1)
    if _payment_insert(payment):
        return payment, True
    return _payment_taken(payment, intent.id)


def _payment_taken(new: Payment, intent_id: str) -> tuple[Payment, bool]:
    """payment_open for an order whose row was there already: `new` (with its fresh intent) lost."""
    payment = Payment.objects.using(DB).get(order_id=new.order_id)
    _differing_request_log(payment, new.amount, new.currency)
    if payment.status in OPEN and not payment.stripe_payment_intent_id:
        if _intent_store(payment, intent_id):
            return payment, True
        payment = Payment.objects.using(DB).get(id=payment.id)  # it moved on meanwhile
    if payment.stripe_payment_intent_id != intent_id:
        try:
            gateway.payment_intent_cancel(intent_id=intent_id)
        except (gateway.GatewayUnavailableError, gateway.GatewayRejectedError):  # unconfirmed: charges nothing
            log.warning("could not cancel a spare PaymentIntent orderId=%s intent=%s", new.order_id, intent_id,
                        exc_info=True)
    return payment, False


def payments_charge_outcomes(requests: list[dict]) -> list[tuple[Payment, dict | None]]:
    """payment_open then payment_charge_outcome for several orders (`requests`: payment_open's
    kwargs, each for a different order), in order: the batch's PaymentIntents are created, and
    then confirmed, concurrently (STRIPE_CONCURRENCY calls at a time), and the rows of the new
    payments are written by one autocommitted INSERT. What each returns is stored, as for one,
    with payment_outcome_store in the caller's transaction.

    Raises GatewayUnavailableError if Stripe could not give any one of them an answer (its calls
    not started by then are not made: an outage costs the batch one round of timeouts); what was
    written stays (rows, with their intents when Stripe made them, attempts counted) and every
    step is safe to repeat one order at a time (payment_open finds the row and cancels the spare
    intent it made; payment_charge_outcome confirms the stored intent).
    """
    requests = [{**request, "currency": request["currency"].upper()} for request in requests]
    intents = _stripe_calls(_intent_open, requests)
    fresh = [Payment(**request, stripe_payment_intent_id=intent.id, attempts=1)
             for request, intent in zip(requests, intents, strict=True) if isinstance(intent, gateway.IntentState)]
    inserted = _payments_insert(fresh)
    opened, unavailable = [], None
    for request, intent in zip(requests, intents, strict=True):
        row = inserted.get(request["order_id"])
        if row is not None:
            opened.append((row, True))
        elif isinstance(intent, gateway.IntentState):
            opened.append(_payment_taken(Payment(**request), intent.id))
        elif intent is None:  # not asked: Stripe was away for another request of the batch
            unavailable = unavailable or gateway.GatewayUnavailableError("stripe unreachable for this batch")
        else:
            try:
                opened.append(_payment_open_with(intent, request))
            except gateway.GatewayUnavailableError as exc:  # every request asked goes on record first
                unavailable = unavailable or exc
    if unavailable is not None:
        raise unavailable
    # Confirming a fresh row's intent is Stripe alone; the others count their attempt first (a write).
    plain = [index for index, (payment, counted) in enumerate(opened)
             if counted and payment.stripe_payment_intent_id and payment.status in OPEN]
    confirmed = dict(zip(plain, _stripe_calls(
        lambda index: payment_charge_outcome(payment=opened[index][0], attempt_counted=True), plain), strict=True))
    return [confirmed[index] if index in confirmed else payment_charge_outcome(payment=payment, attempt_counted=counted)
            for index, (payment, counted) in enumerate(opened)]


def _payments_insert(payments: list[Payment]) -> dict[str, Payment]:
    """Write new payment rows in one autocommitted INSERT; returns those written, by order id
    (an order that has a row already keeps it: ON CONFLICT DO NOTHING)."""
    if not payments:
        return {}
    insert, params = sql_insert(payments, DB)
    with connections[DB].cursor() as cursor:
        cursor.execute(insert + " ON CONFLICT (order_id) DO NOTHING RETURNING order_id", params)
        written = {row[0] for row in cursor.fetchall()}
    rows = {payment.order_id: payment for payment in payments if payment.order_id in written}
    for payment in rows.values():
        mark_saved(DB, payment)
    return rows


def _stripe_calls(call, items: list) -> list:
    """[call(item) for item in items], STRIPE_CONCURRENCY at a time. At the first Stripe that is
    away (GatewayUnavailableError, raised or returned), the calls not started yet are dropped
    (None in their place; raised: nothing returned), so that an outage costs a batch one round of
    timeouts, not one per STRIPE_CONCURRENCY of its requests."""
    futures = [_stripe_pool().submit(call, item) for item in items]
    results: list = []
    try:
        for future in futures:
            result = future.result() if not future.cancelled() else None
            results.append(result)
            if isinstance(result, gateway.GatewayUnavailableError):
                for later in futures:
                    later.cancel()
    except gateway.GatewayUnavailableError:
        for later in futures:
            later.cancel()
        raise
    return results


_pool: ThreadPoolExecutor | None = None
_pool_lock = threading.Lock()


def _stripe_pool() -> ThreadPoolExecutor:
    # Threads that only wait on Stripe (no database): a batch's calls overlap instead of queueing.
    global _pool
    with _pool_lock:
        if _pool is None:
            _pool = ThreadPoolExecutor(settings.STRIPE_CONCURRENCY, thread_name_prefix="stripe")
        return _pool


def _intent_store(payment: Payment, intent_id: str) -> bool:
    """Store the PaymentIntent's id and count an attempt on an open payment that has no intent yet
    (one autocommitted statement); False if it has one now or was settled meanwhile (that wins:
    the caller's intent stays unconfirmed, nothing is charged)."""
    now = clock.now()
    stored = sql_execute(DB, sql_update_values(
        Payment, payment.id, {"stripe_payment_intent_id": intent_id, "attempts": payment.attempts + 1,
                              "updated_at": now},
        DB, where="status = ANY(%s::text[]) AND stripe_payment_intent_id = ''", where_params=[OPEN_SQL_ARRAY]))
    if stored:
        payment.stripe_payment_intent_id, payment.updated_at = intent_id, now
        payment.attempts += 1
    return bool(stored)


def _payment_update(payment: Payment, *, only_if: tuple, **fields) -> Payment:
    """Update the payment if its status is still one of `only_if`; returns its current state.

    One autocommitted UPDATE (atomic on its own); the row is read again only when it had moved on.
    """
    fields["updated_at"] = clock.now()
    updated = sql_execute(DB, sql_update_values(Payment, payment.id, fields, DB, where="status = ANY(%s::text[])",
                                                where_params=[sql_array(only_if)]))
    if not updated:  # it moved on meanwhile: report where it is now
        return Payment.objects.using(DB).get(id=payment.id)
    for name, value in fields.items():
        setattr(payment, name, value)
    return payment


def payment_charge(*, payment: Payment) -> Payment:
    """Charge an open payment through Stripe and commit the outcome; returns the fresh row.

    Raises GatewayUnavailableError when the outcome is unknown or temporary (the caller
    retries later with the same PaymentIntent).
    """
    payment, outcome = payment_charge_outcome(payment=payment)
    return _payment_update(payment, only_if=OPEN, **outcome) if outcome else payment


def payment_charge_outcome(*, payment: Payment, attempt_counted: bool = False) -> tuple[Payment, dict | None]:
    """payment_charge without its last write: returns the payment and the fields its outcome
    sets (None: nothing to write, the payment was settled before it was charged), for the
    caller to store with payment_outcome_store in its effect transaction.

    `attempt_counted`: the caller has just written the row, open, with this attempt counted
    (payment_open); otherwise the attempt is counted, and the row checked still open, first.
    Raises GatewayUnavailableError as payment_charge does.
    """
    if payment.status not in OPEN:
        return payment, None
    key = f"a4co-order-{payment.order_id}"
    if not payment.stripe_payment_intent_id:
        try:
            intent = gateway.payment_intent_create(
                amount_minor=to_minor_units(payment.amount, payment.currency), currency=payment.currency,
                payment_method=payment.payment_method, order_id=payment.order_id,
                customer_id=payment.customer_id, idempotency_key=f"{key}-create")
        except gateway.GatewayRejectedError as exc:
            return payment, _failed(f"payment rejected by Stripe: {exc}")
        # The intent id and the first attempt are committed before the confirm. A concurrent
        # delivery may have stored its intent first (that one wins), or the payment was cancelled
        # meanwhile (the new intent stays unconfirmed: nothing charged).
        if _intent_store(payment, intent.id):
            attempt_counted = True
        else:
            payment = Payment.objects.using(DB).get(id=payment.id)
            if payment.status not in OPEN:
                return payment, None
    if not attempt_counted:
        payment = _payment_update(payment, only_if=OPEN, attempts=payment.attempts + 1)
    if payment.status not in OPEN:  # settled (cancelled) meanwhile: do not charge
        return payment, None
    try:
        state = gateway.payment_intent_confirm(intent_id=payment.stripe_payment_intent_id,
                                               idempotency_key=f"{key}-confirm")
    except gateway.GatewayRejectedError as exc:
        return payment, _failed(f"payment rejected by Stripe: {exc}")
    if state.status == "succeeded":
        return payment, {"status": Payment.Status.SUCCEEDED, "failure_reason": ""}
    if state.declined or state.status in ("requires_payment_method", "canceled"):
        reason = f"card declined ({state.decline_code or state.status})"
        if state.decline_message:
            reason += f": {state.decline_message}"
        return payment, _failed(reason)
    if state.status == "requires_action":
        return payment, {"status": Payment.Status.REQUIRES_ACTION,
                         "failure_reason": "waiting for customer authentication (3-D Secure)"}
    raise gateway.GatewayUnavailableError(f"payment intent {state.id} is {state.status}; outcome not known yet")


def _failed(reason: str) -> dict:
    return {"status": Payment.Status.FAILED, "failure_reason": reason[:500]}


def payment_outcome_store(*, payment: Payment, outcome: dict) -> None:
    """Store a charge's outcome (from payment_charge_outcome) and announce it, in the caller's
    transaction, if the payment is still open: one statement, sent with the transaction's other
    deferred writes (the consumer's inbox row: a4co.db.writes_deferred).

    If the payment was settled meanwhile (a cancel request won the race), nothing is stored or
    announced here: whoever settled it announced that. Never leaves the outcome stored without
    its event, or the event without the outcome.
    """
    fields = {**outcome, "updated_at": clock.now()}
    update, params = sql_update_values(Payment, payment.id, fields, DB, where="status = ANY(%s::text[])",
                                       where_params=[OPEN_SQL_ARRAY])
    for name, value in fields.items():
        setattr(payment, name, value)
    message = _outcome_message(payment)
    if message is None:  # still open (3-D Secure): nothing to announce yet
        statements_run_together(DB, [(update, params)], deferrable=True)
        return
    # A batch's outcome statements travel together (one WITH list): SLOT keeps their names apart.
    stored = f"stored{SLOT}"
    insert, insert_params = outbox_append_statement(OutboxMessage, message, aggregate_id=payment.order_id,
                                                    when=stored)
    statements_run_together(DB, [(f"WITH {stored} AS ({update} RETURNING 1) {insert}", [*params, *insert_params])],
                            deferrable=True)


def _outcome_message(payment: Payment):
    """The event that describes the payment's state; None for an open payment."""
    if payment.status == Payment.Status.SUCCEEDED:
        return PaymentSucceeded(
            order_id=payment.order_id, payment_id=str(payment.id), amount=payment.amount,
            stripe_payment_intent_id=payment.stripe_payment_intent_id, currency=payment.currency)
    if payment.status == Payment.Status.FAILED:
        return PaymentFailed(order_id=payment.order_id, reason=payment.failure_reason, timestamp=clock.now(),
                             payment_id=str(payment.id))
    if payment.status == Payment.Status.REFUNDED:
        return PaymentRefunded(
            order_id=payment.order_id, payment_id=str(payment.id), amount=payment.refunded_amount,
            reason=payment.refund_reason, stripe_refund_id=payment.stripe_refund_id or None)
    if payment.status == Payment.Status.CANCELED:
        return PaymentCancelled(order_id=payment.order_id, reason=payment.failure_reason, payment_id=str(payment.id))
    return None


def payment_outcome_announce(*, payment: Payment) -> None:
    """Emit the event that describes the payment's state (in the caller's transaction); open
    payments emit nothing."""
    message = _outcome_message(payment)
    if message is not None:
        outbox_append(OutboxMessage, message, aggregate_id=payment.order_id)


def payment_settle(*, order_id: str, reason: str) -> Payment:
    """Make sure nothing is kept for the order; returns the settled row (CANCELED, FAILED or REFUNDED).

    - no payment yet: a CANCELED row is written first, so a charge request arriving later
      charges nothing;
    - open, no PaymentIntent yet: CANCELED (a concurrent charge cannot store an intent on it);
    - open with a PaymentIntent: cancelled at Stripe while it can be, refunded if it was charged;
    - SUCCEEDED: refunded in full, exactly once.
    Raises GatewayUnavailableError while Stripe cannot tell (retry later).
    """
    with transaction.atomic(using=DB, durable=True):
        payment, created = Payment.objects.using(DB).get_or_create(order_id=order_id, defaults={
            "customer_id": "", "amount": Decimal("0"), "currency": "", "payment_method": "",
            "status": Payment.Status.CANCELED, "failure_reason": f"cancelled before any charge: {reason}"[:500]})
    if created or payment.status in SETTLED:
        return payment
    if payment.status in OPEN and not payment.stripe_payment_intent_id:
        with transaction.atomic(using=DB, durable=True):
            cancelled = Payment.objects.using(DB).filter(id=payment.id, status__in=OPEN,
                                                         stripe_payment_intent_id="").update(
                status=Payment.Status.CANCELED, failure_reason=f"cancelled before any charge: {reason}"[:500],
                updated_at=clock.now())
            payment = Payment.objects.using(DB).get(id=payment.id)
        if cancelled:
            return payment
    if payment.status in OPEN:
        state = gateway.payment_intent_cancel(intent_id=payment.stripe_payment_intent_id)
        if state.status == "canceled" or state.status == "requires_payment_method":
            return _payment_update(payment, only_if=OPEN, status=Payment.Status.CANCELED,
                                   failure_reason=f"payment cancelled: {reason}"[:500])
        if state.status != "succeeded":
            raise gateway.GatewayUnavailableError(f"payment intent {state.id} is {state.status}; cannot settle yet")
        payment = _payment_update(payment, only_if=OPEN, status=Payment.Status.SUCCEEDED)
    if payment.status == Payment.Status.SUCCEEDED:
        return _refund(payment, reason)
    return payment


def _refund(payment: Payment, reason: str) -> Payment:
    refund_id = gateway.refund_ensure(
        intent_id=payment.stripe_payment_intent_id, amount_minor=to_minor_units(payment.amount, payment.currency),
        order_id=payment.order_id, idempotency_key=f"a4co-order-{payment.order_id}-refund")
    return _payment_update(payment, only_if=(Payment.Status.SUCCEEDED,), status=Payment.Status.REFUNDED,
                           refunded_amount=payment.amount, stripe_refund_id=refund_id, refund_reason=reason[:500])


def payment_webhook_apply(*, event: gateway.WebhookEvent) -> str:
    """Feed a verified Stripe webhook into the same path as our own charge; returns what happened.

    The event id is recorded in the same transaction as the effect, so a redelivered webhook is
    a no-op. payment_intent.succeeded / .payment_failed settle an open payment (e.g. one that
    waited for 3-D Secure) from the PaymentIntent's state as Stripe reports it now (retrieved,
    not trusted from the webhook body), and announce the outcome. Other event types are
    recorded and ignored. Raises GatewayUnavailableError if Stripe cannot be asked (the caller
    answers 503 so that Stripe retries the webhook).
    """
    handled = {"payment_intent.succeeded", "payment_intent.payment_failed"}
    state = (gateway.payment_intent_retrieve(intent_id=event.payment_intent_id)
             if event.type in handled and event.payment_intent_id else None)
    with transaction.atomic(using=DB, durable=True):
        record, created = StripeWebhookEvent.objects.using(DB).get_or_create(
            event_id=event.id, defaults={"type": event.type, "payment_intent_id": event.payment_intent_id})
        if not created:
            return "duplicate"
        outcome = _webhook_effect(event, state)
        record.outcome = outcome[:200]
        record.save(using=DB, update_fields=["outcome"])
    log.info("stripe webhook eventId=%s type=%s intent=%s: %s", event.id, event.type, event.payment_intent_id, outcome)
    return outcome


def _webhook_effect(event: gateway.WebhookEvent, state: gateway.IntentState | None) -> str:
    if state is None:
        return "ignored"
    payment = (Payment.objects.using(DB).select_for_update()
               .filter(stripe_payment_intent_id=event.payment_intent_id).first())
    if payment is None:
        return "no payment for this PaymentIntent"
    if payment.status not in OPEN:
        return f"payment already {payment.status}"
    now = clock.now()
    if state.status == "succeeded":
        payment.status, payment.failure_reason = Payment.Status.SUCCEEDED, ""
    elif state.status in ("requires_payment_method", "canceled"):
        reason = f"payment failed ({state.decline_code or state.status})"
        if state.decline_message:
            reason += f": {state.decline_message}"
        payment.status, payment.failure_reason = Payment.Status.FAILED, reason[:500]
    else:
        return f"payment intent is {state.status}; nothing to do yet"
    payment.updated_at = now
    payment.save(using=DB, update_fields=["status", "failure_reason", "updated_at"])
    payment_outcome_announce(payment=payment)
    return f"payment {payment.status}"
