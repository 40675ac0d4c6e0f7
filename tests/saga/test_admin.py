"""The admin console, in-process through Django's test client: the saga list filters, the saga page's
merged timeline, the ops actions (each needs a reason, writes an AuditEntry and moves the saga as
its service says), the bulk limit, and the refund's permission. Sagas are driven to the state
each test needs with tests.pump, as in test_flows."""
from __future__ import annotations

import pytest
from django.contrib.auth.models import Permission
from django.urls import reverse

from inventory.models import Product
from orders.models import Order
from orders.models import OutboxMessage as OrdersOutbox
from payments.models import OutboxMessage as PaymentsOutbox
from payments.models import Payment
from saga.models import AuditEntry, SagaInstance
from saga.services import saga_timeouts_sweep
from tests.conftest import ALL_DATABASES
from tests.factories import ProductFactory, order_body
from tests.pump import deliver, pending_rows, pump

pytestmark = pytest.mark.django_db(databases=ALL_DATABASES)
SAGAS = "/admin/saga/sagainstance/"


@pytest.fixture
def stock():
    ProductFactory(product_id="oil", available_quantity=10)


def place(api, customer="customer-1", **extra) -> str:
    response = api.post("/api/v1/orders", order_body(("oil", 2, "4.50"), customerId=customer, **extra), format="json")
    assert response.status_code == 201, response.json()
    return response.json()["orderId"]


def saga(order_id) -> SagaInstance:
    return SagaInstance.objects.get(order_id=order_id)


def paying(api, **extra) -> str:
    """A saga waiting in PAYMENT_PROCESSING (the charge request not delivered yet)."""
    order_id = place(api, **extra)
    pump(only={"orders.created", "inventory.reserved"})
    assert saga(order_id).status == "PAYMENT_PROCESSING"
    return order_id


def compensation_failed(api, clock, settings) -> str:
    """A saga in COMPENSATION_FAILED: cancelled, and inventory never answered the release requests
    (left pending: a later pump() delivers them)."""
    settings.SAGA_COMPENSATION_MAX_ATTEMPTS = 2  # 62 s of sweeps: other sagas' deadlines are not reached
    order_id = place(api)
    api.post(f"/api/v1/orders/{order_id}/cancel", {"reason": "changed my mind"}, format="json")
    for _ in range(settings.SAGA_COMPENSATION_MAX_ATTEMPTS):
        clock.advance(settings.SAGA_COMPENSATION_RETRY_SECONDS + 1)
        saga_timeouts_sweep()
    assert saga(order_id).status == "COMPENSATION_FAILED"
    return order_id


def listed(admin_client, **query) -> set[str]:
    response = admin_client.get(SAGAS, query)
    assert response.status_code == 200
    return {str(s.order_id) for s in response.context["cl"].queryset}


def page(order_id) -> str:
    return reverse("admin:saga_sagainstance_change", args=[saga(order_id).pk])


def op_url(order_id, op) -> str:
    return reverse("admin:saga_sagainstance_ops", args=[saga(order_id).pk, op])


def messages_of(response) -> list[str]:
    return [str(m) for m in response.context["messages"]]


def bulk(client, action, order_ids, reason=None, url=SAGAS, pks=None):
    data = {"action": action, "_selected_action": pks or [saga(o).pk for o in order_ids]}
    if reason is not None:
        data.update(apply="yes", reason=reason)
    return client.post(url, data, follow=True)


class TestList:
    def test_filters_find_stuck_retrying_and_failed_compensations(self, admin_client, api, stock, clock, settings):
        done = place(api)
        pump()
        redelivered = place(api)
        (created,) = pending_rows({"orders.created"})
        deliver(created, num_delivered=2)  # JetStream's second delivery: the first one's ack was lost
        pump()
        waiting = paying(api)
        failed = compensation_failed(api, clock, settings)

        assert listed(admin_client, compensation_failed="yes") == {failed}
        # The failed one re-requested its undo; the redelivered one's message came twice.
        assert listed(admin_client, retrying="yes") == {failed, redelivered}
        assert listed(admin_client, stuck="yes") == set()
        clock.advance(settings.PAYMENT_TIMEOUT_SECONDS + 1)  # the sweep is not running: past its deadline
        assert listed(admin_client, stuck="yes") == {waiting}
        settings.ADMIN_SAGA_STUCK_IDLE_SECONDS = 60  # ... and the failed compensation has been idle long enough
        assert listed(admin_client, stuck="yes") == {waiting, failed}
        assert done not in listed(admin_client, stuck="yes", retrying="yes")

    def test_list_shows_status_age_step_attempts_and_deadline(self, admin_client, api, stock):
        order_id = paying(api)
        response = admin_client.get(SAGAS)
        html = response.content.decode()
        assert order_id in html and "PAYMENT_PROCESSING" in html and "process_payment" in html
        for column in ("Age", "Current step", "Attempts", "Deadline", "Status", "Customer"):
            assert f">{column}<" in html

    def test_search_by_order_id_and_customer_id(self, admin_client, api, stock):
        alice, bob = place(api, customer="alice"), place(api, customer="bob")
        assert listed(admin_client, q=alice) == {alice}
        assert listed(admin_client, q=alice[:8]) == {alice}
        assert listed(admin_client, q="bob") == {bob}


class TestSagaPage:
    def test_the_timeline_merges_every_service(self, admin_client, api, stock):
        order_id = place(api)
        pump()
        response = admin_client.get(page(order_id))
        assert response.status_code == 200
        timeline = response.context["timeline"]
        kinds = {entry.kind for entry in timeline}
        assert kinds == {"step", "outbox", "inbox", "reservation", "payment"}
        assert [e.at for e in timeline] == sorted(e.at for e in timeline)
        sources = {entry.source for entry in timeline}
        assert {"saga", "orders outbox", "inventory outbox", "payments outbox", "orders inbox", "inventory inbox",
                "payments inbox", "inventory", "payments"} <= sources
        sent = [e.title for e in timeline if e.kind == "outbox"]
        assert sent[:2] == ["sent orders.created", "sent inventory.reserved"]
        created = next(e for e in timeline if e.title == "sent orders.created")
        assert f'\n  "orderId": "{order_id}"' in created.payload  # pretty-printed
        payment = Payment.objects.get(order_id=order_id)
        html = response.content.decode()
        assert payment.stripe_payment_intent_id in html and "SUCCEEDED" in html
        assert "&quot;orderId&quot;" in html and "<pre>" in html
        assert "delivery #1" in html and "published" in html

    def test_ops_actions_are_offered_where_they_apply(self, admin_client, api, stock):
        order_id = paying(api)
        ops = {item["op"].name: item["applies"] for item in admin_client.get(page(order_id)).context["ops"]}
        assert ops == {"retry_step": True, "force_compensation": True, "mark_resolved": False}

    def test_the_page_edits_nothing(self, admin_client, api, stock):
        order_id = paying(api)
        assert admin_client.post(page(order_id), {"status": "COMPLETED"}).status_code == 405
        assert saga(order_id).status == "PAYMENT_PROCESSING"


class TestActions:
    def test_every_action_needs_a_reason(self, admin_client, api, stock):
        order_id = paying(api)
        before = OrdersOutbox.objects.count()
        for op in ("retry_step", "force_compensation", "mark_resolved"):
            response = admin_client.post(op_url(order_id, op), {"reason": "   "}, follow=True)
            assert any("a reason is required" in m for m in messages_of(response))
            intermediate = bulk(admin_client, op, [order_id])
            assert intermediate.templates[0].name == "admin/saga/ops_action_confirm.html"
            blank = bulk(admin_client, op, [order_id], reason="")
            assert blank.templates[0].name == "admin/saga/ops_action_confirm.html"
            assert "This field is required." in blank.content.decode()
        assert not AuditEntry.objects.exists()
        assert saga(order_id).status == "PAYMENT_PROCESSING" and OrdersOutbox.objects.count() == before

    def test_retry_re_sends_the_payment_request_and_is_audited(self, admin_client, api, stock):
        order_id = paying(api)
        response = admin_client.post(op_url(order_id, "retry_step"), {"reason": "INC-42 payments consumer restarted"},
                                     follow=True)
        assert any("sent payments.process_request" in m for m in messages_of(response))
        entry = AuditEntry.objects.get()
        assert (entry.user, entry.action, entry.target, entry.outcome) == (
            "admin", "retry_step", order_id, "applied")
        assert entry.reason == "INC-42 payments consumer restarted"
        assert entry.details["sent"] == ["payments.process_request"]
        assert entry.details["statusBefore"] == entry.details["statusAfter"] == "PAYMENT_PROCESSING"
        last_step = saga(order_id).steps.last()
        assert last_step.outcome == "payment request re-sent by hand" and last_step.detail["by"] == "admin"
        assert len(pending_rows({"payments.process_request"})) == 2
        pump()  # both requests are handled: one charge
        assert Order.objects.get(id=order_id).status == "CONFIRMED"
        assert Payment.objects.get(order_id=order_id).attempts == 1
        page_html = admin_client.get(page(order_id)).content.decode()
        assert "INC-42 payments consumer restarted" in page_html and "Retry the current step" in page_html

    def test_retry_in_started_re_sends_orders_created_and_reserves_once(self, admin_client, api, stock):
        order_id = place(api)
        bulk(admin_client, "retry_step", [order_id], reason="inventory consumer was down")
        assert len(pending_rows({"orders.created"})) == 2
        pump()
        assert Order.objects.get(id=order_id).status == "CONFIRMED"
        oil = Product.objects.get(product_id="oil")
        assert (oil.available_quantity, oil.reserved_quantity, oil.sold_quantity) == (8, 0, 2)

    def test_retry_of_a_failed_compensation_resumes_it(self, admin_client, api, stock, clock, settings):
        order_id = compensation_failed(api, clock, settings)
        admin_client.post(op_url(order_id, "retry_step"), {"reason": "inventory is back"})
        assert saga(order_id).status == "COMPENSATING" and saga(order_id).compensation_attempts == 1
        pump()
        assert Order.objects.get(id=order_id).status == "CANCELLED"

    def test_retry_of_an_ended_saga_is_refused_and_still_audited(self, admin_client, api, stock):
        order_id = place(api)
        pump()
        steps, outbox = saga(order_id).steps.count(), OrdersOutbox.objects.count()
        response = admin_client.post(op_url(order_id, "retry_step"), {"reason": "just checking"}, follow=True)
        assert any("refused" in m for m in messages_of(response))
        entry = AuditEntry.objects.get()
        assert entry.outcome == "refused" and "COMPLETED" in entry.details["why"]
        assert saga(order_id).steps.count() == steps and OrdersOutbox.objects.count() == outbox
        assert saga(order_id).events_ignored == 0

    def test_force_compensation_cancels_with_the_ops_reason(self, admin_client, api, stock):
        order_id = paying(api)
        response = bulk(admin_client, "force_compensation", [order_id], reason="fraud suspected")
        assert any("1 of 1 done: 1 applied" in m for m in messages_of(response))
        assert saga(order_id).status == "COMPENSATING"
        entry = AuditEntry.objects.get(action="force_compensation")
        assert entry.details["sent"] == ["payments.cancel_request"] and entry.outcome == "applied"
        pump()
        cancelled = Order.objects.get(id=order_id)
        assert cancelled.status == "CANCELLED"
        assert cancelled.cancellation_reason == "compensation forced by ops: fraud suspected"
        oil = Product.objects.get(product_id="oil")
        assert oil.available_quantity == 10 and oil.reserved_quantity == 0

    def test_mark_resolved_ends_a_failed_compensation(self, admin_client, api, stock, clock, settings):
        order_id = compensation_failed(api, clock, settings)
        admin_client.post(op_url(order_id, "mark_resolved"), {"reason": "stock fixed by hand, INC-7"})
        assert saga(order_id).status == "COMPENSATED" and saga(order_id).deadline_at is None
        order = Order.objects.get(id=order_id)
        assert order.status == "CANCELLED" and order.cancellation_reason == "cancelled on request: changed my mind"
        assert pending_rows({"orders.cancelled"})
        entry = AuditEntry.objects.get()
        assert (entry.action, entry.outcome, entry.details["statusAfter"]) == (
            "mark_resolved", "applied", "COMPENSATED")

    def test_mark_resolved_is_refused_outside_a_failed_compensation(self, admin_client, api, stock):
        order_id = paying(api)
        admin_client.post(op_url(order_id, "mark_resolved"), {"reason": "wrong saga"})
        assert saga(order_id).status == "PAYMENT_PROCESSING"
        assert AuditEntry.objects.get().outcome == "refused"


class TestBulk:
    def test_bulk_actions_report_progress_and_refused_rows(self, admin_client, api, stock):
        ended = place(api)
        pump()
        waiting = paying(api)
        response = bulk(admin_client, "force_compensation", [waiting, ended], reason="bulk test")
        text = messages_of(response)
        assert any("2 of 2 done: 1 applied, 1 refused, 0 failed" in m for m in text)
        assert any(ended in m and "does not apply in COMPLETED" in m for m in text)
        assert AuditEntry.objects.count() == 2

    def test_more_than_the_limit_is_refused_whole(self, admin_client, api, stock, settings):
        settings.ADMIN_BULK_ACTION_LIMIT = 1
        first, second = paying(api), paying(api)
        response = bulk(admin_client, "force_compensation", [first, second], reason="too many")
        assert any("at most 1" in m and "Nothing was done" in m for m in messages_of(response))
        assert not AuditEntry.objects.exists()
        assert {saga(first).status, saga(second).status} == {"PAYMENT_PROCESSING"}


class TestRefund:
    PAYMENTS = "/admin/payments/payment/"

    @pytest.fixture
    def ops(self, client, django_user_model):
        user = django_user_model.objects.create_user(username="ops", password="pw", is_staff=True)
        user.user_permissions.add(Permission.objects.get(codename="view_payment", content_type__app_label="payments"))
        client.force_login(user)
        client.user = user
        return client

    def test_refund_needs_the_payments_refund_permission(self, ops, api, stock):
        order_id = place(api)
        pump()
        payment = Payment.objects.get(order_id=order_id)
        assert ops.get(self.PAYMENTS).context["action_form"] is None  # no action offered at all
        bulk(ops, "refund", [], reason="goodwill", url=self.PAYMENTS, pks=[payment.pk])
        assert Payment.objects.get(pk=payment.pk).status == "SUCCEEDED"
        assert not AuditEntry.objects.exists()

        ops.user.user_permissions.add(Permission.objects.get(codename="refund", content_type__app_label="payments"))
        response = bulk(ops, "refund", [], reason="goodwill, ticket 99", url=self.PAYMENTS, pks=[payment.pk])
        refunded = Payment.objects.get(pk=payment.pk)
        assert refunded.status == "REFUNDED" and refunded.refunded_amount == refunded.amount
        assert refunded.stripe_refund_id and "goodwill, ticket 99" in refunded.refund_reason
        assert PaymentsOutbox.objects.filter(subject="payments.refunded", aggregate_id=order_id).exists()
        entry = AuditEntry.objects.get()
        assert (entry.user, entry.action, entry.target, entry.outcome) == ("ops", "refund", order_id, "applied")
        assert any("1 of 1 done: 1 applied" in m for m in messages_of(response))
        again = bulk(ops, "refund", [], reason="twice?", url=self.PAYMENTS, pks=[payment.pk])
        assert any("only a SUCCEEDED payment" in m for m in messages_of(again))
        assert Payment.objects.get(pk=payment.pk).refunded_amount == refunded.amount


def test_console_pages_load_with_their_filters(admin_client, api, stock):
    order_id = paying(api)
    pages = [
        ("/admin/saga/auditentry/", {}), ("/admin/orders/order/", {"q": order_id}),
        ("/admin/inventory/product/", {"q": "oil", "stock": "low"}),
        ("/admin/inventory/reservation/", {"status__exact": "ACTIVE", "expiring": "soon"}),
        ("/admin/payments/payment/", {"status__exact": "SUCCEEDED", "refunded": "yes"}),
        ("/admin/orders/outboxmessage/", {"relay": "pending"}),
        ("/admin/inventory/inboxmessage/", {"redelivered": "yes"}),
        ("/admin/payments/deadletter/", {"status__exact": "OPEN"}), ("/admin/payments/stripewebhookevent/", {}),
    ]
    for url, query in pages:
        assert admin_client.get(url, query).status_code == 200, url
    products = admin_client.get("/admin/inventory/product/", {"q": "oil"})
    assert [p.product_id for p in products.context["cl"].queryset] == ["oil"]
    html = products.content.decode()
    assert ">8<" in html and ">2<" in html  # available, reserved
    outbox = admin_client.get(f"/admin/orders/outboxmessage/{pending_rows({'payments.process_request'})[0].pk}/change/")
    assert outbox.status_code == 200 and "&quot;orderId&quot;" in outbox.content.decode()


def test_dead_letters_are_redelivered_or_discarded_from_their_page(admin_client):
    from inventory.models import DeadLetter
    from inventory.models import OutboxMessage as InventoryOutbox

    def dead(seq, payload):
        return DeadLetter.objects.create(consumer="order-service-inventory", stream="INVENTORY", stream_sequence=seq,
                                         subject="inventory.reserved", event_id=f"e-{seq}", aggregate_id="o-1",
                                         payload=payload, error="boom")

    redeliver, discard = dead(1, '{"orderId": "o-1", "eventId": "e-1"}'), dead(2, "not json")
    url = "/admin/inventory/deadletter/"
    response = admin_client.post(url, {"action": "redeliver", "_selected_action": [redeliver.pk]}, follow=True)
    redeliver.refresh_from_db()
    assert redeliver.status == "REDELIVERED" and redeliver.resolved_by == "admin"
    copy = InventoryOutbox.objects.get(id=redeliver.redelivered_event_id)
    assert copy.payload["redeliveredFrom"] == "e-1"
    assert any("redelivered as" in m for m in messages_of(response))
    admin_client.post(url, {"action": "discard", "_selected_action": [discard.pk]})
    discard.refresh_from_db()
    assert discard.status == "DISCARDED"
    page_html = admin_client.get(f"{url}{redeliver.pk}/change/").content.decode()
    assert "&quot;orderId&quot;: &quot;o-1&quot;" in page_html  # the payload, pretty-printed
