"""No secret in a log line, an HTTP answer or a stored row: the Stripe secret key when Stripe
rejects it, the webhook secret on bad signatures, NATS credentials in the readiness answer, and
settings in a 500."""
from __future__ import annotations

import json
import logging
from io import StringIO

import pytest
from django.apps import apps
from django.core.management import call_command
from rest_framework.test import APIClient

from a4co import clock
from devstack.servers import free_port
from infra.consumers import Outcome
from payments import stripe_gateway as gateway
from tests.conftest import ALL_DATABASES
from tests.factories import ProductFactory, order_body
from tests.pump import pump

pytestmark = pytest.mark.django_db(databases=ALL_DATABASES)
# Recognisable, and refused by the Stripe stand-in (it accepts only keys starting with sk_): 401.
STRIPE_KEY = "rk_live_A4COSECRET7f3e9d1c5b"
WEBHOOK_SECRET = "whsec_A4COSECRET2a4b6c8d0e"
NATS_PASSWORD = "A4COSECRET-nats-5e6f7a8b"


def stored_text() -> str:
    """Every row of the service apps' tables (orders, sagas, payments, outboxes, inboxes, dead letters)."""
    rows = []
    for label in ("orders", "saga", "inventory", "payments"):
        for model in apps.get_app_config(label).get_models():
            rows += [repr(row) for row in model.objects.values_list()]
    return "\n".join(rows)


def test_a_stripe_key_that_stripe_rejects_shows_nowhere(api, staff_api, settings, caplog):
    caplog.set_level(logging.DEBUG)  # stripe's and urllib3's debug lines included
    settings.STRIPE_SECRET_KEY = STRIPE_KEY
    ProductFactory(product_id="oil", available_quantity=5)
    placed = api.post("/api/v1/orders", order_body(("oil", 1, "5.00")), format="json")
    order_id = placed.json()["orderId"]

    deliveries = pump()
    (charge,) = [d for d in deliveries if d[0] == "payments.process_request"]
    assert charge[2] in (Outcome.RETRY, Outcome.UNAVAILABLE) and "rejected our API key" in charge[3]

    answers = [placed, api.get(f"/api/v1/orders/{order_id}"), staff_api.get(f"/api/v1/sagas/{order_id}"),
               staff_api.get(f"/api/v1/payments/order/{order_id}")]
    assert all(a.status_code in (200, 201) for a in answers)
    assert "rejected our API key" in caplog.text  # the failure is logged, with its traceback...
    for text in [caplog.text, stored_text(), *(a.content.decode() for a in answers)]:
        assert STRIPE_KEY not in text and STRIPE_KEY[8:] not in text  # ...without the key or its tail


def test_the_webhook_secret_is_never_echoed(client, settings, caplog):
    caplog.set_level(logging.DEBUG)
    settings.STRIPE_WEBHOOK_SECRET = WEBHOOK_SECRET
    body = json.dumps({"id": "evt_x", "type": "payment_intent.succeeded",
                       "data": {"object": {"id": "pi_x", "object": "payment_intent"}}}).encode()
    now = int(clock.now().timestamp())
    signatures = [
        "",
        "t=1,v1=deadbeef",
        gateway.webhook_signature_for_tests(payload=body, secret="whsec_other", timestamp=now),
        gateway.webhook_signature_for_tests(payload=body, secret=WEBHOOK_SECRET, timestamp=now - 3600),
    ]
    for signature in signatures:
        response = client.post("/api/v1/payments/stripe/webhook", data=body, content_type="application/json",
                               HTTP_STRIPE_SIGNATURE=signature)
        assert response.status_code == 400
        assert response.json()["code"] == "bad_signature"
        assert WEBHOOK_SECRET not in response.content.decode()
    garbage = b"not json"
    response = client.post("/api/v1/payments/stripe/webhook", data=garbage, content_type="application/json",
                           HTTP_STRIPE_SIGNATURE=gateway.webhook_signature_for_tests(
                               payload=garbage, secret=WEBHOOK_SECRET, timestamp=now))
    assert response.status_code == 400 and WEBHOOK_SECRET not in response.content.decode()
    assert WEBHOOK_SECRET not in caplog.text


def test_nats_credentials_do_not_show_in_the_readiness_answer(client, settings, caplog):
    caplog.set_level(logging.DEBUG)
    settings.NATS_URL = f"nats://a4co:{NATS_PASSWORD}@127.0.0.1:{free_port()}"  # nothing listens there
    settings.NATS_CONNECT_TIMEOUT_SECONDS = 1
    response = client.get("/readyz")
    assert response.status_code == 503
    assert response.json()["checks"]["nats"].startswith("error:")
    assert NATS_PASSWORD not in response.content.decode() and NATS_PASSWORD not in caplog.text


def test_an_unexpected_error_answers_a_bare_500_without_settings(api, settings, monkeypatch):
    settings.STRIPE_SECRET_KEY = STRIPE_KEY

    def explode(**kwargs):
        raise RuntimeError(f"boom with {settings.STRIPE_SECRET_KEY} and {settings.SECRET_KEY}")

    monkeypatch.setattr("orders.apis.order_place", explode)
    client = APIClient(raise_request_exception=False)
    client.credentials(HTTP_AUTHORIZATION=api._credentials["HTTP_AUTHORIZATION"])
    response = client.post("/api/v1/orders", order_body(), format="json")
    assert response.status_code == 500
    body = response.content.decode()
    assert STRIPE_KEY not in body and settings.SECRET_KEY not in body and "boom" not in body


def test_rotating_an_api_token_revokes_the_old_key_at_once():
    def token(*flags: str) -> str:
        out = StringIO()
        call_command("api_token", "shop-x", *flags, stdout=out)
        return out.getvalue().strip()

    old = token()
    assert token() == old  # idempotent without --rotate
    new = token("--rotate")
    assert new != old
    client = APIClient()
    assert client.get("/api/v1/orders", HTTP_AUTHORIZATION=f"Token {old}").status_code == 401
    assert client.get("/api/v1/orders", HTTP_AUTHORIZATION=f"Token {new}").status_code == 200
