"""The saga engine as given / when / expect scripts: every transition and every guard."""
from __future__ import annotations

import dataclasses
import datetime as dt

import pytest

from saga.definition import RULES, TERMINAL, Effect, SagaStatus, Trigger
from saga.engine import EngineConfig, SagaState, saga_decide, saga_initial_state

S, T, E = SagaStatus, Trigger, Effect
NOW = dt.datetime(2026, 11, 27, 12, 0, tzinfo=dt.UTC)
CONFIG = EngineConfig(saga_timeout=dt.timedelta(minutes=5), payment_timeout=dt.timedelta(minutes=2),
                      compensation_retry=dt.timedelta(seconds=30))


def given(status: SagaStatus, **fields) -> SagaState:
    return dataclasses.replace(saga_initial_state(now=NOW, config=CONFIG), status=status, **fields)


# (given status, when trigger, expect path, expect effects)
TRANSITIONS = [
    (S.STARTED, T.INVENTORY_RESERVED, (S.INVENTORY_RESERVED, S.PAYMENT_PROCESSING), (E.REQUEST_PAYMENT,)),
    (S.STARTED, T.INVENTORY_OUT_OF_STOCK, (S.FAILED,), (E.FAIL_ORDER,)),
    (S.PAYMENT_PROCESSING, T.PAYMENT_SUCCEEDED, (S.PAYMENT_SUCCEEDED, S.COMPLETED), (E.CONFIRM_ORDER,)),
    (S.PAYMENT_PROCESSING, T.PAYMENT_FAILED, (S.COMPENSATING,), (E.REQUEST_RELEASE,)),
    (S.PAYMENT_PROCESSING, T.INVENTORY_RELEASED, (S.COMPENSATING, S.COMPENSATED), (E.CANCEL_ORDER,)),
    (S.STARTED, T.CANCEL, (S.COMPENSATING,), (E.REQUEST_RELEASE,)),
    (S.PAYMENT_PROCESSING, T.CANCEL, (S.COMPENSATING,), (E.REQUEST_RELEASE,)),
    (S.STARTED, T.TIMEOUT, (S.COMPENSATING,), (E.REQUEST_RELEASE,)),
    (S.PAYMENT_PROCESSING, T.TIMEOUT, (S.COMPENSATING,), (E.REQUEST_RELEASE,)),
    (S.COMPENSATING, T.TIMEOUT, (), (E.REQUEST_RELEASE,)),
    (S.COMPENSATING, T.INVENTORY_RELEASED, (S.COMPENSATED,), (E.CANCEL_ORDER,)),
    (S.COMPENSATING, T.PAYMENT_SUCCEEDED, (), (E.REQUEST_REFUND,)),
    (S.COMPENSATED, T.PAYMENT_SUCCEEDED, (), (E.REQUEST_REFUND,)),
    (S.FAILED, T.PAYMENT_SUCCEEDED, (), (E.REQUEST_REFUND,)),
    (S.COMPENSATING, T.PAYMENT_REFUNDED, (), ()),
    (S.COMPENSATED, T.PAYMENT_REFUNDED, (), ()),
    (S.FAILED, T.PAYMENT_REFUNDED, (), ()),
]


@pytest.mark.parametrize("status, trigger, path, effects", TRANSITIONS,
                         ids=[f"{s}--{t}" for s, t, _, _ in TRANSITIONS])
def test_transition(status, trigger, path, effects):
    decision = saga_decide(given(status), trigger, now=NOW, config=CONFIG, reason="because")
    assert decision.applied
    assert decision.path == path
    assert decision.effects == effects
    assert decision.state.status == (path[-1] if path else status)


def test_every_rule_of_the_definition_is_covered_above():
    covered = {(s, t) for s, t, _, _ in TRANSITIONS}
    defined = {(source, rule.trigger) for rule in RULES for source in rule.source}
    assert defined == covered


ALLOWED = {(s, t) for s, t, _, _ in TRANSITIONS}
GUARDED = [(s, t) for s in SagaStatus for t in Trigger if (s, t) not in ALLOWED]


@pytest.mark.parametrize("status, trigger", GUARDED, ids=[f"{s}--{t}" for s, t in GUARDED])
def test_everything_else_is_ignored_and_changes_nothing(status, trigger):
    state = given(status, compensation_reason="x", compensation_attempts=2)
    decision = saga_decide(state, trigger, now=NOW, config=CONFIG)
    assert not decision.applied
    assert decision.state == state
    assert decision.effects == ()
    assert str(trigger) in decision.reason


@pytest.mark.parametrize("terminal", sorted(TERMINAL))
def test_a_terminal_saga_never_moves(terminal):
    for trigger in Trigger:
        decision = saga_decide(given(terminal), trigger, now=NOW, config=CONFIG)
        assert decision.state.status == terminal


def test_duplicate_reserved_event_applies_once():
    first = saga_decide(given(S.STARTED), T.INVENTORY_RESERVED, now=NOW, config=CONFIG)
    again = saga_decide(first.state, T.INVENTORY_RESERVED, now=NOW, config=CONFIG)
    assert first.applied and not again.applied
    assert again.state == first.state


def test_late_payment_failure_after_success_does_not_move_backwards():
    done = saga_decide(given(S.PAYMENT_PROCESSING), T.PAYMENT_SUCCEEDED, now=NOW, config=CONFIG).state
    late = saga_decide(done, T.PAYMENT_FAILED, now=NOW, config=CONFIG)
    assert not late.applied and late.state.status is S.COMPLETED


def test_out_of_order_reserved_after_cancel_is_ignored():
    cancelled = saga_decide(given(S.STARTED), T.CANCEL, now=NOW, config=CONFIG).state
    late = saga_decide(cancelled, T.INVENTORY_RESERVED, now=NOW, config=CONFIG)
    assert not late.applied and late.state.status is S.COMPENSATING


class TestDeadlines:
    def test_a_new_saga_is_due_at_the_saga_timeout(self):
        state = saga_initial_state(now=NOW, config=CONFIG)
        assert state.next_deadline_at == NOW + dt.timedelta(minutes=5)

    def test_payment_step_is_due_at_the_payment_timeout(self):
        later = NOW + dt.timedelta(seconds=10)
        state = saga_decide(given(S.STARTED), T.INVENTORY_RESERVED, now=later, config=CONFIG).state
        assert state.step_deadline_at == later + dt.timedelta(minutes=2)
        assert state.next_deadline_at == later + dt.timedelta(minutes=2)

    def test_payment_deadline_never_outlives_the_saga_deadline(self):
        late = NOW + dt.timedelta(minutes=4)
        state = saga_decide(given(S.STARTED), T.INVENTORY_RESERVED, now=late, config=CONFIG).state
        assert state.next_deadline_at == NOW + dt.timedelta(minutes=5)

    def test_compensation_is_retried_after_the_retry_interval(self):
        state = saga_decide(given(S.PAYMENT_PROCESSING), T.PAYMENT_FAILED, now=NOW, config=CONFIG).state
        assert state.next_deadline_at == NOW + dt.timedelta(seconds=30)
        retried = saga_decide(state, T.TIMEOUT, now=NOW + dt.timedelta(seconds=31), config=CONFIG)
        assert retried.state.compensation_attempts == 2
        assert retried.state.next_deadline_at == NOW + dt.timedelta(seconds=61)

    @pytest.mark.parametrize("terminal", sorted(TERMINAL))
    def test_an_ended_saga_has_no_deadline(self, terminal):
        assert given(terminal).next_deadline_at is None


class TestReasons:
    def test_payment_failure_reason_says_payment(self):
        state = saga_decide(given(S.PAYMENT_PROCESSING), T.PAYMENT_FAILED, now=NOW, config=CONFIG,
                            reason="card declined").state
        assert state.compensation_reason == "payment failed: card declined"

    def test_timeout_in_payment_names_the_payment_timeout(self):
        state = saga_decide(given(S.PAYMENT_PROCESSING), T.TIMEOUT, now=NOW, config=CONFIG).state
        assert "payment timed out" in state.compensation_reason and "120s" in state.compensation_reason

    def test_timeout_waiting_for_inventory_names_the_saga_timeout(self):
        state = saga_decide(given(S.STARTED), T.TIMEOUT, now=NOW, config=CONFIG).state
        assert "saga timed out in STARTED" in state.compensation_reason

    def test_cancel_reason_is_kept_for_the_order(self):
        state = saga_decide(given(S.STARTED), T.CANCEL, now=NOW, config=CONFIG, reason="changed my mind").state
        done = saga_decide(state, T.INVENTORY_RELEASED, now=NOW, config=CONFIG).state
        assert done.compensation_reason == "cancelled on request: changed my mind"
