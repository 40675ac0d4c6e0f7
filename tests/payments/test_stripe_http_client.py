"""The Stripe client's HTTP layer (payments.stripe_gateway.KeepAliveClient): proxies from the
environment, kept connections the server closed, certificates verified, and transport failures
as 'outcome unknown' (GatewayUnavailableError)."""
from __future__ import annotations

import socket
import urllib.parse

import pytest
import stripe

from payments import stripe_gateway as gateway
from tests.helpers import FakeServer, http_request_read, wait_until
from tests.tls import certificates_make, tls_proxy

BODY = b'{"id": "pi_123", "object": "payment_intent"}'
ANSWER = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s" % (len(BODY), BODY)


def _answer_once(conn, seen):
    seen.append(http_request_read(conn).split(b"\r\n")[0])
    conn.sendall(ANSWER)  # keep-alive by HTTP/1.1 rules, then the socket is closed anyway


@pytest.fixture
def no_proxy_env(monkeypatch):
    for name in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "NO_PROXY", "no_proxy"):
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def test_a_plain_proxy_from_the_environment_gets_absolute_urls_unless_no_proxy_names_the_host(no_proxy_env):
    proxy = FakeServer(_answer_once)
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    target = f"http://127.0.0.1:{closed.getsockname()[1]}"  # nobody listens there
    closed.close()
    try:
        no_proxy_env.setenv("HTTP_PROXY", f"http://127.0.0.1:{proxy.port}")
        client = gateway.KeepAliveClient(timeout=5, base=target)
        body, status, headers = client.request("get", f"{target}/v1/payment_intents/pi_123", {})
        assert (status, body, headers["Content-Type"]) == (200, BODY, "application/json")
        assert proxy.seen == [f"GET {target}/v1/payment_intents/pi_123 HTTP/1.1".encode()]

        no_proxy_env.setenv("NO_PROXY", "127.0.0.1")
        client = gateway.KeepAliveClient(timeout=5, base=target)
        with pytest.raises(stripe.APIConnectionError):
            client.request("get", f"{target}/v1/payment_intents/pi_123", {})
        assert len(proxy.seen) == 1
    finally:
        proxy.close()


def test_https_through_a_proxy_asks_it_for_a_tunnel_to_the_stripe_host(no_proxy_env):
    def refuse(conn, seen):
        seen.append(http_request_read(conn).split(b"\r\n")[0])
        conn.sendall(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n")

    proxy = FakeServer(refuse)
    try:
        no_proxy_env.setenv("HTTPS_PROXY", f"http://127.0.0.1:{proxy.port}")
        client = gateway.KeepAliveClient(timeout=5, base="https://api.stripe.com")
        with pytest.raises(stripe.APIConnectionError, match="Tunnel connection failed"):
            client.request("post", "https://api.stripe.com/v1/payment_intents", {}, b"amount=1")
        assert proxy.seen[0].startswith(b"CONNECT api.stripe.com:443 HTTP/1.")
    finally:
        proxy.close()


def test_a_kept_connection_the_server_closed_meanwhile_is_replaced_before_use(no_proxy_env):
    server = FakeServer(_answer_once)  # one answer per connection, then it hangs up
    base = f"http://127.0.0.1:{server.port}"
    try:
        client = gateway.KeepAliveClient(timeout=5, base=base)
        for n in range(3):
            wait_until(lambda n=n: server.closed == n, timeout=5)  # the server hung up on the kept one
            _body, status, _headers = client.request("post", f"{base}/v1/payment_intents", {}, b"amount=1")
            assert status == 200
        assert server.connections == 3 and len(server.seen) == 3
    finally:
        server.close()


def test_a_server_whose_certificate_stripe_does_not_trust_is_an_unknown_outcome(settings, tmp_path):
    upstream = urllib.parse.urlsplit(settings.STRIPE_API_BASE)
    with tls_proxy(certificates_make(tmp_path), upstream.port) as port:
        settings.STRIPE_API_BASE = f"https://127.0.0.1:{port}"
        with pytest.raises(gateway.GatewayUnavailableError, match="CERTIFICATE_VERIFY_FAILED"):
            gateway.payment_intent_retrieve(intent_id="pi_123")


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
