"""The order saga, as data: its states, the steps with their actions and compensations, and the
transition table the engine reads. Read it top to bottom as the saga's whole story.

    step                action                            compensation (undo)
    reserve_inventory   orders.created                    inventory.release_request -> inventory.released
    process_payment     payments.process_request          payments.cancel_request   -> payments.cancelled | .refunded
    confirm_order       orders.confirmed                  (final: no compensation)

Happy path:   STARTED -> INVENTORY_RESERVED -> PAYMENT_PROCESSING -> PAYMENT_SUCCEEDED -> COMPLETED
Out of stock: STARTED -> FAILED
Compensation: -> COMPENSATING -> COMPENSATED (payment failed, cancel, timeout, reservation expired)
              The steps that may have taken effect are undone in reverse order, one at a time:
              the payment is settled first (cancelled, or refunded if it was charged), then the
              stock is released. A compensation that is not answered is re-requested on each
              deadline; after SAGA_COMPENSATION_MAX_ATTEMPTS it stops in COMPENSATION_FAILED
              for ops to retry by hand.
Ops (admin console): RETRY_STEP re-sends the current step's command (orders.created in STARTED,
              payments.process_request in PAYMENT_PROCESSING, the pending undo while
              compensating); FORCE_COMPENSATION starts compensating like a cancel; RESOLVE ends a
              COMPENSATION_FAILED saga as COMPENSATED (order cancelled) after a manual fix.
"""
from __future__ import annotations

import dataclasses
import enum


class SagaStatus(enum.StrEnum):
    STARTED = "STARTED"
    INVENTORY_RESERVED = "INVENTORY_RESERVED"
    PAYMENT_PROCESSING = "PAYMENT_PROCESSING"
    PAYMENT_SUCCEEDED = "PAYMENT_SUCCEEDED"
    COMPLETED = "COMPLETED"
    FAILED = "FAILED"
    COMPENSATING = "COMPENSATING"
    COMPENSATED = "COMPENSATED"
    COMPENSATION_FAILED = "COMPENSATION_FAILED"


TERMINAL = frozenset({SagaStatus.COMPLETED, SagaStatus.FAILED, SagaStatus.COMPENSATED})


class Trigger(enum.StrEnum):
    """What can happen to a saga: a participant's event, or an orchestrator-side trigger."""

    INVENTORY_RESERVED = "inventory.reserved"
    INVENTORY_OUT_OF_STOCK = "inventory.out_of_stock"
    INVENTORY_RELEASED = "inventory.released"
    PAYMENT_SUCCEEDED = "payments.succeeded"
    PAYMENT_FAILED = "payments.failed"
    PAYMENT_CANCELLED = "payments.cancelled"
    PAYMENT_REFUNDED = "payments.refunded"
    CANCEL = "cancel"    # POST /orders/{id}/cancel
    TIMEOUT = "timeout"  # the deadline sweep
    RETRY = "retry"      # ops: retry a failed compensation
    # Ops actions from the admin console (saga.services.saga_retry_step / _force_compensation /
    # _mark_resolved); each is audited with who and why.
    RETRY_STEP = "retry_step"                  # re-send the command the current step waits on
    FORCE_COMPENSATION = "force_compensation"  # the cancel path, with the ops reason
    RESOLVE = "resolve"                        # a failed compensation was fixed by hand: end it


class Effect(enum.StrEnum):
    """What the orchestrator does as a result; the services turn effects into outbox messages."""

    REQUEST_PAYMENT = "payments.process_request"
    REQUEST_PAYMENT_CANCEL = "payments.cancel_request"
    REQUEST_REFUND = "payments.refund_request"
    REQUEST_RELEASE = "inventory.release_request"
    CONFIRM_ORDER = "orders.confirmed"
    CANCEL_ORDER = "orders.cancelled"
    FAIL_ORDER = "orders.failed"


@dataclasses.dataclass(frozen=True)
class Step:
    name: str
    action: str
    compensation: Effect | None
    compensated_by: frozenset[Trigger] = frozenset()


STEPS = (
    Step("reserve_inventory", action="orders.created", compensation=Effect.REQUEST_RELEASE,
         compensated_by=frozenset({Trigger.INVENTORY_RELEASED})),
    # A payment that failed, was cancelled before it was charged, or was refunded is undone.
    Step("process_payment", action=Effect.REQUEST_PAYMENT, compensation=Effect.REQUEST_PAYMENT_CANCEL,
         compensated_by=frozenset({Trigger.PAYMENT_CANCELLED, Trigger.PAYMENT_REFUNDED, Trigger.PAYMENT_FAILED})),
    Step("confirm_order", action=Effect.CONFIRM_ORDER, compensation=None),
)
STEP = {step.name: step for step in STEPS}

# Which step a status is waiting on (shown to ops as the saga's current step).
CURRENT_STEP = {
    SagaStatus.STARTED: "reserve_inventory",
    SagaStatus.INVENTORY_RESERVED: "process_payment",
    SagaStatus.PAYMENT_PROCESSING: "process_payment",
    SagaStatus.PAYMENT_SUCCEEDED: "confirm_order",
    SagaStatus.COMPLETED: "confirm_order",
    SagaStatus.FAILED: "reserve_inventory",
    SagaStatus.COMPENSATING: "compensation",
    SagaStatus.COMPENSATED: "compensation",
    SagaStatus.COMPENSATION_FAILED: "compensation",
}


@dataclasses.dataclass(frozen=True)
class Rule:
    """`trigger` in a `source` status: enter `path` and emit `effects`; or, with `undo`, start
    compensating those steps (in that order)."""

    source: frozenset[SagaStatus]
    trigger: Trigger
    step: str
    outcome: str
    path: tuple[SagaStatus, ...] = ()   # statuses entered, in order; () = status unchanged
    effects: tuple[Effect, ...] = ()
    undo: tuple[str, ...] = ()


def _from(*statuses: SagaStatus) -> frozenset[SagaStatus]:
    return frozenset(statuses)


S, T = SagaStatus, Trigger
ENDED_UNPAID = _from(S.FAILED, S.COMPENSATED)

# The forward path and the moments compensation starts. What happens while compensating
# (answers to compensation requests, retries, COMPENSATION_FAILED) follows from STEPS.
RULES: tuple[Rule, ...] = (
    Rule(_from(S.STARTED), T.INVENTORY_RESERVED, "reserve_inventory", "succeeded",
         path=(S.INVENTORY_RESERVED, S.PAYMENT_PROCESSING), effects=(Effect.REQUEST_PAYMENT,)),
    Rule(_from(S.STARTED), T.INVENTORY_OUT_OF_STOCK, "reserve_inventory", "failed",
         path=(S.FAILED,), effects=(Effect.FAIL_ORDER,)),
    Rule(_from(S.PAYMENT_PROCESSING), T.PAYMENT_SUCCEEDED, "process_payment", "succeeded",
         path=(S.PAYMENT_SUCCEEDED, S.COMPLETED), effects=(Effect.CONFIRM_ORDER,)),
    # Compensation starts: undo what may have taken effect, latest first.
    Rule(_from(S.PAYMENT_PROCESSING), T.PAYMENT_FAILED, "process_payment", "failed",
         undo=("reserve_inventory",)),
    Rule(_from(S.STARTED), T.CANCEL, "compensation", "cancel requested", undo=("reserve_inventory",)),
    Rule(_from(S.STARTED), T.TIMEOUT, "compensation", "timed out", undo=("reserve_inventory",)),
    Rule(_from(S.PAYMENT_PROCESSING), T.CANCEL, "compensation", "cancel requested",
         undo=("process_payment", "reserve_inventory")),
    Rule(_from(S.PAYMENT_PROCESSING), T.TIMEOUT, "compensation", "timed out",
         undo=("process_payment", "reserve_inventory")),
    # The reservation expired while the payment was in flight: never both charged and released,
    # so the payment is settled (cancelled or refunded) and the order cancelled.
    Rule(_from(S.PAYMENT_PROCESSING), T.INVENTORY_RELEASED, "reserve_inventory", "released while paying",
         undo=("process_payment",)),
    # A payment that succeeds after the saga ended unpaid must not keep the customer's money.
    Rule(ENDED_UNPAID, T.PAYMENT_SUCCEEDED, "process_payment", "late success: refund requested",
         effects=(Effect.REQUEST_REFUND,)),
    Rule(ENDED_UNPAID, T.PAYMENT_REFUNDED, "process_payment", "late success refunded"),
    # Ops: re-send the current step's command; the deadlines stand (a retry does not hold the
    # customer's stock or money any longer). orders.created is not an engine effect (saga_start
    # sends it), so saga_retry_step sends it again itself.
    Rule(_from(S.STARTED), T.RETRY_STEP, "reserve_inventory", "orders.created re-sent by hand"),
    Rule(_from(S.PAYMENT_PROCESSING), T.RETRY_STEP, "process_payment", "payment request re-sent by hand",
         effects=(Effect.REQUEST_PAYMENT,)),
    # Ops: compensate now, exactly like a cancel (what happens while compensating, RETRY_STEP and
    # RESOLVE included, is in the engine's compensation rules).
    Rule(_from(S.STARTED), T.FORCE_COMPENSATION, "compensation", "compensation forced by hand",
         undo=("reserve_inventory",)),
    Rule(_from(S.PAYMENT_PROCESSING), T.FORCE_COMPENSATION, "compensation", "compensation forced by hand",
         undo=("process_payment", "reserve_inventory")),
)
