"""Every saga flow through the HTTP API of the running system (web, Celery relay and beat,
JetStream consumers, three separate databases, the Stripe stand-in)."""
from __future__ import annotations

import concurrent.futures
import os
import uuid

import pytest
import stripe

from tests.helpers import wait_until

pytestmark = pytest.mark.e2e
TERMINAL = {"CONFIRMED", "CANCELLED", "FAILED"}


@pytest.fixture
def shop(system):
    return system.client()


@pytest.fixture
def ops(system):
    return system.client(system.staff_token)


@pytest.fixture
def product(system, ops):
    """Factory: a product of the test's own with `quantity` units (unique id per call)."""

    def make(quantity: int) -> str:
        product_id = f"p-{uuid.uuid4().hex[:10]}"
        response = ops.put(f"{system.base_url}/api/v1/inventory/products/{product_id}",
                           json={"name": product_id, "availableQuantity": quantity})
        assert response.status_code == 201, response.text
        return product_id

    return make


def place(system, shop, *items, **extra) -> dict:
    body = {"customerId": "customer-e2e",
            "items": [{"productId": p, "quantity": q, "unitPrice": price} for p, q, price in items], **extra}
    response = shop.post(f"{system.base_url}/api/v1/orders", json=body)
    assert response.status_code == 201, response.text
    assert response.json()["status"] == "PENDING"
    return response.json()


def final(system, shop, order_id: str, timeout: float = 20) -> dict:
    def terminal():
        body = shop.get(f"{system.base_url}/api/v1/orders/{order_id}").json()
        return body if body["status"] in TERMINAL else None

    try:
        return wait_until(terminal, timeout=timeout, interval=0.05, message=f"order {order_id} to end")
    except AssertionError:
        print(system.log_tail())
        raise


def stock(system, shop, product_id: str) -> tuple[int, int, int]:
    body = shop.get(f"{system.base_url}/api/v1/inventory/products/{product_id}").json()
    return body["availableQuantity"], body["reservedQuantity"], body["soldQuantity"]


def test_happy_path_confirms(system, shop, ops, product):
    oil, honey = product(10), product(3)
    order = place(system, shop, (oil, 2, "12.50"), (honey, 1, "4.75"))
    done = final(system, shop, order["orderId"])
    assert done["status"] == "CONFIRMED"
    assert done["paymentId"] and done["reservationId"]
    payment = ops.get(f"{system.base_url}/api/v1/payments/order/{order['orderId']}").json()
    assert payment["status"] == "SUCCEEDED" and payment["amount"] == "29.75"
    assert payment["stripePaymentIntentId"].startswith("pi_") and payment["paymentId"] == done["paymentId"]
    wait_until(lambda: stock(system, shop, oil) == (8, 0, 2), message="stock committed")
    reservation = ops.get(f"{system.base_url}/api/v1/inventory/reservations/order/{order['orderId']}").json()
    assert reservation["status"] == "COMMITTED" and reservation["reservationId"] == done["reservationId"]
    saga = ops.get(f"{system.base_url}/api/v1/sagas/{order['orderId']}").json()
    assert saga["status"] == "COMPLETED"
    assert [s["statusTo"] for s in saga["steps"]] == ["STARTED", "INVENTORY_RESERVED", "PAYMENT_PROCESSING",
                                                      "PAYMENT_SUCCEEDED", "COMPLETED"]
    assert all(s["eventId"] for s in saga["steps"][1:])


def test_declined_payment_cancels_and_returns_stock(system, shop, ops, product):
    oil = product(10)
    order = place(system, shop, (oil, 4, "2"), paymentMethod="pm_card_chargeCustomerFail")
    done = final(system, shop, order["orderId"])
    assert done["status"] == "CANCELLED"
    assert "payment" in done["cancellationReason"]
    wait_until(lambda: stock(system, shop, oil) == (10, 0, 0), message="stock returned")
    payment = ops.get(f"{system.base_url}/api/v1/payments/order/{order['orderId']}").json()
    assert payment["status"] == "FAILED" and "declined" in payment["failureReason"]


def test_out_of_stock_fails(system, shop, ops, product):
    saffron = product(1)
    order = place(system, shop, (saffron, 2, "9.99"))
    done = final(system, shop, order["orderId"])
    assert done["status"] == "FAILED" and saffron in done["failureReason"]
    assert stock(system, shop, saffron) == (1, 0, 0)
    assert ops.get(f"{system.base_url}/api/v1/payments/order/{order['orderId']}").status_code == 404


def test_multi_line_order_with_one_short_line_fails_whole(system, shop, ops, product):
    plenty, scarce = product(50), product(1)
    order = place(system, shop, (plenty, 5, "1"), (scarce, 2, "1"))
    assert final(system, shop, order["orderId"])["status"] == "FAILED"
    assert stock(system, shop, plenty) == (50, 0, 0) and stock(system, shop, scarce) == (1, 0, 0)
    assert ops.get(f"{system.base_url}/api/v1/inventory/reservations/order/{order['orderId']}").status_code == 404


def three_d_secure_payment_method() -> str:
    """A card that needs customer authentication: its payment stays open until cancelled."""
    client = stripe.StripeClient(os.environ.get("STRIPE_SECRET_KEY", "sk_test_e2e"),
                                 base_addresses={"api": os.environ["STRIPE_API_BASE"]})
    method = client.v1.payment_methods.create(params={
        "type": "card", "card": {"number": "4000002500003155", "exp_month": 12, "exp_year": 2034, "cvc": "123"}})
    return method.id


def test_cancel_while_payment_is_pending(system, shop, ops, product):
    oil = product(5)
    order = place(system, shop, (oil, 2, "3"), paymentMethod=three_d_secure_payment_method())
    order_id = order["orderId"]
    wait_until(lambda: ops.get(f"{system.base_url}/api/v1/payments/order/{order_id}").json()
               .get("status") == "REQUIRES_ACTION", message="payment waiting for 3-D Secure")
    assert stock(system, shop, oil) == (3, 2, 0)
    response = shop.post(f"{system.base_url}/api/v1/orders/{order_id}/cancel", json={"reason": "too slow"})
    assert response.status_code == 202, response.text
    done = final(system, shop, order_id)
    assert done["status"] == "CANCELLED" and done["cancellationReason"] == "cancelled on request: too slow"
    wait_until(lambda: stock(system, shop, oil) == (5, 0, 0), message="stock returned")
    again = shop.post(f"{system.base_url}/api/v1/orders/{order_id}/cancel", json={})
    assert again.status_code == 200 and again.json()["status"] == "CANCELLED"


def test_cancel_after_confirmation_is_409(system, shop, product):
    order = place(system, shop, (product(5), 1, "1"))
    assert final(system, shop, order["orderId"])["status"] == "CONFIRMED"
    response = shop.post(f"{system.base_url}/api/v1/orders/{order['orderId']}/cancel", json={})
    assert response.status_code == 409
    assert shop.get(f"{system.base_url}/api/v1/orders/{order['orderId']}").json()["status"] == "CONFIRMED"


def test_contention_never_oversells(system, product):
    scarce = product(5)

    def one_order(_):
        session = system.client()
        response = session.post(f"{system.base_url}/api/v1/orders", json={
            "customerId": "rush", "items": [{"productId": scarce, "quantity": 1, "unitPrice": "10"}]})
        assert response.status_code == 201, response.text
        return response.json()["orderId"]

    with concurrent.futures.ThreadPoolExecutor(20) as pool:
        order_ids = list(pool.map(one_order, range(20)))
    shop = system.client()
    outcomes = [final(system, shop, order_id, timeout=60)["status"] for order_id in order_ids]
    assert outcomes.count("CONFIRMED") == 5
    assert outcomes.count("FAILED") == 15
    wait_until(lambda: stock(system, shop, scarce) == (0, 0, 5), message="5 sold, none reserved")


def test_readyz_reports_every_dependency(system):
    import requests

    body = requests.get(f"{system.base_url}/readyz", timeout=5).json()
    assert body["status"] == "ready"
    assert set(body["checks"]["databases"]) == {"default", "orders", "inventory", "payments"}
