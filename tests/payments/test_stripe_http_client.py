"""The Stripe client's HTTP layer (payments.stripe_gateway.Urllib3Client): proxies from the
environment, and transport failures as 'outcome unknown' (GatewayUnavailableError)."""
from __future__ import annotations

import socket

import pytest
import urllib3

from payments import stripe_gateway as gateway


def test_a_proxy_from_the_environment_is_used_unless_no_proxy_names_the_host(monkeypatch):
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.internal:3128")
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    client = gateway.Urllib3Client(timeout=5, base="https://api.stripe.com")
    assert isinstance(client._pool, urllib3.ProxyManager)
    assert client._pool.proxy.host == "proxy.internal"
    monkeypatch.setenv("NO_PROXY", "api.stripe.com")
    client = gateway.Urllib3Client(timeout=5, base="https://api.stripe.com")
    assert not isinstance(client._pool, urllib3.ProxyManager)


def test_a_refused_connection_is_an_unknown_outcome_not_a_crash(settings):
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    settings.STRIPE_API_BASE = f"http://127.0.0.1:{port}"
    with pytest.raises(gateway.GatewayUnavailableError, match="stripe unreachable"):
        gateway.payment_intent_retrieve(intent_id="pi_123")


def test_a_server_that_does_not_answer_in_time_is_an_unknown_outcome(settings):
    with socket.socket() as silent:  # accepts the connection, never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        settings.STRIPE_API_BASE = f"http://127.0.0.1:{silent.getsockname()[1]}"
        settings.STRIPE_TIMEOUT_SECONDS = 1
        with pytest.raises(gateway.GatewayUnavailableError, match="stripe unreachable"):
            gateway.payment_intent_confirm(intent_id="pi_123", idempotency_key="k")
