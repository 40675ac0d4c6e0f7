"""The orchestrator's writes: start a saga, apply a trigger to it, sweep deadlines.

Every function here writes to the Order Service's database (alias `orders`) and must run in a
transaction on it; `saga_apply` locks the order row and then the saga row (always in that
order, so concurrent triggers for one order serialise instead of deadlocking), runs the pure
engine, and writes the new state, the step log, the order's status and the outgoing messages
(outbox) together. If anything fails, nothing of it is kept.
"""
from __future__ import annotations

import dataclasses
import datetime as dt
import logging

from django.conf import settings
from django.db import transaction

from a4co import clock
from infra.consumers import current_event_id
from infra.outbox import outbox_append
from inventory.messages import InventoryReleaseRequest
from orders.messages import OrderCancelled, OrderConfirmed, OrderCreated, OrderFailed
from orders.models import Order, OutboxMessage
from payments.messages import PaymentCancelRequest, PaymentProcessRequest, PaymentRefundRequest
from saga.definition import TERMINAL, Effect, Trigger
from saga.engine import Decision, EngineConfig, saga_decide, saga_initial_state
from saga.models import SagaInstance, SagaStep

log = logging.getLogger(__name__)
DB = "orders"


def engine_config() -> EngineConfig:
    return EngineConfig(
        saga_timeout=dt.timedelta(seconds=settings.SAGA_TIMEOUT_SECONDS),
        payment_timeout=dt.timedelta(seconds=settings.PAYMENT_TIMEOUT_SECONDS),
        compensation_retry=dt.timedelta(seconds=settings.SAGA_COMPENSATION_RETRY_SECONDS),
        compensation_max_attempts=settings.SAGA_COMPENSATION_MAX_ATTEMPTS,
    )


def saga_start(*, order: Order) -> SagaInstance:
    """Create the order's saga and emit its first action (orders.created). Needs a transaction."""
    now = clock.now()
    state = saga_initial_state(now=now, config=engine_config())
    saga = SagaInstance(order=order, started_at=now, updated_at=now)
    saga.apply_state(state)
    saga.save(using=DB)
    SagaStep.objects.using(DB).create(
        saga=saga, step="reserve_inventory", trigger="start", outcome="requested",
        status_to=state.status, created_at=now,
        detail={"items": [{"productId": i.product_id, "quantity": i.quantity} for i in order.items.all()]})
    outbox_append(OutboxMessage, OrderCreated(
        order_id=str(order.id),
        customer_id=order.customer_id,
        items=tuple({"productId": i.product_id, "quantity": i.quantity, "unitPrice": str(i.unit_price)}
                    for i in order.items.all()),
        total_amount=order.total_amount,
        currency=order.currency,
        reservation_ttl_seconds=order.reservation_ttl_seconds,
    ), aggregate_id=str(order.id))
    return saga


@dataclasses.dataclass(frozen=True)
class SagaResult:
    decision: Decision | None
    order: Order | None

    @property
    def applied(self) -> bool:
        return self.decision is not None and self.decision.applied


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
    order = Order.objects.using(DB).select_for_update().filter(id=order_id).first()
    if order is None:
        log.warning("saga event for unknown order ignored orderId=%s trigger=%s eventId=%s",
                    order_id, trigger, event_id)
        return SagaResult(decision=None, order=None)
    saga = SagaInstance.objects.using(DB).select_for_update().get(order=order)
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
    saga.save(using=DB)
    status_from = before.status
    for status_to in decision.path or (before.status,):
        SagaStep.objects.using(DB).create(
            saga=saga, step=decision.step, trigger=trigger, outcome=decision.outcome,
            status_from=status_from, status_to=status_to, event_id=event_id,
            detail=step_detail, created_at=now)
        status_from = status_to
    for effect in decision.effects:
        _effect_emit(effect, order=order, decision=decision, now=now)
    order.updated_at = now
    order.save(using=DB)
    log.info("saga moved orderId=%s sagaId=%s trigger=%s %s -> %s effects=%s eventId=%s",
             order_id, saga.id, trigger, before.status, decision.state.status,
             ",".join(decision.effects) or "-", event_id)
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
