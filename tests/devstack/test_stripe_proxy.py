"""devstack/stripe_proxy.py: pass-through and each injected fault, against a real stand-in."""
from __future__ import annotations

import time
import uuid

import pytest
import requests
import stripe

from devstack import servers
from tests.helpers import wait_until

AUTH = {"Authorization": "Bearer sk_test_devstack"}


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    base = tmp_path_factory.mktemp("stripe-proxy")
    upstream = servers.start_stripe(base / "stripe")
    try:
        proxy = servers.start_stripe_proxy(base / "proxy", upstream.url)
    except BaseException:
        upstream.stop()
        raise
    with upstream, proxy:
        yield upstream, proxy


@pytest.fixture
def control(stack):
    _, proxy = stack
    url = proxy.url + "/_chaos"
    assert requests.delete(url, timeout=5).status_code == 200
    yield Control(url)
    requests.delete(url, timeout=5)


class Control:
    def __init__(self, url: str):
        self.url = url

    def set(self, **config) -> dict:
        response = requests.post(self.url, json=config, timeout=5)
        assert response.status_code == 200, response.text
        return response.json()

    def counters(self) -> dict:
        return requests.get(self.url, timeout=5).json()["counters"]


def client(base: str, timeout: float = 10.0) -> stripe.StripeClient:
    return stripe.StripeClient("sk_test_devstack", base_addresses={"api": base}, max_network_retries=0,
                               http_client=stripe.RequestsClient(timeout=timeout))


def create_and_confirm(api: stripe.StripeClient, marker: str, amount: int = 1999):
    intent = api.v1.payment_intents.create(params={
        "amount": amount, "currency": "eur", "payment_method": "pm_card_visa", "metadata": {"marker": marker}})
    return api.v1.payment_intents.confirm(intent.id)


def intents_marked(api: stripe.StripeClient, marker: str) -> list:
    return [pi for pi in api.v1.payment_intents.list(params={"limit": 100}).data
            if pi.to_dict().get("metadata", {}).get("marker") == marker]


def test_pass_through_payment_intent_create_and_confirm(stack, control):
    upstream, proxy = stack
    marker = uuid.uuid4().hex
    intent = create_and_confirm(client(proxy.url), marker)
    assert intent.status == "succeeded"
    direct = client(upstream.url).v1.payment_intents.retrieve(intent.id)
    assert direct.status == "succeeded" and direct.amount == 1999
    counters = control.counters()
    assert counters["requests"] == counters["forwarded"] == 2
    assert counters["errors_injected"] == counters["delayed"] == counters["dropped_after_success"] == 0


def test_pass_through_keeps_status_query_and_error_body(stack, control):
    _, proxy = stack
    response = requests.get(f"{proxy.url}/v1/payment_intents/pi_doesnotexist?expand[]=customer", headers=AUTH,
                            timeout=5)
    assert response.status_code == 404
    assert "error" in response.json()
    with pytest.raises(stripe.CardError):
        client(proxy.url).v1.payment_intents.create(params={
            "amount": 500, "currency": "eur", "payment_method": "pm_card_chargeCustomerFail", "confirm": True})


def test_injected_error_is_a_500_and_nothing_is_forwarded(stack, control):
    upstream, proxy = stack
    marker = uuid.uuid4().hex
    control.set(seed=1, error_probability=1.0)
    with pytest.raises(stripe.APIError) as caught:
        create_and_confirm(client(proxy.url), marker)
    assert caught.value.http_status == 500
    assert intents_marked(client(upstream.url), marker) == []
    counters = control.counters()
    assert counters["errors_injected"] == 1 and counters["forwarded"] == 0


def test_delay_past_the_client_timeout(stack, control):
    _, proxy = stack
    control.set(delay_probability=1.0, delay_seconds=1.5)
    started = time.monotonic()
    with pytest.raises(stripe.APIConnectionError):
        client(proxy.url, timeout=0.3).v1.customers.list()
    assert time.monotonic() - started < 1.4
    assert control.counters()["delayed"] == 1
    # delay_phase "before": the request still reaches the upstream after the delay.
    wait_until(lambda: control.counters()["forwarded"] == 1, timeout=5, message="the delayed request forwarded")


def test_drop_after_success_the_charge_happened_but_the_client_never_learns(stack, control):
    upstream, proxy = stack
    marker = uuid.uuid4().hex
    control.set(drop_after_success_probability=1.0, only_paths="/v1/payment_intents")
    api = client(proxy.url)
    with pytest.raises(stripe.APIConnectionError):
        api.v1.payment_intents.create(params={
            "amount": 2500, "currency": "eur", "payment_method": "pm_card_visa", "confirm": True,
            "metadata": {"marker": marker}})
    (intent,) = intents_marked(client(upstream.url), marker)
    assert intent.status == "succeeded" and intent.amount == 2500
    # Paths outside only_paths pass, and a non-2xx answer is never dropped.
    assert api.v1.customers.list().data is not None
    with pytest.raises(stripe.CardError):
        api.v1.payment_intents.create(params={
            "amount": 500, "currency": "eur", "payment_method": "pm_card_chargeCustomerFail", "confirm": True})
    counters = control.counters()
    assert counters["dropped_after_success"] == 1
    assert counters["requests"] == 3 and counters["matched"] == 2 and counters["forwarded"] == 3


def test_fault_choices_are_reproducible_from_the_seed(stack, control):
    _, proxy = stack
    session = requests.Session()

    def run() -> list[int]:
        control.set(seed=42, error_probability=0.5)
        return [session.get(f"{proxy.url}/v1/customers?limit=1", headers=AUTH, timeout=5).status_code
                for _ in range(40)]

    first = run()
    assert set(first) == {200, 500}
    assert run() == first
    assert control.counters()["errors_injected"] == 2 * first.count(500)


def test_reset_and_validation(stack, control):
    _, proxy = stack
    body = control.set(seed=3, error_probability=1.0, only_paths=["/v1/charges"])
    assert body["config"]["only_paths"] == ["/v1/charges"]
    bad = requests.post(control.url, json={"error_probability": 2}, timeout=5)
    assert bad.status_code == 400
    assert requests.post(control.url, json={"nonsense": 1}, timeout=5).status_code == 400
    assert requests.get(control.url, timeout=5).json()["config"]["error_probability"] == 1.0  # unchanged
    reset = requests.delete(control.url, timeout=5).json()
    assert reset["config"]["error_probability"] == 0.0 and reset["config"]["only_paths"] is None
    assert set(reset["counters"].values()) == {0}


def test_unreachable_upstream_gives_a_502(tmp_path):
    with servers.start_stripe_proxy(tmp_path, f"http://127.0.0.1:{servers.free_port()}") as proxy:
        with pytest.raises(stripe.APIError) as caught:
            client(proxy.url).v1.customers.list()
        assert caught.value.http_status == 502
        assert requests.get(proxy.url + "/_chaos", timeout=5).json()["counters"]["upstream_errors"] == 1
