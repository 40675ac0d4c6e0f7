"""The orchestrator's writes: start a saga, apply a trigger to it, sweep deadlines.

Every function here writes to the Order Service's database (alias `orders`) and must run in a
transaction on it; `saga_apply` locks the order row and then the saga row (always in that
order, so concurrent triggers for one order serialise instead of deadlocking), runs the pure
engine, and writes the new state, the step log, the order's status and the outgoing messages
(outbox) together. If anything fails, nothing of it is kept.
"""
from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import datetime as dt
import functools
import logging
import threading
import uuid
from collections.abc import Callable, Iterator

from django.conf import settings
from django.db import transaction

from a4co import clock
from a4co.db import (
    mark_saved,
    model_pairs_select,
    sql_array,
    sql_insert,
    sql_update,
    statements_run_together,
    writes_flush,
)
from a4co.errors import ApplicationError, NotFoundError
from infra.consumers import current_event_id
from infra.outbox import outbox_append
from inventory.messages import InventoryReleaseRequest
from orders.messages import OrderCancelled, OrderConfirmed, OrderCreated, OrderFailed
from orders.models import Order, OutboxMessage
from payments.messages import PaymentCancelRequest, PaymentProcessRequest, PaymentRefundRequest
from saga.definition import TERMINAL, Effect, Trigger
from saga.engine import Decision, EngineConfig, saga_decide, saga_initial_state
from saga.models import AuditEntry, SagaInstance, SagaStep

log = logging.getLogger(__name__)
DB = "orders"


def engine_config() -> EngineConfig:
    return EngineConfig(
        saga_timeout=dt.timedelta(seconds=settings.SAGA_TIMEOUT_SECONDS),
        payment_timeout=dt.timedelta(seconds=settings.PAYMENT_TIMEOUT_SECONDS),
        compensation_retry=dt.timedelta(seconds=settings.SAGA_COMPENSATION_RETRY_SECONDS),
        compensation_max_attempts=settings.SAGA_COMPENSATION_MAX_ATTEMPTS,
    )


class _Batch(threading.local):
    # Sagas (with their orders) a consumer batch locked up front, by order id; each is handed out
    # once (sagas_batch_locked).
    sagas: dict[str, SagaInstance] | None = None


_batch = _Batch()


def _saga_with_order_locked(order_id: str) -> SagaInstance | None:
    """The order's saga with its order, both rows locked (FOR UPDATE), in one statement; None if
    the order has no saga.

    Hot path (every saga event): a prebuilt SELECT (a4co.db.model_pair_select). The ORM's
    select_related().select_for_update() spent more CPU building the query than PostgreSQL did
    running it. Inside sagas_batch_locked the batch's first use of an order's saga costs no query.
    """
    try:
        order_uuid = uuid.UUID(str(order_id))
    except ValueError:
        return None  # not an order id: no such saga
    if _batch.sagas is not None:
        saga = _batch.sagas.pop(str(order_uuid), None)
        if saga is not None:
            return saga
    # saga_apply's writes may be queued (writes_deferred): a second event of an order in one
    # transaction must read what the first one wrote.
    writes_flush(DB)
    sagas = _sagas_with_orders_locked("f.order_id = %s", [order_uuid])
    return sagas[0] if sagas else None


def _sagas_with_orders_locked(where: str, params: list, order_by: str = "") -> list[SagaInstance]:
    """The sagas `where` selects, each with its `order`, both rows locked (FOR UPDATE)."""
    sagas = []
    for saga, order in model_pairs_select(SagaInstance, Order, DB, on="s.id = f.order_id", where=where,
                                          params=params, tail=f"{order_by} FOR UPDATE"):
        saga.order = order
        sagas.append(saga)
    return sagas


@contextlib.contextmanager
def sagas_batch_locked(order_ids) -> Iterator[None]:
    """Inside a consumer batch's transaction: lock the sagas of `order_ids` with their orders (in
    order-id order, one SELECT) and, until the block exits, hand each to the first saga_apply of
    this thread that asks for it. A later event of the same order in the batch selects it again
    (it sees what the first one wrote). Ids that are not UUIDs, or have no saga, are left to
    saga_apply, which ignores them as it does outside a batch.
    """
    wanted = set()
    for order_id in order_ids:
        try:
            wanted.add(uuid.UUID(str(order_id)))
        except ValueError:
            continue
    _batch.sagas = {str(saga.order_id): saga for saga in _sagas_with_orders_locked(
        "f.order_id = ANY(%s::text::uuid[])", [sql_array(sorted(wanted))], order_by="ORDER BY f.order_id")}
    try:
        yield
    finally:
        _batch.sagas = None


def saga_start(*, order: Order, items: list | None = None, order_unsaved: bool = False) -> SagaInstance:
    """Create the order's saga and emit its first action (orders.created). Needs a transaction.

    `items`: the order's OrderItem rows when the caller has them (saves a query).
    `order_unsaved`: the order and its items are new instances not written yet; they are written
    together with the saga and its first step, in one round trip (the POST /orders hot path).
    Raises IntegrityError (transaction unusable) if the order conflicts with a stored one.
    """
    items = list(order.items.all()) if items is None else items
    now = clock.now()
    state = saga_initial_state(now=now, config=engine_config())
    saga = SagaInstance(order=order, started_at=now, updated_at=now)
    saga.apply_state(state)
    step = SagaStep(saga=saga, step="reserve_inventory", trigger="start", outcome="requested",
                    status_to=state.status, created_at=now,
                    detail={"items": [{"productId": i.product_id, "quantity": i.quantity} for i in items]})
    statements = [sql_insert([order], DB), sql_insert(items, DB)] if order_unsaved else []
    # New rows nobody reads back in the caller's transaction: inside writes_deferred (POST
    # /orders) they go out with orders.created, the whole transaction in one statement.
    statements_run_together(DB, [*statements, sql_insert([saga], DB), sql_insert([step], DB)],
                            deferrable=order_unsaved)
    mark_saved(DB, *([order, *items] if order_unsaved else []), saga)
    _order_created_send(order, items)
    return saga


def _order_created_send(order: Order, items: list) -> None:
    """The saga's first action: orders.created (inventory reserves the lines)."""
    outbox_append(OutboxMessage, OrderCreated(
        order_id=str(order.id),
        customer_id=order.customer_id,
        items=tuple({"productId": i.product_id, "quantity": i.quantity, "unitPrice": str(i.unit_price)}
                    for i in items),
        total_amount=order.total_amount,
        currency=order.currency,
        reservation_ttl_seconds=order.reservation_ttl_seconds,
    ), aggregate_id=str(order.id))


@dataclasses.dataclass(frozen=True)
class SagaResult:
    decision: Decision | None
    order: Order | None

    @property
    def applied(self) -> bool:
        return self.decision is not None and self.decision.applied


# The order fields a saga step may change (saga_apply and _effect_emit).
ORDER_SAGA_FIELDS = ("status", "cancellation_reason", "failure_reason", "reservation_id", "payment_id",
                     "updated_at")


def saga_apply(*, order_id: str, trigger: Trigger, reason: str = "", event_id: str = "",
               reservation_id: str = "", payment_id: str = "", detail: dict | None = None) -> SagaResult:
    """Apply `trigger` to the order's saga inside the caller's transaction on `orders`.

    Unknown order: logged and ignored (SagaResult with no decision). A trigger the definition
    does not allow in the current state is recorded in the step log as not applied, counted
    on the saga, and changes nothing else.
    """
    if not transaction.get_connection(DB).in_atomic_block:
        raise RuntimeError("saga_apply needs a transaction on the orders database")
    event_id = event_id or current_event_id()
    saga = _saga_with_order_locked(order_id)
    if saga is None:
        log.warning("saga event for unknown order ignored orderId=%s trigger=%s eventId=%s",
                    order_id, trigger, event_id)
        return SagaResult(decision=None, order=None)
    order = saga.order
    now = clock.now()
    if trigger is Trigger.TIMEOUT and (saga.deadline_at is None or saga.deadline_at > now):
        # The saga moved on (and got a new deadline) since the sweep picked it.
        return SagaResult(decision=None, order=order)
    before = saga.to_state()
    decision = saga_decide(before, trigger, now=now, config=engine_config(), reason=reason)
    step_detail = dict(detail or {})
    if reason:
        step_detail.setdefault("reason", reason)
    if not decision.applied:
        saga.events_ignored += 1
        saga.save(using=DB, update_fields=["events_ignored"])
        SagaStep.objects.using(DB).create(
            saga=saga, step=before.current_step, trigger=trigger, outcome="ignored", applied=False,
            status_from=before.status, status_to=before.status, event_id=event_id,
            detail={**step_detail, "why": decision.reason}, created_at=now)
        log.info("saga event ignored orderId=%s sagaId=%s trigger=%s status=%s eventId=%s",
                 order_id, saga.id, trigger, before.status, event_id)
        return SagaResult(decision=decision, order=order)

    if reservation_id:
        order.reservation_id = reservation_id
    if payment_id:
        order.payment_id = payment_id
    saga.apply_state(decision.state)
    saga.updated_at = now
    if decision.state.status in TERMINAL and saga.finished_at is None:
        saga.finished_at = now
    steps, status_from = [], before.status
    for status_to in decision.path or (before.status,):
        steps.append(SagaStep(saga=saga, step=decision.step, trigger=trigger, outcome=decision.outcome,
                              status_from=status_from, status_to=status_to, event_id=event_id,
                              detail=step_detail, created_at=now))
        status_from = status_to
    for effect in decision.effects:
        _effect_emit(effect, order=order, decision=decision, now=now)
    order.updated_at = now
    # The saga's new state, its step log and the order in one round trip (hot path: every event);
    # inside writes_deferred (a consumer's transaction) they wait for its end and go out with the
    # other writes of the transaction (a batch's: all its events in one statement). Nothing reads
    # them back before: a second event of the order reads its saga again (_saga_with_order_locked
    # sends what is queued first).
    statements_run_together(DB, [sql_update(saga, SagaInstance.STATE_FIELDS, DB), sql_insert(steps, DB),
                                 sql_update(order, ORDER_SAGA_FIELDS, DB)], deferrable=True)
    # Logged once it is true: a duplicate delivery is refused only when the queued writes go out.
    transaction.on_commit(functools.partial(
        contextvars.copy_context().run, log.info,
        "saga moved orderId=%s sagaId=%s trigger=%s %s -> %s effects=%s eventId=%s", order_id, saga.id, trigger,
        before.status, decision.state.status, ",".join(decision.effects) or "-", event_id), using=DB)
    return SagaResult(decision=decision, order=order)


def _effect_emit(effect: Effect, *, order: Order, decision: Decision, now: dt.datetime) -> None:
    order_id = str(order.id)
    if effect is Effect.REQUEST_PAYMENT:
        message = PaymentProcessRequest(order_id=order_id, customer_id=order.customer_id,
                                        amount=order.total_amount, currency=order.currency,
                                        payment_method=order.payment_method)
    elif effect is Effect.REQUEST_RELEASE:
        message = InventoryReleaseRequest(order_id=order_id, reason=decision.state.compensation_reason,
                                          reservation_id=order.reservation_id or None)
    elif effect is Effect.REQUEST_PAYMENT_CANCEL:
        message = PaymentCancelRequest(order_id=order_id, reason=decision.state.compensation_reason)
    elif effect is Effect.REQUEST_REFUND:
        message = PaymentRefundRequest(order_id=order_id,
                                       reason=f"order {order.status.lower()}: payment arrived after "
                                              f"the saga ended ({decision.state.compensation_reason})")
    elif effect is Effect.CONFIRM_ORDER:
        order.status = Order.Status.CONFIRMED
        message = OrderConfirmed(order_id=order_id, payment_id=order.payment_id, timestamp=now)
    elif effect is Effect.CANCEL_ORDER:
        order.status = Order.Status.CANCELLED
        order.cancellation_reason = decision.state.compensation_reason[:500]
        message = OrderCancelled(order_id=order_id, reason=order.cancellation_reason, timestamp=now)
    elif effect is Effect.FAIL_ORDER:
        order.status = Order.Status.FAILED
        order.failure_reason = (decision.reason or "out of stock")[:500]
        message = OrderFailed(order_id=order_id, reason=order.failure_reason, failure_stage="inventory")
    else:  # pragma: no cover - the definition and this mapping are kept in step by tests
        raise ValueError(f"no message for effect {effect}")
    outbox_append(OutboxMessage, message, aggregate_id=order_id)


def saga_timeouts_sweep(*, limit: int = 200) -> int:
    """Fire TIMEOUT on sagas whose deadline passed; each in its own transaction. Returns how many.

    Rows locked by a concurrent sweep or handler are skipped and looked at on the next run.
    """
    now = clock.now()
    fired = 0
    with transaction.atomic(using=DB, durable=True):
        due = list(
            SagaInstance.objects.using(DB).select_for_update(skip_locked=True)
            .filter(deadline_at__lte=now).exclude(status__in=[s.value for s in TERMINAL])
            .order_by("deadline_at").values_list("order_id", flat=True)[:limit])
    for order_id in due:
        with transaction.atomic(using=DB, durable=True):
            result = saga_apply(order_id=str(order_id), trigger=Trigger.TIMEOUT)
            fired += int(result.applied)
    return fired


def saga_compensation_retry(*, order_id: str, reason: str) -> SagaResult:
    """Ops: retry the compensation of a saga in COMPENSATION_FAILED (re-sends its pending undo).

    Anything else is left alone and reported as not applied.
    """
    with transaction.atomic(using=DB, durable=True):
        return saga_apply(order_id=order_id, trigger=Trigger.RETRY, reason=reason)


# --- Ops actions (the admin console) -----------------------------------------------------------
# Each one needs a reason, runs in one durable transaction on `orders`, and writes an AuditEntry
# in that same transaction: an action is never carried out without its audit entry, nor the
# other way round. An action the saga's state does not allow changes nothing but is still
# audited, as REFUSED, with the engine's explanation (no step-log row, no ignored-event count).

OPS_REASON_MAX_LENGTH = 300


class OpsReasonError(ApplicationError):
    code = "reason_required"


@dataclasses.dataclass(frozen=True)
class OpsResult:
    applied: bool        # False: refused, nothing changed (see `message`)
    message: str         # one line for the operator
    status: str          # the saga's status afterwards
    audit: AuditEntry


def ops_reason_clean(reason: str) -> str:
    """The reason, stripped; OpsReasonError if it is blank or longer than OPS_REASON_MAX_LENGTH."""
    reason = (reason or "").strip()
    if not reason:
        raise OpsReasonError("every ops action needs a reason", fields={"reason": "required"})
    if len(reason) > OPS_REASON_MAX_LENGTH:
        raise OpsReasonError(f"the reason is longer than {OPS_REASON_MAX_LENGTH} characters",
                             fields={"reason": f"at most {OPS_REASON_MAX_LENGTH} characters"})
    return reason


def audit_record(*, user: str, action: str, target: str, reason: str, outcome: str,
                 details: dict | None = None, entry_id: uuid.UUID | None = None) -> AuditEntry:
    """Write one audit entry on `orders`: in the caller's transaction there if it has one (so it
    commits or rolls back with the action), on its own otherwise (actions on other databases)."""
    return AuditEntry.objects.using(DB).create(
        id=entry_id or uuid.uuid4(), at=clock.now(), user=user[:150], action=action, target=str(target)[:64],
        reason=reason[:OPS_REASON_MAX_LENGTH], outcome=outcome, details=details or {})


def saga_retry_step(*, order_id: str, reason: str, by: str) -> OpsResult:
    """Ops: re-send, through the outbox, the command the saga's current step is waiting on.

    STARTED: orders.created again (inventory reserves at most once per order and answers again);
    PAYMENT_PROCESSING: payments.process_request again (never charged twice: one payment per
    order, one PaymentIntent); COMPENSATING or COMPENSATION_FAILED: the pending undo again, back
    to COMPENSATING with a fresh attempt budget. The saga's deadlines are not extended. Any other
    status: refused (nothing is outstanding). Raises OpsReasonError, NotFoundError.
    """
    def resend_order_created(result: SagaResult) -> list[str]:
        if result.decision.step != "reserve_inventory":
            return []
        _order_created_resend(result.order)
        return [OrderCreated.SUBJECT]

    return _ops_apply(order_id=order_id, trigger=Trigger.RETRY_STEP, action=AuditEntry.Action.RETRY_STEP,
                      reason=reason, by=by, also=resend_order_created)


def saga_force_compensation(*, order_id: str, reason: str, by: str) -> OpsResult:
    """Ops: compensate now, as a cancel would (STARTED or PAYMENT_PROCESSING): the payment is
    settled, then the stock released, then the order CANCELLED with "compensation forced by ops:
    <reason>". Refused once the saga ended or is already compensating. Raises OpsReasonError,
    NotFoundError.
    """
    return _ops_apply(order_id=order_id, trigger=Trigger.FORCE_COMPENSATION,
                      action=AuditEntry.Action.FORCE_COMPENSATION, reason=reason, by=by)


def saga_mark_resolved(*, order_id: str, reason: str, by: str) -> OpsResult:
    """Ops: end a COMPENSATION_FAILED saga after what was left was fixed by hand: COMPENSATED,
    the order CANCELLED (it keeps its original cancellation reason) and orders.cancelled sent.
    Nothing else is sent: whatever the pending undo was supposed to do, ops did. Refused in
    any other status. Raises OpsReasonError, NotFoundError.
    """
    return _ops_apply(order_id=order_id, trigger=Trigger.RESOLVE, action=AuditEntry.Action.MARK_RESOLVED,
                      reason=reason, by=by)


def _ops_apply(*, order_id: str, trigger: Trigger, action: str, reason: str, by: str,
               also: Callable[[SagaResult], list[str]] | None = None) -> OpsResult:
    """Check, apply and audit one ops trigger; `also` sends what the engine does not (its subjects)."""
    reason = ops_reason_clean(reason)
    try:
        uuid.UUID(str(order_id))
    except ValueError:
        raise NotFoundError(f"no order {order_id}") from None
    entry_id = uuid.uuid4()
    with transaction.atomic(using=DB, durable=True):
        # The same lock as saga_apply's (saga and order in one statement), which then takes it again for free.
        saga = SagaInstance.objects.using(DB).select_related("order").select_for_update().filter(
            order_id=order_id).first()
        if saga is None:
            raise NotFoundError(f"no saga for order {order_id}")
        before = saga.to_state()
        details = {"statusBefore": before.status.value, "stepBefore": before.current_step}
        preview = saga_decide(before, trigger, now=clock.now(), config=engine_config(), reason=reason)
        if not preview.applied:
            why = f"{AuditEntry.Action(action).label} does not apply in {before.status}"
            if before.is_terminal:
                why += " (the saga has ended)"
            entry = audit_record(user=by, action=action, target=order_id, reason=reason,
                                 outcome=AuditEntry.Outcome.REFUSED, details={**details, "why": why},
                                 entry_id=entry_id)
            return OpsResult(applied=False, message=why, status=before.status.value, audit=entry)
        result = saga_apply(order_id=order_id, trigger=trigger, reason=reason,
                            detail={"by": by, "audit": str(entry_id)})
        sent = [str(effect) for effect in result.decision.effects] + (also(result) if also else [])
        after = result.decision.state
        details.update(statusAfter=after.status.value, stepAfter=after.current_step, sent=sent)
        entry = audit_record(user=by, action=action, target=order_id, reason=reason,
                             outcome=AuditEntry.Outcome.APPLIED, details=details, entry_id=entry_id)
    log.info("ops action=%s orderId=%s by=%s %s -> %s sent=%s reason=%s", action, order_id, by,
             before.status, after.status, ",".join(sent) or "-", reason)
    moved = f"{before.status} -> {after.status}" if after.status != before.status else f"still {after.status}"
    return OpsResult(applied=True, message=f"{moved}; sent {', '.join(sent) or 'nothing'}",
                     status=after.status.value, audit=entry)


def _order_created_resend(order: Order) -> None:
    """orders.created again, as saga_start sent it (under a new event id)."""
    _order_created_send(order, list(order.items.all()))
