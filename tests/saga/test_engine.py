"""The saga engine as given / when / expect scripts: every transition, guard and compensation."""
from __future__ import annotations

import dataclasses
import datetime as dt

import pytest

from saga.definition import RULES, TERMINAL, Effect, SagaStatus, Trigger
from saga.engine import EngineConfig, SagaState, saga_decide, saga_initial_state

S, T, E = SagaStatus, Trigger, Effect
NOW = dt.datetime(2026, 11, 27, 12, 0, tzinfo=dt.UTC)
CONFIG = EngineConfig(saga_timeout=dt.timedelta(minutes=5), payment_timeout=dt.timedelta(minutes=2),
                      compensation_retry=dt.timedelta(seconds=30), compensation_max_attempts=3)
PAY_AND_STOCK = ("process_payment", "reserve_inventory")


def given(status: SagaStatus, **fields) -> SagaState:
    return dataclasses.replace(saga_initial_state(now=NOW, config=CONFIG), status=status, **fields)


def when(state: SagaState, trigger: Trigger, reason: str = "", at: dt.datetime = NOW):
    return saga_decide(state, trigger, now=at, config=CONFIG, reason=reason)


# Outside compensation: (given status, when trigger, expect path, expect effects, expect pending undo)
FORWARD = [
    (S.STARTED, T.INVENTORY_RESERVED, (S.INVENTORY_RESERVED, S.PAYMENT_PROCESSING), (E.REQUEST_PAYMENT,), ()),
    (S.STARTED, T.INVENTORY_OUT_OF_STOCK, (S.FAILED,), (E.FAIL_ORDER,), ()),
    (S.PAYMENT_PROCESSING, T.PAYMENT_SUCCEEDED, (S.PAYMENT_SUCCEEDED, S.COMPLETED), (E.CONFIRM_ORDER,), ()),
    (S.PAYMENT_PROCESSING, T.PAYMENT_FAILED, (S.COMPENSATING,), (E.REQUEST_RELEASE,), ("reserve_inventory",)),
    (S.PAYMENT_PROCESSING, T.INVENTORY_RELEASED, (S.COMPENSATING,), (E.REQUEST_PAYMENT_CANCEL,),
     ("process_payment",)),
    (S.STARTED, T.CANCEL, (S.COMPENSATING,), (E.REQUEST_RELEASE,), ("reserve_inventory",)),
    (S.STARTED, T.TIMEOUT, (S.COMPENSATING,), (E.REQUEST_RELEASE,), ("reserve_inventory",)),
    (S.PAYMENT_PROCESSING, T.CANCEL, (S.COMPENSATING,), (E.REQUEST_PAYMENT_CANCEL,), PAY_AND_STOCK),
    (S.PAYMENT_PROCESSING, T.TIMEOUT, (S.COMPENSATING,), (E.REQUEST_PAYMENT_CANCEL,), PAY_AND_STOCK),
    (S.COMPENSATED, T.PAYMENT_SUCCEEDED, (), (E.REQUEST_REFUND,), ()),
    (S.FAILED, T.PAYMENT_SUCCEEDED, (), (E.REQUEST_REFUND,), ()),
    (S.COMPENSATED, T.PAYMENT_REFUNDED, (), (), ()),
    (S.FAILED, T.PAYMENT_REFUNDED, (), (), ()),
    # Ops. orders.created is re-sent by saga_retry_step itself (it is not an engine effect).
    (S.STARTED, T.RETRY_STEP, (), (), ()),
    (S.PAYMENT_PROCESSING, T.RETRY_STEP, (), (E.REQUEST_PAYMENT,), ()),
    (S.STARTED, T.FORCE_COMPENSATION, (S.COMPENSATING,), (E.REQUEST_RELEASE,), ("reserve_inventory",)),
    (S.PAYMENT_PROCESSING, T.FORCE_COMPENSATION, (S.COMPENSATING,), (E.REQUEST_PAYMENT_CANCEL,), PAY_AND_STOCK),
]


@pytest.mark.parametrize("status, trigger, path, effects, pending", FORWARD,
                         ids=[f"{s}--{t}" for s, t, *_ in FORWARD])
def test_transition(status, trigger, path, effects, pending):
    decision = when(given(status), trigger, reason="because")
    assert decision.applied
    assert decision.path == path
    assert decision.effects == effects
    assert decision.state.status == (path[-1] if path else status)
    assert decision.state.compensations_pending == pending


def test_every_rule_of_the_definition_is_covered_above():
    covered = {(s, t) for s, t, *_ in FORWARD}
    defined = {(source, rule.trigger) for rule in RULES for source in rule.source}
    assert defined == covered


OUTSIDE = [s for s in SagaStatus if s not in (S.COMPENSATING, S.COMPENSATION_FAILED)]
GUARDED = [(s, t) for s in OUTSIDE for t in Trigger if (s, t) not in {(s, t) for s, t, *_ in FORWARD}]


@pytest.mark.parametrize("status, trigger", GUARDED, ids=[f"{s}--{t}" for s, t in GUARDED])
def test_everything_else_is_ignored_and_changes_nothing(status, trigger):
    state = given(status, compensation_reason="x", compensation_attempts=2)
    decision = when(state, trigger)
    assert not decision.applied
    assert decision.state == state and decision.effects == ()
    assert str(trigger) in decision.reason


@pytest.mark.parametrize("terminal", sorted(TERMINAL))
def test_a_terminal_saga_never_moves(terminal):
    for trigger in Trigger:
        assert when(given(terminal), trigger).state.status == terminal


class TestCompensation:
    def compensating(self, pending=PAY_AND_STOCK, attempts=1, status=S.COMPENSATING):
        return given(status, compensations_pending=pending, compensation_attempts=attempts,
                     compensation_reason="cancelled on request", step_deadline_at=NOW)

    def test_steps_are_undone_latest_first_then_the_order_is_cancelled(self):
        state = self.compensating()
        settled = when(state, T.PAYMENT_CANCELLED)
        assert settled.effects == (E.REQUEST_RELEASE,) and settled.state.status is S.COMPENSATING
        assert settled.state.compensations_pending == ("reserve_inventory",)
        released = when(settled.state, T.INVENTORY_RELEASED)
        assert released.path == (S.COMPENSATED,) and released.effects == (E.CANCEL_ORDER,)
        assert released.state.next_deadline_at is None

    @pytest.mark.parametrize("answer", [T.PAYMENT_CANCELLED, T.PAYMENT_REFUNDED, T.PAYMENT_FAILED])
    def test_any_answer_that_nothing_is_kept_undoes_the_payment(self, answer):
        assert when(self.compensating(), answer).state.compensations_pending == ("reserve_inventory",)

    def test_a_success_while_the_payment_is_being_undone_is_left_to_the_settlement(self):
        decision = when(self.compensating(), T.PAYMENT_SUCCEEDED)
        assert not decision.applied

    def test_a_success_when_the_payment_is_not_being_undone_is_refunded(self):
        decision = when(self.compensating(pending=("reserve_inventory",)), T.PAYMENT_SUCCEEDED)
        assert decision.applied and decision.effects == (E.REQUEST_REFUND,)
        assert decision.state.compensations_pending == ("reserve_inventory",)

    def test_an_out_of_turn_answer_is_recorded_and_the_head_still_awaited(self):
        decision = when(self.compensating(), T.INVENTORY_RELEASED)  # e.g. the reservation expired meanwhile
        assert decision.applied and decision.effects == ()
        assert decision.state.compensations_pending == ("process_payment",)
        done = when(decision.state, T.PAYMENT_CANCELLED)
        assert done.state.status is S.COMPENSATED

    def test_an_unanswered_compensation_is_re_requested_until_it_fails(self):
        state = self.compensating()
        for attempt in (2, 3):
            decision = when(state, T.TIMEOUT)
            assert decision.effects == (E.REQUEST_PAYMENT_CANCEL,)
            state = decision.state
            assert state.compensation_attempts == attempt
            assert state.next_deadline_at == NOW + dt.timedelta(seconds=30)
        failed = when(state, T.TIMEOUT)
        assert failed.path == (S.COMPENSATION_FAILED,) and failed.effects == ()
        assert failed.state.next_deadline_at is None
        assert "process_payment" in failed.reason

    def test_a_failed_compensation_is_retried_by_hand(self):
        failed = self.compensating(attempts=3, status=S.COMPENSATION_FAILED)
        retried = when(failed, T.RETRY, reason="stripe is back")
        assert retried.path == (S.COMPENSATING,) and retried.effects == (E.REQUEST_PAYMENT_CANCEL,)
        assert retried.state.compensation_attempts == 1

    def test_a_late_answer_can_still_finish_a_failed_compensation(self):
        failed = self.compensating(pending=("reserve_inventory",), status=S.COMPENSATION_FAILED)
        assert when(failed, T.INVENTORY_RELEASED).state.status is S.COMPENSATED

    @pytest.mark.parametrize("trigger", [T.INVENTORY_RESERVED, T.CANCEL, T.INVENTORY_OUT_OF_STOCK])
    def test_other_events_while_compensating_are_ignored(self, trigger):
        state = self.compensating()
        assert when(state, trigger).state == state

    @pytest.mark.parametrize("status, path", [(S.COMPENSATING, ()), (S.COMPENSATION_FAILED, (S.COMPENSATING,))])
    def test_ops_retry_re_sends_the_pending_undo_with_a_fresh_budget(self, status, path):
        state = self.compensating(attempts=3, status=status)
        retried = when(state, T.RETRY_STEP, reason="stripe is back")
        assert retried.applied and retried.path == path and retried.effects == (E.REQUEST_PAYMENT_CANCEL,)
        assert retried.state.status is S.COMPENSATING and retried.state.compensation_attempts == 1
        assert retried.state.compensations_pending == PAY_AND_STOCK
        assert retried.state.next_deadline_at == NOW + dt.timedelta(seconds=30)

    def test_a_failed_compensation_is_resolved_by_hand(self):
        failed = self.compensating(attempts=3, status=S.COMPENSATION_FAILED)
        resolved = when(failed, T.RESOLVE, reason="refunded in the Stripe dashboard")
        assert resolved.path == (S.COMPENSATED,) and resolved.effects == (E.CANCEL_ORDER,)
        assert resolved.state.compensations_pending == () and resolved.state.next_deadline_at is None
        assert resolved.state.compensation_reason == "cancelled on request"  # the customer's reason stays

    def test_resolve_and_force_apply_only_where_they_make_sense(self):
        assert not when(self.compensating(), T.RESOLVE).applied  # still running: retry or wait
        assert not when(self.compensating(), T.FORCE_COMPENSATION).applied
        assert not when(self.compensating(status=S.COMPENSATION_FAILED), T.FORCE_COMPENSATION).applied

    def test_timeouts_and_retries_do_not_apply_in_the_wrong_status(self):
        assert not when(self.compensating(status=S.COMPENSATION_FAILED), T.TIMEOUT).applied
        assert not when(self.compensating(), T.RETRY).applied


def test_duplicate_reserved_event_applies_once():
    first = when(given(S.STARTED), T.INVENTORY_RESERVED)
    again = when(first.state, T.INVENTORY_RESERVED)
    assert first.applied and not again.applied and again.state == first.state


def test_late_payment_failure_after_success_does_not_move_backwards():
    done = when(given(S.PAYMENT_PROCESSING), T.PAYMENT_SUCCEEDED).state
    late = when(done, T.PAYMENT_FAILED)
    assert not late.applied and late.state.status is S.COMPLETED


def test_out_of_order_reserved_after_cancel_is_ignored():
    cancelled = when(given(S.STARTED), T.CANCEL).state
    late = when(cancelled, T.INVENTORY_RESERVED)
    assert not late.applied and late.state.status is S.COMPENSATING


class TestDeadlines:
    def test_a_new_saga_is_due_at_the_saga_timeout(self):
        assert saga_initial_state(now=NOW, config=CONFIG).next_deadline_at == NOW + dt.timedelta(minutes=5)

    def test_payment_step_is_due_at_the_payment_timeout(self):
        later = NOW + dt.timedelta(seconds=10)
        state = when(given(S.STARTED), T.INVENTORY_RESERVED, at=later).state
        assert state.next_deadline_at == later + dt.timedelta(minutes=2)

    def test_payment_deadline_never_outlives_the_saga_deadline(self):
        state = when(given(S.STARTED), T.INVENTORY_RESERVED, at=NOW + dt.timedelta(minutes=4)).state
        assert state.next_deadline_at == NOW + dt.timedelta(minutes=5)

    def test_compensation_is_due_after_the_retry_interval(self):
        state = when(given(S.PAYMENT_PROCESSING), T.PAYMENT_FAILED).state
        assert state.next_deadline_at == NOW + dt.timedelta(seconds=30)

    @pytest.mark.parametrize("terminal", sorted(TERMINAL))
    def test_an_ended_saga_has_no_deadline(self, terminal):
        assert given(terminal).next_deadline_at is None


class TestReasons:
    def test_payment_failure_reason_says_payment(self):
        state = when(given(S.PAYMENT_PROCESSING), T.PAYMENT_FAILED, reason="card declined").state
        assert state.compensation_reason == "payment failed: card declined"

    def test_timeout_in_payment_names_the_payment_timeout(self):
        state = when(given(S.PAYMENT_PROCESSING), T.TIMEOUT).state
        assert "payment timed out" in state.compensation_reason and "120s" in state.compensation_reason

    def test_timeout_waiting_for_inventory_names_the_saga_timeout(self):
        assert "saga timed out in STARTED" in when(given(S.STARTED), T.TIMEOUT).state.compensation_reason

    def test_forced_compensation_says_ops_and_why(self):
        state = when(given(S.PAYMENT_PROCESSING), T.FORCE_COMPENSATION, reason="customer called").state
        assert state.compensation_reason == "compensation forced by ops: customer called"

    def test_cancel_reason_is_kept_for_the_order(self):
        state = when(given(S.STARTED), T.CANCEL, reason="changed my mind").state
        done = when(state, T.INVENTORY_RELEASED).state
        assert done.compensation_reason == "cancelled on request: changed my mind"
