"""The saga engine: pure transitions over the definition's rule table. No I/O, no clock.

`saga_decide(state, trigger, now=..., config=...)` returns a `Decision`. Anything the table does
not allow (a duplicate, a late or out-of-order event, a cancel after completion) comes back as
`Decision(applied=False, ...)` with the reason, and the state untouched: a saga never moves
backwards and no event applies twice.
"""
from __future__ import annotations

import dataclasses
import datetime as dt

from saga.definition import (
    CURRENT_STEP,
    RULES,
    TERMINAL,
    Compensation,
    Effect,
    Rule,
    SagaStatus,
    Trigger,
)


@dataclasses.dataclass(frozen=True)
class EngineConfig:
    saga_timeout: dt.timedelta
    payment_timeout: dt.timedelta
    compensation_retry: dt.timedelta


@dataclasses.dataclass(frozen=True)
class SagaState:
    status: SagaStatus
    saga_deadline_at: dt.datetime
    step_deadline_at: dt.datetime | None = None
    compensation_reason: str = ""
    compensation_attempts: int = 0

    @property
    def is_terminal(self) -> bool:
        return self.status in TERMINAL

    @property
    def current_step(self) -> str:
        return CURRENT_STEP[self.status]

    @property
    def next_deadline_at(self) -> dt.datetime | None:
        """When the timeout sweep must look at this saga next (None once it has ended)."""
        if self.is_terminal:
            return None
        if self.step_deadline_at is None:
            return self.saga_deadline_at
        if self.status is SagaStatus.COMPENSATING:
            return self.step_deadline_at
        return min(self.saga_deadline_at, self.step_deadline_at)


@dataclasses.dataclass(frozen=True)
class Decision:
    applied: bool
    state: SagaState
    path: tuple[SagaStatus, ...] = ()
    effects: tuple[Effect, ...] = ()
    step: str = ""
    outcome: str = ""
    reason: str = ""


_TABLE: dict[tuple[SagaStatus, Trigger], Rule] = {}
for _rule in RULES:
    for _source in _rule.source:
        key = (_source, _rule.trigger)
        if key in _TABLE:
            raise RuntimeError(f"saga definition has two rules for {key}")
        _TABLE[key] = _rule


def saga_initial_state(*, now: dt.datetime, config: EngineConfig) -> SagaState:
    return SagaState(status=SagaStatus.STARTED, saga_deadline_at=now + config.saga_timeout)


def saga_decide(state: SagaState, trigger: Trigger, *, now: dt.datetime, config: EngineConfig,
                reason: str = "") -> Decision:
    """Apply `trigger` to `state`. `reason` is the participant's or caller's explanation."""
    rule = _TABLE.get((state.status, trigger))
    if rule is None:
        return Decision(applied=False, state=state,
                        reason=f"{trigger} ignored in {state.status}"
                               + (" (saga already ended)" if state.is_terminal else ""))
    new_status = rule.path[-1] if rule.path else state.status
    compensation_reason = state.compensation_reason
    attempts = state.compensation_attempts
    if rule.compensation is Compensation.BEGIN:
        compensation_reason = _compensation_reason(state, trigger, reason, config)
        attempts = 1
    elif rule.compensation is Compensation.RETRY:
        attempts += 1
    step_deadline = state.step_deadline_at
    if new_status is SagaStatus.PAYMENT_PROCESSING and state.status is not new_status:
        step_deadline = now + config.payment_timeout
    elif new_status is SagaStatus.COMPENSATING:
        step_deadline = now + config.compensation_retry
    elif new_status in TERMINAL:
        step_deadline = None
    new_state = dataclasses.replace(
        state, status=new_status, step_deadline_at=step_deadline,
        compensation_reason=compensation_reason, compensation_attempts=attempts)
    return Decision(applied=True, state=new_state, path=rule.path, effects=rule.effects,
                    step=rule.step, outcome=rule.outcome, reason=reason or compensation_reason)


def _compensation_reason(state: SagaState, trigger: Trigger, reason: str, config: EngineConfig) -> str:
    detail = f": {reason}" if reason else ""
    if trigger is Trigger.PAYMENT_FAILED:
        return f"payment failed{detail}"
    if trigger is Trigger.CANCEL:
        return f"cancelled on request{detail}"
    if trigger is Trigger.INVENTORY_RELEASED:
        return f"reservation released before the payment completed{detail}"
    if trigger is Trigger.TIMEOUT:
        if state.status is SagaStatus.PAYMENT_PROCESSING:
            return (f"payment timed out (no answer within "
                    f"{int(config.payment_timeout.total_seconds())}s)")
        return f"saga timed out in {state.status} (limit {int(config.saga_timeout.total_seconds())}s)"
    return reason or str(trigger)
