"""The speed patches of the Stripe stand-in's launcher change no answer: an object exports to the
same dictionary as with stock localstripe, and events still reach a registered webhook."""
from __future__ import annotations

import asyncio
import json

import pytest
from localstripe import resources, webhooks

from devstack import localstripe_fast

# localstripe.server registers plain-function handlers when imported: its own business.
pytestmark = pytest.mark.filterwarnings("ignore:Bare functions are deprecated:DeprecationWarning")


@pytest.fixture
def stock_export(monkeypatch):
    """Stock `_export`, restored after the test (the patch replaces it on the class)."""
    stock = resources.StripeObject._export
    monkeypatch.setattr(resources.StripeObject, "_export", stock)
    return stock


def _objects():
    async def make():
        paid = resources.PaymentIntent._api_create(amount=1250, currency="eur", payment_method="pm_card_visa",
                                                   metadata={"order_id": "o-1"})
        paid = resources.PaymentIntent._api_confirm(paid.id)
        refunded = resources.PaymentIntent._api_create(amount=990, currency="eur", payment_method="pm_card_visa")
        refunded = resources.PaymentIntent._api_confirm(refunded.id)
        resources.Refund._api_create(payment_intent=refunded.id, amount=400)
        declined = resources.PaymentIntent._api_create(amount=700, currency="eur",
                                                       payment_method="pm_card_chargeCustomerFail")
        with pytest.raises(resources.UserError):  # 402, as Stripe answers a declined confirm
            resources.PaymentIntent._api_confirm(declined.id)
        declined = resources.PaymentIntent._api_retrieve(declined.id)
        customer = resources.Customer._api_create(email="shop@example.com", metadata={"k": "v"})
        return [paid, refunded, declined, customer, resources.PaymentMethod._api_retrieve("pm_card_visa")]

    return asyncio.run(make())


def test_exports_the_same_dictionaries_as_stock_localstripe(stock_export):
    objects = _objects()
    expected = [stock_export(obj) for obj in objects]
    assert expected[1]["charges"]["data"][0]["refunds"]["data"], "the refund is part of the export"

    localstripe_fast._patch_export(resources)

    assert resources.StripeObject._export is not stock_export
    assert [obj._export() for obj in objects] == expected
    # Asked to expand, it is the stock code (validation and expansion included).
    assert objects[0]._export(expand=["payment_method"])["payment_method"]["object"] == "payment_method"
    with pytest.raises(resources.UserError):
        objects[0]._export(expand="payment_method")


def test_events_are_scheduled_only_while_a_webhook_is_registered(monkeypatch):
    scheduled = []
    monkeypatch.setattr(resources, "schedule_webhook", scheduled.append)
    monkeypatch.setattr(webhooks, "_webhooks", {})
    localstripe_fast._patch_webhooks(resources)

    resources.schedule_webhook("event-1")
    assert scheduled == []

    webhooks.register_webhook("shop", "http://127.0.0.1:9/hook", "whsec_x", None)
    resources.schedule_webhook("event-2")
    assert scheduled == ["event-2"]


def test_answers_are_compact_json_of_the_same_object(monkeypatch):
    from localstripe import server

    monkeypatch.setattr(server, "json_response", server.json_response)
    body = {"id": "pi_1", "metadata": {"order_id": "o-1"}, "amount": 1250}
    stock = server.json_response(body)
    localstripe_fast._patch_answers(server)
    compact = server.json_response(body)

    assert json.loads(compact.body) == json.loads(stock.body) == body
    assert compact.body == b'{"id":"pi_1","metadata":{"order_id":"o-1"},"amount":1250}'
    assert compact.content_type == stock.content_type == "application/json"
