"""Every saga flow, in-process and step by step: the real services, handlers, inboxes and Stripe
stand-in, with outbox rows delivered by tests.pump instead of relay + JetStream (which the
integration and end-to-end tests cover). Being deterministic, these tests can stop a saga at
any step and make events arrive late, twice or out of order."""
from __future__ import annotations

import pytest

from inventory.models import Product, Reservation
from inventory.services import reservations_expire_sweep
from orders.models import Order
from payments.models import Payment
from saga.models import SagaInstance
from saga.services import saga_timeouts_sweep
from tests.conftest import ALL_DATABASES
from tests.factories import ProductFactory, order_body
from tests.pump import deliver, pending_rows, pump

pytestmark = pytest.mark.django_db(databases=ALL_DATABASES)


@pytest.fixture
def stock():
    ProductFactory(product_id="oil", available_quantity=10)
    ProductFactory(product_id="honey", available_quantity=2)


def place(api, *items, **extra) -> str:
    response = api.post("/api/v1/orders", order_body(*items, **extra), format="json")
    assert response.status_code == 201, response.json()
    return response.json()["orderId"]


def order(order_id) -> Order:
    return Order.objects.get(id=order_id)


def product(pid) -> Product:
    return Product.objects.get(product_id=pid)


def saga_status(order_id) -> str:
    return SagaInstance.objects.get(order_id=order_id).status


def stock_of(pid) -> tuple[int, int, int]:
    p = product(pid)
    assert p.available_quantity + p.reserved_quantity + p.sold_quantity == p.stocked_quantity
    return p.available_quantity, p.reserved_quantity, p.sold_quantity


def test_happy_path_confirms_commits_stock_and_charges_once(api, stock):
    order_id = place(api, ("oil", 2, "12.50"), ("honey", 1, "5"))
    pump()
    assert order(order_id).status == "CONFIRMED"
    assert saga_status(order_id) == "COMPLETED"
    assert stock_of("oil") == (8, 0, 2) and stock_of("honey") == (1, 0, 1)
    payment = Payment.objects.get(order_id=order_id)
    assert payment.status == "SUCCEEDED" and payment.amount == 30 and payment.stripe_payment_intent_id
    assert Reservation.objects.get(order_id=order_id).status == "COMMITTED"
    assert order(order_id).payment_id == str(payment.id)


def test_declined_card_cancels_and_gives_the_stock_back(api, stock):
    order_id = place(api, ("oil", 3, "1"), paymentMethod="pm_card_chargeCustomerFail")
    pump()
    cancelled = order(order_id)
    assert cancelled.status == "CANCELLED"
    assert "payment" in cancelled.cancellation_reason and "declined" in cancelled.cancellation_reason
    assert saga_status(order_id) == "COMPENSATED"
    assert stock_of("oil") == (10, 0, 0)
    assert Payment.objects.get(order_id=order_id).status == "FAILED"
    assert Reservation.objects.get(order_id=order_id).status == "RELEASED"


def test_unknown_payment_method_is_a_payment_failure(api, stock):
    order_id = place(api, ("oil", 1, "1"), paymentMethod="pm_does_not_exist")
    pump()
    assert order(order_id).status == "CANCELLED"
    assert "payment" in order(order_id).cancellation_reason
    assert stock_of("oil") == (10, 0, 0)


def test_out_of_stock_fails_the_order_without_touching_stock_or_money(api, stock):
    order_id = place(api, ("honey", 3, "1"))
    pump()
    failed = order(order_id)
    assert failed.status == "FAILED" and "honey" in failed.failure_reason
    assert saga_status(order_id) == "FAILED"
    assert stock_of("honey") == (2, 0, 0)
    assert not Payment.objects.filter(order_id=order_id).exists()


def test_unknown_product_is_out_of_stock(api, stock):
    order_id = place(api, ("caviar", 1, "1"))
    pump()
    assert order(order_id).status == "FAILED" and "caviar" in order(order_id).failure_reason


def test_multi_line_order_with_one_short_line_reserves_nothing(api, stock):
    order_id = place(api, ("oil", 5, "1"), ("honey", 5, "1"))
    pump()
    assert order(order_id).status == "FAILED"
    assert stock_of("oil") == (10, 0, 0) and stock_of("honey") == (2, 0, 0)
    assert not Reservation.objects.filter(order_id=order_id).exists()


def test_repeated_lines_of_one_product_are_reserved_together(api, stock):
    order_id = place(api, ("honey", 1, "1"), ("honey", 2, "1"))
    pump()
    assert order(order_id).status == "FAILED"  # 3 honey asked, 2 available
    assert stock_of("honey") == (2, 0, 0)


class TestCancel:
    def test_cancel_before_inventory_acted_leaves_a_tombstone(self, api, stock):
        order_id = place(api, ("oil", 2, "1"))
        response = api.post(f"/api/v1/orders/{order_id}/cancel", {"reason": "changed my mind"}, format="json")
        assert response.status_code == 202 and response.json()["status"] == "PENDING"
        # The release request overtakes orders.created (they travel on different streams).
        pump(only={"inventory.release_request"})
        pump()
        cancelled = order(order_id)
        assert cancelled.status == "CANCELLED"
        assert cancelled.cancellation_reason == "cancelled on request: changed my mind"
        assert stock_of("oil") == (10, 0, 0)
        assert Reservation.objects.get(order_id=order_id).status == "RELEASED"

    def test_cancel_after_reservation_releases_it(self, api, stock):
        order_id = place(api, ("oil", 2, "1"))
        pump(only={"orders.created"})
        assert stock_of("oil") == (8, 2, 0)
        assert api.post(f"/api/v1/orders/{order_id}/cancel", {}, format="json").status_code == 202
        pump()
        assert order(order_id).status == "CANCELLED"
        assert stock_of("oil") == (10, 0, 0)
        assert saga_status(order_id) == "COMPENSATED"

    def test_cancel_while_paying_settles_the_payment_before_releasing_stock(self, api, stock):
        order_id = place(api, ("oil", 2, "7.25"))
        pump(only={"orders.created", "inventory.reserved"})
        assert saga_status(order_id) == "PAYMENT_PROCESSING"
        assert api.post(f"/api/v1/orders/{order_id}/cancel", {}, format="json").status_code == 202
        # The charge request was already on its way and goes through; the settlement refunds it.
        pump(only={"payments.process_request", "payments.succeeded", "payments.cancel_request"})
        assert stock_of("oil") == (8, 2, 0)  # stock is released only after the money is settled
        pump()
        assert order(order_id).status == "CANCELLED"
        assert stock_of("oil") == (10, 0, 0)
        payment = Payment.objects.get(order_id=order_id)
        assert payment.status == "REFUNDED" and payment.refunded_amount == payment.amount
        assert payment.stripe_refund_id

    def test_cancel_before_the_charge_request_is_handled_charges_nothing(self, api, stock):
        order_id = place(api, ("oil", 2, "7.25"))
        pump(only={"orders.created", "inventory.reserved"})
        api.post(f"/api/v1/orders/{order_id}/cancel", {}, format="json")
        # The cancellation overtakes the charge request.
        pump(only={"payments.cancel_request"})
        pump()
        assert order(order_id).status == "CANCELLED"
        payment = Payment.objects.get(order_id=order_id)
        assert payment.status == "CANCELED" and payment.stripe_payment_intent_id == ""
        assert stock_of("oil") == (10, 0, 0)

    def test_cancel_of_a_confirmed_order_is_409(self, api, stock):
        order_id = place(api, ("oil", 1, "1"))
        pump()
        response = api.post(f"/api/v1/orders/{order_id}/cancel", {}, format="json")
        assert response.status_code == 409
        assert order(order_id).status == "CONFIRMED"

    def test_cancel_of_an_ended_order_is_200_unchanged(self, api, stock):
        order_id = place(api, ("honey", 9, "1"))
        pump()
        response = api.post(f"/api/v1/orders/{order_id}/cancel", {}, format="json")
        assert response.status_code == 200 and response.json()["status"] == "FAILED"

    def test_cancelling_twice_is_harmless(self, api, stock):
        order_id = place(api, ("oil", 1, "1"))
        assert api.post(f"/api/v1/orders/{order_id}/cancel", {}, format="json").status_code == 202
        assert api.post(f"/api/v1/orders/{order_id}/cancel", {}, format="json").status_code == 202
        pump()
        assert api.post(f"/api/v1/orders/{order_id}/cancel", {}, format="json").status_code == 200
        assert stock_of("oil") == (10, 0, 0)


class TestDuplicatesAndLateEvents:
    def test_a_redelivered_event_applies_once(self, api, stock):
        order_id = place(api, ("oil", 2, "1"))
        (created,) = pending_rows({"orders.created"})
        assert [o for _, o, _ in deliver(created)] == ["handled"]
        assert [o for _, o, _ in deliver(created, num_delivered=2)] == ["duplicate"]
        (reserved,) = pending_rows({"inventory.reserved"})
        deliver(reserved)
        assert [o for _, o, _ in deliver(reserved, num_delivered=2)] == ["duplicate"]
        pump()
        assert stock_of("oil") == (8, 0, 2)
        assert Payment.objects.filter(order_id=order_id).count() == 1

    def test_a_repeated_payment_request_never_charges_twice(self, api, stock):
        order_id = place(api, ("oil", 1, "1"))
        pump(only={"orders.created", "inventory.reserved"})
        (request,) = pending_rows({"payments.process_request"})
        # The same command arrives again under a new event id (e.g. republished by hand).
        from payments.models import OutboxMessage

        deliver(request)
        request.pk = None
        deliver(request)
        payment = Payment.objects.get(order_id=order_id)
        assert payment.status == "SUCCEEDED" and payment.attempts == 1
        assert OutboxMessage.objects.filter(subject="payments.succeeded").count() == 2
        pump()
        assert order(order_id).status == "CONFIRMED"
        saga = SagaInstance.objects.get(order_id=order_id)
        assert saga.events_ignored == 1  # the second payments.succeeded was logged and ignored

    def test_ignored_events_are_in_the_step_log(self, api, staff_api, stock):
        order_id = place(api, ("oil", 1, "1"))
        pump()
        steps = staff_api.get(f"/api/v1/sagas/{order_id}").json()["steps"]
        assert [s["statusTo"] for s in steps] == ["STARTED", "INVENTORY_RESERVED", "PAYMENT_PROCESSING",
                                                  "PAYMENT_SUCCEEDED", "COMPLETED"]
        assert all(s["eventId"] for s in steps[1:])


class TestTimeouts:
    def test_payment_that_never_answers_is_compensated_after_the_payment_timeout(self, api, stock, clock,
                                                                                   settings):
        order_id = place(api, ("oil", 2, "1"))
        pump(only={"orders.created", "inventory.reserved"})
        clock.advance(settings.PAYMENT_TIMEOUT_SECONDS - 1)
        assert saga_timeouts_sweep() == 0
        clock.advance(2)
        assert saga_timeouts_sweep() == 1
        assert saga_status(order_id) == "COMPENSATING"
        # The payment service was down: the settlement overtakes the charge request.
        pump(only={"payments.cancel_request"})
        pump()
        cancelled = order(order_id)
        assert cancelled.status == "CANCELLED" and "payment timed out" in cancelled.cancellation_reason
        assert stock_of("oil") == (10, 0, 0)
        assert Payment.objects.get(order_id=order_id).status == "CANCELED"

    def test_inventory_that_never_answers_is_compensated_after_the_saga_timeout(self, api, stock, clock,
                                                                                  settings):
        order_id = place(api, ("oil", 2, "1"))
        clock.advance(settings.SAGA_TIMEOUT_SECONDS + 1)
        assert saga_timeouts_sweep() == 1
        pump()
        assert order(order_id).status == "CANCELLED"
        assert "saga timed out" in order(order_id).cancellation_reason
        assert stock_of("oil") == (10, 0, 0)

    def test_compensation_is_re_requested_until_inventory_answers(self, api, stock, clock, settings):
        order_id = place(api, ("oil", 2, "1"))
        api.post(f"/api/v1/orders/{order_id}/cancel", {}, format="json")
        clock.advance(settings.SAGA_COMPENSATION_RETRY_SECONDS + 1)
        assert saga_timeouts_sweep() == 1
        assert len(pending_rows({"inventory.release_request"})) == 2
        pump()
        assert order(order_id).status == "CANCELLED"
        assert SagaInstance.objects.get(order_id=order_id).compensation_attempts == 2

    def test_reservation_expiry_while_paying_cancels_and_refunds_a_late_payment(self, api, stock, clock,
                                                                                 settings):
        order_id = place(api, ("oil", 2, "1"), reservationTtlSeconds=settings.PAYMENT_TIMEOUT_SECONDS + 1)
        pump(only={"orders.created", "inventory.reserved"})
        clock.advance(settings.PAYMENT_TIMEOUT_SECONDS + 2)
        assert reservations_expire_sweep() == 1
        assert Reservation.objects.get(order_id=order_id).status == "EXPIRED"
        pump()
        assert order(order_id).status == "CANCELLED"
        assert "reservation released" in order(order_id).cancellation_reason
        assert stock_of("oil") == (10, 0, 0)
        assert Payment.objects.get(order_id=order_id).status == "REFUNDED"
        assert saga_timeouts_sweep() == 0

    def test_an_unanswered_compensation_ends_in_compensation_failed_and_can_be_retried(
            self, api, stock, clock, settings):
        from saga.services import saga_compensation_retry

        order_id = place(api, ("oil", 2, "1"))
        api.post(f"/api/v1/orders/{order_id}/cancel", {}, format="json")
        for _ in range(settings.SAGA_COMPENSATION_MAX_ATTEMPTS):
            clock.advance(settings.SAGA_COMPENSATION_RETRY_SECONDS + 1)
            saga_timeouts_sweep()
        saga = SagaInstance.objects.get(order_id=order_id)
        assert saga.status == "COMPENSATION_FAILED" and saga.deadline_at is None
        assert order(order_id).status == "PENDING"
        assert len(pending_rows({"inventory.release_request"})) == settings.SAGA_COMPENSATION_MAX_ATTEMPTS
        saga_compensation_retry(order_id=order_id, reason="inventory is back")
        pump()
        assert order(order_id).status == "CANCELLED"
        assert stock_of("oil") == (10, 0, 0)


def test_poison_messages_are_not_retried():
    from infra.consumers import Outcome, delivery_handle
    from infra.streams import ROUTES

    route = ROUTES[0]
    for data in (b"not json", b"[]", b'{"orderId": 5}'):
        outcome, reason = delivery_handle(route, subject="orders.created", data=data, msg_id="m-1", num_delivered=1)
        assert outcome is Outcome.POISON and reason


HAPPY_PATH = ["orders.created", "inventory.reserved", "payments.process_request", "payments.succeeded",
              "orders.confirmed"]


@pytest.mark.parametrize("delivered", range(len(HAPPY_PATH) + 1),
                         ids=[f"after-{n}-messages" for n in range(len(HAPPY_PATH) + 1)])
def test_a_cancel_at_any_point_of_the_saga_ends_consistently(api, stock, settings, delivered):
    """Cancel after the first `delivered` messages of the happy path were handled: either the order
    is CANCELLED with its stock back and no money kept, or it was already CONFIRMED and the cancel
    is a 409 that changes nothing."""
    order_id = place(api, ("oil", 3, "4.20"))
    for subject in HAPPY_PATH[:delivered]:
        pump(only={subject})
    response = api.post(f"/api/v1/orders/{order_id}/cancel", {"reason": "race"}, format="json")
    pump()
    final = order(order_id)
    payment = Payment.objects.filter(order_id=order_id).first()
    if response.status_code == 409:
        assert final.status == "CONFIRMED" and delivered >= 4
        assert stock_of("oil") == (7, 0, 3) and payment.status == "SUCCEEDED"
    else:
        assert response.status_code == 202
        assert final.status == "CANCELLED"
        assert stock_of("oil") == (10, 0, 0)
        assert payment is None or payment.status in ("CANCELED", "REFUNDED", "FAILED")
        if payment is not None and payment.status == "REFUNDED":
            assert payment.refunded_amount == payment.amount
