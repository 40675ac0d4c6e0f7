"""The order saga, as data: its states, the steps with their actions and compensations, and the
transition table the engine reads. Read it top to bottom as the saga's whole story.

    reserve_inventory   action: orders.created            compensation: inventory.release_request
    process_payment     action: payments.process_request  compensation: payments.refund_request
    confirm_order       action: orders.confirmed          (final: no compensation)

Happy path:   STARTED -> INVENTORY_RESERVED -> PAYMENT_PROCESSING -> PAYMENT_SUCCEEDED -> COMPLETED
Out of stock: STARTED -> FAILED
Compensation: PAYMENT_PROCESSING -> COMPENSATING -> COMPENSATED (payment failed, cancel, timeout)
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


TERMINAL = frozenset({SagaStatus.COMPLETED, SagaStatus.FAILED, SagaStatus.COMPENSATED})


class Trigger(enum.StrEnum):
    """What can happen to a saga: a participant's event, or an orchestrator-side trigger."""

    INVENTORY_RESERVED = "inventory.reserved"
    INVENTORY_OUT_OF_STOCK = "inventory.out_of_stock"
    INVENTORY_RELEASED = "inventory.released"
    PAYMENT_SUCCEEDED = "payments.succeeded"
    PAYMENT_FAILED = "payments.failed"
    PAYMENT_REFUNDED = "payments.refunded"
    CANCEL = "cancel"    # POST /orders/{id}/cancel or an ops action
    TIMEOUT = "timeout"  # the deadline sweep


class Effect(enum.StrEnum):
    """What the orchestrator does as a result; the services turn effects into outbox messages."""

    REQUEST_PAYMENT = "payments.process_request"
    REQUEST_RELEASE = "inventory.release_request"
    REQUEST_REFUND = "payments.refund_request"
    CONFIRM_ORDER = "orders.confirmed"
    CANCEL_ORDER = "orders.cancelled"
    FAIL_ORDER = "orders.failed"


@dataclasses.dataclass(frozen=True)
class Step:
    name: str
    action: str
    compensation: str | None


STEPS = (
    Step("reserve_inventory", action="orders.created", compensation=Effect.REQUEST_RELEASE),
    Step("process_payment", action=Effect.REQUEST_PAYMENT, compensation=Effect.REQUEST_REFUND),
    Step("confirm_order", action=Effect.CONFIRM_ORDER, compensation=None),
)

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
}


class Compensation(enum.StrEnum):
    """How a rule changes the compensation bookkeeping."""

    NONE = "none"
    BEGIN = "begin"    # entering COMPENSATING: remember why
    RETRY = "retry"    # compensation re-requested (its deadline passed)


@dataclasses.dataclass(frozen=True)
class Rule:
    source: frozenset[SagaStatus]
    trigger: Trigger
    path: tuple[SagaStatus, ...]   # statuses entered, in order; () = status unchanged
    effects: tuple[Effect, ...]
    step: str
    outcome: str
    compensation: Compensation = Compensation.NONE


def _from(*statuses: SagaStatus) -> frozenset[SagaStatus]:
    return frozenset(statuses)


S = SagaStatus
NOT_COMPLETED_TERMINAL = _from(S.FAILED, S.COMPENSATED)

RULES: tuple[Rule, ...] = (
    # reserve_inventory
    Rule(_from(S.STARTED), Trigger.INVENTORY_RESERVED, (S.INVENTORY_RESERVED, S.PAYMENT_PROCESSING),
         (Effect.REQUEST_PAYMENT,), "reserve_inventory", "succeeded"),
    Rule(_from(S.STARTED), Trigger.INVENTORY_OUT_OF_STOCK, (S.FAILED,),
         (Effect.FAIL_ORDER,), "reserve_inventory", "failed"),
    # process_payment
    Rule(_from(S.PAYMENT_PROCESSING), Trigger.PAYMENT_SUCCEEDED, (S.PAYMENT_SUCCEEDED, S.COMPLETED),
         (Effect.CONFIRM_ORDER,), "process_payment", "succeeded"),
    Rule(_from(S.PAYMENT_PROCESSING), Trigger.PAYMENT_FAILED, (S.COMPENSATING,),
         (Effect.REQUEST_RELEASE,), "process_payment", "failed", Compensation.BEGIN),
    # The reservation expired (or was released) while the payment was in flight: the order
    # cannot be fulfilled any more. A payment that still succeeds later is refunded below.
    Rule(_from(S.PAYMENT_PROCESSING), Trigger.INVENTORY_RELEASED, (S.COMPENSATING, S.COMPENSATED),
         (Effect.CANCEL_ORDER,), "reserve_inventory", "released while paying", Compensation.BEGIN),
    # compensation
    Rule(_from(S.STARTED, S.PAYMENT_PROCESSING), Trigger.CANCEL, (S.COMPENSATING,),
         (Effect.REQUEST_RELEASE,), "compensation", "cancel requested", Compensation.BEGIN),
    Rule(_from(S.STARTED, S.PAYMENT_PROCESSING), Trigger.TIMEOUT, (S.COMPENSATING,),
         (Effect.REQUEST_RELEASE,), "compensation", "timed out", Compensation.BEGIN),
    Rule(_from(S.COMPENSATING), Trigger.TIMEOUT, (),
         (Effect.REQUEST_RELEASE,), "compensation", "release re-requested", Compensation.RETRY),
    Rule(_from(S.COMPENSATING), Trigger.INVENTORY_RELEASED, (S.COMPENSATED,),
         (Effect.CANCEL_ORDER,), "compensation", "compensated"),
    # A payment that succeeds after the saga gave up must not keep the customer's money.
    Rule(_from(S.COMPENSATING, *NOT_COMPLETED_TERMINAL), Trigger.PAYMENT_SUCCEEDED, (),
         (Effect.REQUEST_REFUND,), "process_payment", "late success: refund requested"),
    Rule(_from(S.COMPENSATING, *NOT_COMPLETED_TERMINAL), Trigger.PAYMENT_REFUNDED, (),
         (), "process_payment", "refunded"),
)
