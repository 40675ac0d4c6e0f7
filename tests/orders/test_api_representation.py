"""The POST /orders fast paths stay identical to what they replace: the order's JSON built
without DRF's serializer, and the token lookup as one prebuilt query."""
from __future__ import annotations

import datetime as dt
from zoneinfo import ZoneInfo

import pytest
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

from orders.apis import OrderOutputSerializer, order_representation
from orders.models import Order
from tests.conftest import ALL_DATABASES
from tests.factories import order_body

pytestmark = pytest.mark.django_db(databases=ALL_DATABASES)


def test_the_post_answer_is_what_a_get_of_the_order_answers(api):
    created = api.post("/api/v1/orders", order_body(("a", 2, "12.5"), ("b", 1, 3)), format="json")
    assert created.status_code == 201, created.json()
    fetched = api.get(f"/api/v1/orders/{created.json()['orderId']}")
    assert created.json() == fetched.json()


@pytest.mark.parametrize("fields", [
    {},
    {"status": "CANCELLED", "cancellation_reason": "customer asked", "payment_id": "p-1", "reservation_id": "r-1"},
    {"status": "FAILED", "failure_reason": "out of stock", "total_amount": "0.5"},
])
def test_order_representation_matches_the_serializer(api, fields):
    order_id = api.post("/api/v1/orders", order_body(("a", 3, "0.10")), format="json").json()["orderId"]
    Order.objects.filter(id=order_id).update(
        **fields, updated_at=dt.datetime(2026, 3, 29, 1, 30, 0, 5, tzinfo=ZoneInfo("Europe/Madrid")))
    order = Order.objects.prefetch_related("items").get(id=order_id)
    assert order_representation(order) == OrderOutputSerializer(order).data
    assert order_representation(order, list(order.items.all())) == OrderOutputSerializer(order).data


def test_token_authentication_accepts_a_token_and_refuses_unknown_and_inactive_users(django_user_model):
    user = django_user_model.objects.create(username="someone")
    token = Token.objects.create(user=user)
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {token.key}")
    assert client.get("/api/v1/orders").status_code == 200
    client.credentials(HTTP_AUTHORIZATION="Token " + "0" * 40)
    answer = client.get("/api/v1/orders")
    assert answer.status_code == 401 and "Invalid token" in answer.json()["detail"]
    user.is_active = False
    user.save()
    client.credentials(HTTP_AUTHORIZATION=f"Token {token.key}")
    answer = client.get("/api/v1/orders")
    assert answer.status_code == 401 and "inactive" in answer.json()["detail"]
