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


@pytest.fixture
def token_cache(settings):
    """API token lookups kept 5 s (the default outside tests), from an empty cache."""
    from a4co.api import TokenAuthentication

    settings.API_TOKEN_CACHE_SECONDS = 5
    TokenAuthentication._known.clear()
    yield
    TokenAuthentication._known.clear()


def test_a_token_lookup_is_kept_for_the_cache_time_then_looked_up_again(django_user_model, token_cache, clock):
    user = django_user_model.objects.create(username="cached")
    token = Token.objects.create(user=user)
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {token.key}")
    assert client.get("/api/v1/orders").status_code == 200

    user.is_active = False
    user.save()
    clock.advance(4)
    assert client.get("/api/v1/orders").status_code == 200  # within the 5 s: the kept lookup
    clock.advance(2)
    answer = client.get("/api/v1/orders")
    assert answer.status_code == 401 and "inactive" in answer.json()["detail"]

    user.is_active = True
    user.save()
    assert client.get("/api/v1/orders").status_code == 200
    token.delete()
    clock.advance(6)
    answer = client.get("/api/v1/orders")
    assert answer.status_code == 401 and "Invalid token" in answer.json()["detail"]


def test_an_unknown_token_is_not_kept(django_user_model, token_cache):
    key = "a" * 40
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {key}")
    assert client.get("/api/v1/orders").status_code == 401
    Token.objects.create(user=django_user_model.objects.create(username="late"), key=key)
    assert client.get("/api/v1/orders").status_code == 200  # no refusal was kept


def test_without_a_cache_time_every_request_looks_up(django_user_model, settings):
    settings.API_TOKEN_CACHE_SECONDS = 0
    user = django_user_model.objects.create(username="uncached")
    token = Token.objects.create(user=user)
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {token.key}")
    assert client.get("/api/v1/orders").status_code == 200
    token.delete()
    assert client.get("/api/v1/orders").status_code == 401
