"""The admin console in a real browser: Debian's headless Chromium, driven by Playwright, against the
running system (gunicorn serving the admin and, through WhiteNoise, its static files).

An operator logs in, finds a saga waiting on a payment (a 3-D Secure card: it stays open), opens
its page, retries the current step with a reason, and sees the result: the success message, the
audit entry, and the re-sent payments.process_request handled by the Payment Service in the
timeline. The page is saved as test-output/admin-saga-retry.png (with the message) and
test-output/admin-saga-retry-handled.png (once the re-sent command was handled).

Chromium comes from Debian (/usr/bin/chromium), never from Playwright's own download: when it is
missing the test installs it with apt-get (as root), so a clean CI machine runs it too.
"""
from __future__ import annotations

import os
import secrets
import uuid
from pathlib import Path

import pytest
import requests
import stripe

from tests.debian import debian_tool
from tests.helpers import wait_until

pytestmark = pytest.mark.e2e
REPO = Path(__file__).resolve().parents[2]
SCREENSHOT = REPO / "test-output" / "admin-saga-retry.png"            # right after "retry"
SCREENSHOT_HANDLED = REPO / "test-output" / "admin-saga-retry-handled.png"  # once the command was handled
SCREENSHOT_LIST = REPO / "test-output" / "admin-saga-list.png"
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def chromium() -> str:
    """/usr/bin/chromium, installed from Debian's packages first if it is missing (needs root)."""
    return debian_tool(str(CHROMIUM), "chromium", "fonts-dejavu-core")


def three_d_secure_payment_method() -> str:
    """A card that needs customer authentication: its payment stays open (REQUIRES_ACTION)."""
    client = stripe.StripeClient(os.environ.get("STRIPE_SECRET_KEY", "sk_test_e2e"),
                                 base_addresses={"api": os.environ["STRIPE_API_BASE"]})
    method = client.v1.payment_methods.create(params={
        "type": "card", "card": {"number": "4000002500003155", "exp_month": 12, "exp_year": 2034, "cvc": "123"}})
    return method.id


@pytest.fixture
def operator(system) -> tuple[str, str]:
    """A superuser with a password, for the admin login form."""
    username, password = f"e2e-admin-{uuid.uuid4().hex[:6]}", secrets.token_urlsafe(16)
    system.manage("shell", "-c", (
        "from django.contrib.auth import get_user_model\n"
        f"get_user_model().objects.create_superuser({username!r}, 'ops@example.invalid', {password!r})"))
    return username, password


@pytest.fixture
def waiting_saga(system) -> str:
    """An order whose saga waits in PAYMENT_PROCESSING (the payment needs 3-D Secure)."""
    ops = system.client(system.staff_token)
    product = f"p-{uuid.uuid4().hex[:10]}"
    assert ops.put(f"{system.base_url}/api/v1/inventory/products/{product}",
                   json={"name": "Aceite de oliva (1 l)", "availableQuantity": 10}).status_code == 201
    response = system.client().post(f"{system.base_url}/api/v1/orders", json={
        "customerId": "customer-console", "paymentMethod": three_d_secure_payment_method(),
        "items": [{"productId": product, "quantity": 2, "unitPrice": "9.75"}]})
    assert response.status_code == 201, response.text
    order_id = response.json()["orderId"]
    wait_until(lambda: ops.get(f"{system.base_url}/api/v1/payments/order/{order_id}").json().get("status")
               == "REQUIRES_ACTION", message="payment waiting for 3-D Secure")
    yield order_id
    system.client().post(f"{system.base_url}/api/v1/orders/{order_id}/cancel", json={"reason": "test over"})


@pytest.mark.timeout(1200)  # may include installing chromium on a fresh machine
def test_operator_retries_a_saga_step_from_its_page(system, operator, waiting_saga):
    from playwright.sync_api import sync_playwright

    executable = chromium()
    order_id, (username, password) = waiting_saga, operator
    reason = "INC-1234: payment provider was unreachable, retrying"
    assert requests.get(f"{system.base_url}/static/admin/css/base.css", timeout=5).status_code == 200

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=executable, headless=True, args=CHROMIUM_FLAGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 900})
            page.goto(f"{system.base_url}/admin/login/?next=/admin/saga/sagainstance/")
            page.fill("#id_username", username)
            page.fill("#id_password", password)
            page.click("input[type=submit]")
            page.wait_for_url("**/admin/saga/sagainstance/")

            page.fill("#searchbar", order_id)
            page.press("#searchbar", "Enter")
            page.wait_for_selector("#result_list")
            page.click("#toggle-nav-sidebar")  # collapsed (and remembered): the screenshots show the console only
            assert "PAYMENT_PROCESSING" in page.inner_text("#result_list")
            SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(SCREENSHOT_LIST), full_page=True)
            page.locator("#result_list a", has_text=order_id).first.click()
            page.wait_for_selector("#a4co-timeline")
            assert "PAYMENT_PROCESSING" in page.inner_text("#content-main")
            assert "waiting for customer authentication" in page.inner_text("#a4co-payment")

            page.fill("#reason-retry_step", reason)
            page.click("input[name=_retry_step]")
            page.wait_for_selector(".messagelist .success")
            assert "sent payments.process_request" in page.inner_text(".messagelist")
            assert reason in page.inner_text("#a4co-audit")
            page.screenshot(path=str(SCREENSHOT), full_page=True)

            def handled_twice() -> bool:
                page.reload()
                return page.locator("#a4co-timeline tr", has_text="payment-service handled "
                                    "payments.process_request").count() == 2

            wait_until(handled_twice, timeout=20, interval=0.5,
                       message="the re-sent payments.process_request handled by the Payment Service")
            page.locator("#a4co-timeline tr.a4co-entry-outbox", has_text="sent payments.process_request") \
                .last.locator("summary").click()
            page.screenshot(path=str(SCREENSHOT_HANDLED), full_page=True)
        finally:
            browser.close()

    saga = system.client(system.staff_token).get(f"{system.base_url}/api/v1/sagas/{order_id}").json()
    assert saga["status"] == "PAYMENT_PROCESSING"
    retried = [s for s in saga["steps"] if s["trigger"] == "retry_step"]
    assert len(retried) == 1 and retried[0]["detail"]["by"] == username and retried[0]["detail"]["reason"] == reason
    assert SCREENSHOT.stat().st_size > 10_000 and SCREENSHOT_HANDLED.stat().st_size > 10_000
