"""The API against hostile or greedy clients: ownership of orders in lists, the order-creation
throttle, the request body limit and the pagination caps."""
from __future__ import annotations

import pytest
from django.core.cache import cache

from orders.models import Order
from tests.conftest import ALL_DATABASES
from tests.factories import order_body

pytestmark = pytest.mark.django_db(databases=ALL_DATABASES)


def place(api, **fields):
    return api.post("/api/v1/orders", order_body(**fields), format="json")


class TestOwnership:
    def test_lists_hold_only_the_callers_orders_whatever_the_filters(self, api, other_api, staff_api):
        mine = place(api, customerId="shared-customer").json()["orderId"]
        theirs = place(other_api, customerId="shared-customer").json()["orderId"]
        for client, expected in ((api, {mine}), (other_api, {theirs}), (staff_api, {mine, theirs})):
            page = client.get("/api/v1/orders?customerId=shared-customer").json()
            assert {o["orderId"] for o in page["results"]} == expected and page["count"] == len(expected)

    def test_another_users_order_cannot_be_cancelled_and_stays_as_it_was(self, api, other_api):
        order_id = place(api).json()["orderId"]
        response = other_api.post(f"/api/v1/orders/{order_id}/cancel", {"reason": "mine now"}, format="json")
        assert response.status_code == 404 and response.json() == {"detail": "Order not found.", "code": "not_found"}
        assert Order.objects.get(id=order_id).status == "PENDING"

    def test_staff_only_endpoints_refuse_ordinary_users(self, api):
        order_id = place(api).json()["orderId"]
        for path in (f"/api/v1/sagas/{order_id}", f"/api/v1/payments/order/{order_id}",
                     f"/api/v1/inventory/reservations/order/{order_id}"):
            assert api.get(path).status_code == 403, path
        assert api.put("/api/v1/inventory/products/p", {"name": "x", "availableQuantity": 1},
                       format="json").status_code == 403


class TestOrderCreationThrottle:
    @pytest.fixture(autouse=True)
    def rate(self, settings):
        cache.clear()
        settings.ORDER_CREATE_THROTTLE_RATE = "3/minute"
        yield
        cache.clear()

    def test_past_the_rate_a_user_gets_429_with_retry_after_and_nothing_is_created(self, api, other_api):
        assert [place(api).status_code for _ in range(3)] == [201, 201, 201]
        response = place(api)
        assert response.status_code == 429 and int(response["Retry-After"]) > 0
        assert response.json()["code"] == "throttled"
        assert Order.objects.count() == 3
        # Per API user; and reading is not throttled.
        assert place(other_api).status_code == 201
        assert api.get("/api/v1/orders").status_code == 200

    def test_an_empty_rate_means_no_limit(self, api, settings):
        settings.ORDER_CREATE_THROTTLE_RATE = ""
        assert {place(api).status_code for _ in range(5)} == {201}


class TestRequestSize:
    def test_a_body_over_the_limit_is_413_before_it_is_read(self, api, settings):
        body = order_body()
        body["padding"] = "x" * settings.DATA_UPLOAD_MAX_MEMORY_SIZE
        response = api.post("/api/v1/orders", body, format="json")
        assert response.status_code == 413
        assert response.json()["code"] == "request_too_large"
        assert Order.objects.count() == 0

    def test_a_malformed_content_length_is_400(self, api):
        response = api.generic("POST", "/api/v1/orders", "{}", content_type="application/json",
                               CONTENT_LENGTH="12abc")
        assert response.status_code == 400

    def test_a_body_under_the_limit_is_served(self, api):
        body = order_body()
        body["padding"] = "x" * 100_000
        assert api.post("/api/v1/orders", body, format="json").status_code == 201


class TestPagination:
    def test_limit_is_capped_and_an_absurd_offset_is_an_empty_page(self, api, settings):
        place(api)
        assert len(api.get("/api/v1/orders?limit=999999").json()["results"]) == 1
        response = api.get(f"/api/v1/orders?limit={settings.API_PAGE_SIZE_MAX + 1}")
        assert response.json()["next"] is None
        far = api.get("/api/v1/orders?offset=99999999999999999999999")
        assert far.status_code == 200 and far.json()["results"] == [] and far.json()["count"] == 1
