"""The saga engine: pure transitions over the definition (rules and steps). No I/O, no clock.

`saga_decide(state, trigger, now=..., config=...)` returns a `Decision`. Anything the definition
does not allow (a duplicate, a late or out-of-order event, a cancel after completion) comes back
as `Decision(applied=False, ...)` with the reason and the state untouched: a saga never moves
backwards and no event applies twice.
"""
from __future__ import annotations

import dataclasses
import datetime as dt

from saga.definition import (
    CURRENT_STEP,
    RULES,
    STEP,
    TERMINAL,
    Effect,
    Rule,
    SagaStatus,
    Trigger,
)

S = SagaStatus


@dataclasses.dataclass(frozen=True)
class EngineConfig:
    saga_timeout: dt.timedelta
    payment_timeout: dt.timedelta
    compensation_retry: dt.timedelta
    compensation_max_attempts: int = 5


@dataclasses.dataclass(frozen=True)
class SagaState:
    status: SagaStatus
    saga_deadline_at: dt.datetime
    step_deadline_at: dt.datetime | None = None
    compensation_reason: str = ""
    compensation_attempts: int = 0
    compensations_pending: tuple[str, ...] = ()

    @property
    def is_terminal(self) -> bool:
        return self.status in TERMINAL

    @property
    def current_step(self) -> str:
        if self.compensations_pending:
            return f"undo {self.compensations_pending[0]}"
        return CURRENT_STEP[self.status]

    @property
    def next_deadline_at(self) -> dt.datetime | None:
        """When the timeout sweep must look at this saga next (None: nothing to wait for)."""
        if self.is_terminal or self.status is S.COMPENSATION_FAILED:
            return None
        if self.status is S.COMPENSATING or self.step_deadline_at is None:
            return self.step_deadline_at or self.saga_deadline_at
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
        if (_source, _rule.trigger) in _TABLE:
            raise RuntimeError(f"saga definition has two rules for {(_source, _rule.trigger)}")
        _TABLE[(_source, _rule.trigger)] = _rule


def saga_initial_state(*, now: dt.datetime, config: EngineConfig) -> SagaState:
    return SagaState(status=S.STARTED, saga_deadline_at=now + config.saga_timeout)


def saga_decide(state: SagaState, trigger: Trigger, *, now: dt.datetime, config: EngineConfig,
                reason: str = "") -> Decision:
    """Apply `trigger` to `state`. `reason` is the participant's or caller's explanation."""
    if state.status in (S.COMPENSATING, S.COMPENSATION_FAILED):
        return _decide_compensating(state, trigger, now=now, config=config, reason=reason)
    rule = _TABLE.get((state.status, trigger))
    if rule is None:
        return _ignored(state, trigger)
    if rule.undo:
        return _begin_compensation(state, rule, now=now, config=config, reason=reason)
    new_status = rule.path[-1] if rule.path else state.status
    step_deadline = state.step_deadline_at
    if new_status is S.PAYMENT_PROCESSING and state.status is not new_status:
        step_deadline = now + config.payment_timeout
    elif new_status in TERMINAL:
        step_deadline = None
    new_state = dataclasses.replace(state, status=new_status, step_deadline_at=step_deadline)
    return Decision(applied=True, state=new_state, path=rule.path, effects=rule.effects, step=rule.step,
                    outcome=rule.outcome, reason=reason)


def _ignored(state: SagaState, trigger: Trigger, why: str = "") -> Decision:
    ended = " (saga already ended)" if state.is_terminal else ""
    return Decision(applied=False, state=state, reason=why or f"{trigger} ignored in {state.status}{ended}")


def _undo(step: str) -> Effect:
    effect = STEP[step].compensation
    assert effect is not None, f"step {step} has no compensation"
    return effect


def _begin_compensation(state: SagaState, rule: Rule, *, now, config: EngineConfig, reason: str) -> Decision:
    why = _compensation_reason(state, rule.trigger, reason, config)
    new_state = dataclasses.replace(
        state, status=S.COMPENSATING, step_deadline_at=now + config.compensation_retry,
        compensation_reason=why, compensation_attempts=1, compensations_pending=rule.undo)
    return Decision(applied=True, state=new_state, path=(S.COMPENSATING,), effects=(_undo(rule.undo[0]),),
                    step=rule.step, outcome=rule.outcome, reason=reason or why)


def _decide_compensating(state: SagaState, trigger: Trigger, *, now, config: EngineConfig,
                         reason: str) -> Decision:
    pending = state.compensations_pending
    head = pending[0] if pending else ""
    if trigger is Trigger.TIMEOUT and state.status is S.COMPENSATING:
        if state.compensation_attempts >= config.compensation_max_attempts:
            failed = dataclasses.replace(state, status=S.COMPENSATION_FAILED, step_deadline_at=None)
            return Decision(applied=True, state=failed, path=(S.COMPENSATION_FAILED,), step=head,
                            outcome=f"no answer after {state.compensation_attempts} attempts",
                            reason=f"undo {head} was not answered after {state.compensation_attempts} attempts")
        retried = dataclasses.replace(state, compensation_attempts=state.compensation_attempts + 1,
                                      step_deadline_at=now + config.compensation_retry)
        return Decision(applied=True, state=retried, effects=(_undo(head),), step=head,
                        outcome="compensation re-requested", reason=reason)
    if trigger is Trigger.RETRY and state.status is S.COMPENSATION_FAILED:
        retried = dataclasses.replace(state, status=S.COMPENSATING, compensation_attempts=1,
                                      step_deadline_at=now + config.compensation_retry)
        return Decision(applied=True, state=retried, path=(S.COMPENSATING,), effects=(_undo(head),), step=head,
                        outcome="compensation retried by hand", reason=reason)
    if trigger is Trigger.RETRY_STEP and head:
        # Ops re-send the pending undo: a fresh attempt budget, from either compensating status.
        retried = dataclasses.replace(state, status=S.COMPENSATING, compensation_attempts=1,
                                      step_deadline_at=now + config.compensation_retry)
        path = (S.COMPENSATING,) if state.status is S.COMPENSATION_FAILED else ()
        return Decision(applied=True, state=retried, path=path, effects=(_undo(head),), step=head,
                        outcome="compensation re-sent by hand", reason=reason)
    if trigger is Trigger.RESOLVE and state.status is S.COMPENSATION_FAILED:
        # Ops fixed what was left by hand: end it. The order keeps the original cancellation
        # reason (the customer sees it); the ops reason goes to the step log and the audit log.
        done = dataclasses.replace(state, status=S.COMPENSATED, step_deadline_at=None, compensations_pending=())
        return Decision(applied=True, state=done, path=(S.COMPENSATED,), effects=(Effect.CANCEL_ORDER,),
                        step=head or "compensation", outcome="resolved by hand", reason=reason)
    if trigger is Trigger.PAYMENT_SUCCEEDED and "process_payment" not in pending:
        # The payment was not being undone (it had failed or never started): refund it.
        return Decision(applied=True, state=state, effects=(Effect.REQUEST_REFUND,), step="process_payment",
                        outcome="late success: refund requested", reason=reason)
    undone = next((step for step in pending if trigger in STEP[step].compensated_by), None)
    if undone is None:
        return _ignored(state, trigger)
    rest = tuple(step for step in pending if step != undone)
    if not rest:
        done = dataclasses.replace(state, status=S.COMPENSATED, step_deadline_at=None, compensations_pending=())
        return Decision(applied=True, state=done, path=(S.COMPENSATED,), effects=(Effect.CANCEL_ORDER,),
                        step=undone, outcome="compensated", reason=reason)
    if undone != head or state.status is S.COMPENSATION_FAILED:
        # A later step was undone out of turn (e.g. the reservation expired meanwhile): keep waiting.
        return Decision(applied=True, state=dataclasses.replace(state, compensations_pending=rest),
                        step=undone, outcome="compensated", reason=reason)
    advanced = dataclasses.replace(state, compensations_pending=rest, compensation_attempts=1,
                                   step_deadline_at=now + config.compensation_retry)
    return Decision(applied=True, state=advanced, effects=(_undo(rest[0]),), step=undone, outcome="compensated",
                    reason=reason)


def _compensation_reason(state: SagaState, trigger: Trigger, reason: str, config: EngineConfig) -> str:
    detail = f": {reason}" if reason else ""
    if trigger is Trigger.PAYMENT_FAILED:
        return f"payment failed{detail}"
    if trigger is Trigger.CANCEL:
        return f"cancelled on request{detail}"
    if trigger is Trigger.INVENTORY_RELEASED:
        return f"reservation released before the payment completed{detail}"
    if trigger is Trigger.FORCE_COMPENSATION:
        return f"compensation forced by ops{detail}"
    if trigger is Trigger.TIMEOUT:
        if state.status is S.PAYMENT_PROCESSING:
            return (f"payment timed out (no answer within "
                    f"{int(config.payment_timeout.total_seconds())}s)")
        return f"saga timed out in {state.status} (limit {int(config.saga_timeout.total_seconds())}s)"
    return reason or str(trigger)
