"""The orders HTTP API in-process: validation, authentication, idempotency, reads, cancel rules."""
from __future__ import annotations

import uuid

import pytest

from orders.models import Order
from saga.models import SagaInstance
from tests.conftest import ALL_DATABASES
from tests.factories import order_body

pytestmark = pytest.mark.django_db(databases=ALL_DATABASES)


def place(api, body=None, **headers):
    return api.post("/api/v1/orders", body or order_body(), format="json", **headers)


class TestPlaceOrder:
    def test_201_pending_with_location_and_computed_total(self, api):
        response = place(api, order_body(("a", 2, "12.50"), ("b", 1, 3)))
        assert response.status_code == 201, response.json()
        body = response.json()
        assert body["status"] == "PENDING"
        assert body["totalAmount"] == "28.00"
        assert body["currency"] == "EUR" and body["paymentMethod"] == "pm_card_visa"
        assert response["Location"].endswith(f"/api/v1/orders/{body['orderId']}")
        assert [i["lineTotal"] for i in body["items"]] == ["25.00", "3.00"]

    def test_the_order_its_saga_and_orders_created_commit_together(self, api):
        order_id = place(api).json()["orderId"]
        saga = SagaInstance.objects.get(order_id=order_id)
        assert saga.status == "STARTED"
        from orders.models import OutboxMessage
        event = OutboxMessage.objects.get(aggregate_id=order_id)
        assert event.subject == "orders.created"
        assert event.payload["orderId"] == order_id and event.payload["eventId"] == str(event.id)
        assert event.payload["totalAmount"] == "10.00"

    def test_matching_total_and_options_are_accepted(self, api):
        response = place(api, order_body(("a", 3, 1.1), totalAmount="3.30", currency="usd",
                                         reservationTtlSeconds=600, paymentMethod="pm_card_mastercard"))
        assert response.status_code == 201, response.json()
        assert response.json()["currency"] == "USD"
        assert response.json()["reservationTtlSeconds"] == 600

    @pytest.mark.parametrize("body, field", [
        ({"items": [{"productId": "a", "quantity": 1, "unitPrice": 1}]}, "customerId"),
        (order_body(customerId=""), "customerId"),
        (order_body(customerId="   "), "customerId"),
        (order_body(customerId="x" * 65), "customerId"),
        ({"customerId": "c"}, "items"),
        ({"customerId": "c", "items": []}, "items"),
        ({"customerId": "c", "items": "lots"}, "items"),
        (order_body(("a", 0, "1")), "items"),
        (order_body(("a", -1, "1")), "items"),
        (order_body(("a", 1.5, "1")), "items"),
        (order_body(("a", "2", "1")), "items"),
        (order_body(("a", True, "1")), "items"),
        (order_body(("a", 10**9, "1")), "items"),
        (order_body(("a", 1, "-1")), "items"),
        (order_body(("a", 1, "1.001")), "items"),
        (order_body(("a", 1, "abc")), "items"),
        (order_body(("a", 1, "1e30")), "items"),
        (order_body(("", 1, "1")), "items"),
        (order_body(("a b", 1, "1")), "items"),
        (order_body(("a", 1, "2.00"), totalAmount="3.00"), "totalAmount"),
        (order_body(("a", 1, "2.00"), totalAmount="-2"), "totalAmount"),
        (order_body(currency="XXX"), "currency"),
        (order_body(("a", 1, "2.50"), currency="JPY"), "items"),
        (order_body(paymentMethod="pm card; drop"), "paymentMethod"),
        (order_body(reservationTtlSeconds=5), "reservationTtlSeconds"),
        (order_body(reservationTtlSeconds=10**9), "reservationTtlSeconds"),
        (order_body(reservationTtlSeconds="600"), "reservationTtlSeconds"),
        ({"customerId": "c", "items": [{"productId": "a", "quantity": 1, "unitPrice": 1}] * 101}, "items"),
    ])
    def test_bad_input_is_a_400_naming_the_field(self, api, body, field):
        response = place(api, body)
        assert response.status_code == 400, response.content
        assert field in response.json(), response.json()
        assert Order.objects.count() == 0

    def test_unparseable_json_is_a_400(self, api):
        response = api.post("/api/v1/orders", data="{not json", content_type="application/json")
        assert response.status_code == 400
        assert "JSON parse error" in response.json()["detail"]

    def test_a_json_array_body_is_a_400(self, api):
        response = api.post("/api/v1/orders", data="[1, 2]", content_type="application/json")
        assert response.status_code == 400
        assert "nonFieldErrors" in response.json()

    def test_without_credentials_401_and_with_a_bad_token_401(self, client):
        assert client.post("/api/v1/orders", order_body(), content_type="application/json").status_code == 401
        bad = client.post("/api/v1/orders", order_body(), content_type="application/json",
                          HTTP_AUTHORIZATION="Token nope")
        assert bad.status_code == 401


class TestIdempotencyKey:
    def test_a_repeat_with_the_same_key_returns_the_same_order(self, api):
        first = place(api, HTTP_IDEMPOTENCY_KEY="k-1")
        again = place(api, HTTP_IDEMPOTENCY_KEY="k-1")
        assert first.status_code == 201 and again.status_code == 200
        assert again.json()["orderId"] == first.json()["orderId"]
        assert again["Idempotent-Replayed"] == "true"
        assert Order.objects.count() == 1 and SagaInstance.objects.count() == 1

    def test_the_same_key_with_another_body_is_a_409(self, api):
        place(api, HTTP_IDEMPOTENCY_KEY="k-1")
        response = place(api, order_body(("other", 5, "1")), HTTP_IDEMPOTENCY_KEY="k-1")
        assert response.status_code == 409
        assert "Idempotency-Key" in response.json()

    def test_keys_are_per_api_user(self, api, other_api):
        mine = place(api, HTTP_IDEMPOTENCY_KEY="k-1").json()["orderId"]
        theirs = place(other_api, HTTP_IDEMPOTENCY_KEY="k-1").json()["orderId"]
        assert mine != theirs

    def test_an_overlong_key_is_a_400(self, api):
        response = place(api, HTTP_IDEMPOTENCY_KEY="k" * 256)
        assert response.status_code == 400 and "Idempotency-Key" in response.json()


class TestReadOrders:
    def test_get_returns_the_documented_fields(self, api):
        order_id = place(api).json()["orderId"]
        body = api.get(f"/api/v1/orders/{order_id}").json()
        assert set(body) >= {"orderId", "customerId", "items", "totalAmount", "currency", "status",
                             "cancellationReason", "failureReason", "paymentId", "reservationId",
                             "createdAt", "updatedAt"}
        assert body["cancellationReason"] is None and body["paymentId"] is None

    @pytest.mark.parametrize("order_id", [str(uuid.uuid4()), "not-a-uuid", "1"])
    def test_unknown_or_malformed_ids_are_404(self, api, order_id):
        assert api.get(f"/api/v1/orders/{order_id}").status_code == 404

    def test_another_users_order_is_404_but_staff_sees_it(self, api, other_api, staff_api):
        order_id = place(api).json()["orderId"]
        assert other_api.get(f"/api/v1/orders/{order_id}").status_code == 404
        assert other_api.post(f"/api/v1/orders/{order_id}/cancel", {}, format="json").status_code == 404
        assert staff_api.get(f"/api/v1/orders/{order_id}").status_code == 200

    def test_list_filters_and_paginates(self, api, other_api):
        for customer in ("c-1", "c-1", "c-2"):
            place(api, order_body(customerId=customer))
        place(other_api)
        page = api.get("/api/v1/orders?customerId=c-1&status=PENDING&limit=1").json()
        assert page["count"] == 2 and len(page["results"]) == 1 and page["next"]
        assert api.get("/api/v1/orders").json()["count"] == 3
        assert api.get("/api/v1/orders?status=CONFIRMED").json()["count"] == 0

    def test_list_with_a_bad_status_is_a_400(self, api):
        response = api.get("/api/v1/orders?status=SHIPPED")
        assert response.status_code == 400 and "status" in response.json()

    def test_list_page_size_is_capped(self, api):
        place(api)
        response = api.get("/api/v1/orders?limit=100000")
        assert response.status_code == 200 and len(response.json()["results"]) == 1


class TestStaffOnly:
    def test_saga_view_is_staff_only(self, api, staff_api):
        order_id = place(api).json()["orderId"]
        assert api.get(f"/api/v1/sagas/{order_id}").status_code == 403
        body = staff_api.get(f"/api/v1/sagas/{order_id}").json()
        assert body["status"] == "STARTED" and body["steps"][0]["step"] == "reserve_inventory"
        assert body["deadlines"]["next"] is not None

    def test_stock_is_managed_by_staff_only(self, api, staff_api):
        body = {"name": "Miel", "availableQuantity": 7}
        assert api.put("/api/v1/inventory/products/miel", body, format="json").status_code == 403
        created = staff_api.put("/api/v1/inventory/products/miel", body, format="json")
        assert created.status_code == 201
        assert api.get("/api/v1/inventory/products/miel").json() == {
            **created.json(), "availableQuantity": 7, "reservedQuantity": 0, "soldQuantity": 0}
        updated = staff_api.put("/api/v1/inventory/products/miel", {"name": "Miel", "availableQuantity": 3},
                                format="json")
        assert updated.status_code == 200 and updated.json()["availableQuantity"] == 3

    @pytest.mark.parametrize("body, field", [
        ({"name": "x", "availableQuantity": -1}, "availableQuantity"),
        ({"name": "x", "availableQuantity": "3"}, "availableQuantity"),
        ({"availableQuantity": 3}, "name"),
    ])
    def test_bad_stock_is_a_400(self, staff_api, body, field):
        response = staff_api.put("/api/v1/inventory/products/p", body, format="json")
        assert response.status_code == 400 and field in response.json()

    def test_unknown_things_are_404(self, api, staff_api):
        assert api.get("/api/v1/inventory/products/nope").status_code == 404
        assert staff_api.get(f"/api/v1/inventory/reservations/{uuid.uuid4()}").status_code == 404
        assert staff_api.get("/api/v1/inventory/reservations/bad-id").status_code == 404
        assert staff_api.get(f"/api/v1/inventory/reservations/order/{uuid.uuid4()}").status_code == 404
        assert staff_api.get(f"/api/v1/payments/order/{uuid.uuid4()}").status_code == 404

    @pytest.mark.parametrize("path", ["/api/v1/inventory/reservations/order/x", "/api/v1/payments/order/x"])
    def test_reservations_and_payments_are_staff_only(self, api, path):
        assert api.get(path).status_code == 403


def test_healthz_is_open(client):
    assert client.get("/healthz").json() == {"status": "ok"}


def test_an_absurdly_large_body_is_a_413_not_a_500(api):
    body = order_body(customerId="c")
    body["padding"] = "x" * 400_000
    response = place(api, body)
    assert response.status_code == 413  # a4co.middleware.RequestBodyLimitMiddleware
