"""The one module that talks to Stripe (imports `stripe`). Amounts cross it as integer minor units.

Contract of every function:
- returns a plain `IntentState` / refund id, never a stripe object;
- a card decline is an answer, not an error (`IntentState.declined`);
- anything that leaves the outcome unknown or temporary (timeout, connection error, 5xx,
  429, an API error we cannot classify) raises `GatewayUnavailableError`: the caller retries
  with the same PaymentIntent, never creates a second one for the order.
Stripe's own network retries are off: retries are ours, driven by the message redelivery.
"""
from __future__ import annotations

import dataclasses
import hashlib
import hmac
import http.client
import json
import ssl
import threading
import urllib.parse
import urllib.request

import stripe
from django.conf import settings

from a4co.errors import TransientError
from a4co.http_clients import connection_closed_while_idle


class GatewayUnavailableError(TransientError):
    """Stripe could not be reached or answered with a temporary error; retry later."""


class GatewayRejectedError(RuntimeError):
    """Stripe refused the request for good (invalid parameters); retrying will not help."""


@dataclasses.dataclass(frozen=True)
class IntentState:
    id: str
    status: str  # Stripe's PaymentIntent status, or "declined"
    amount_minor: int
    currency: str
    decline_code: str = ""
    decline_message: str = ""

    @property
    def declined(self) -> bool:
        return self.status == "declined"


_local = threading.local()


class KeepAliveClient(stripe.HTTPClient):
    """stripe-python's HTTP client interface on kept-alive `http.client` connections, one per
    host; one instance per thread (`_client`), so a connection is never shared.

    Half the CPU per call of a urllib3 pool (which had replaced stripe's RequestsClient, whose
    session layer cost more still; docs/benchmarks.md). Same contract: `timeout` seconds to
    connect and again for each read, certificates verified against stripe's CA bundle,
    HTTPS_PROXY / HTTP_PROXY / NO_PROXY honoured (read once), no retries, and any transport
    failure raised as stripe.APIConnectionError (which `_call` turns into
    GatewayUnavailableError: the outcome is unknown, retry later). A kept connection the server
    has closed meanwhile is noticed before it is used and replaced, so an idle spell costs a
    reconnect, not an unknown outcome.
    """

    name = "http.client"

    def __init__(self, *, timeout: float, base: str):
        super().__init__(verify_ssl_certs=True)
        self._timeout = timeout
        self._tls = ssl.create_default_context(cafile=stripe.ca_bundle_path)
        self._proxies = urllib.request.getproxies_environment()
        self._connections: dict[tuple[str, str, int], http.client.HTTPConnection] = {}

    def _proxy_for(self, scheme: str, host: str) -> urllib.parse.SplitResult | None:
        proxy = None if urllib.request.proxy_bypass_environment(host, self._proxies) else self._proxies.get(scheme)
        return urllib.parse.urlsplit(proxy) if proxy else None

    def _connection(self, scheme: str, host: str, port: int) -> http.client.HTTPConnection:
        key = (scheme, host, port)
        conn = self._connections.get(key)
        if conn is not None and connection_closed_while_idle(conn):
            conn.close()
        if conn is None:
            proxy = self._proxy_for(scheme, host)
            target = (proxy.hostname, proxy.port or 80) if proxy else (host, port)
            if scheme == "https":
                conn = http.client.HTTPSConnection(*target, timeout=self._timeout, context=self._tls)
                if proxy:
                    conn.set_tunnel(host, port)
            else:
                conn = http.client.HTTPConnection(*target, timeout=self._timeout)
            conn.a4co_absolute_urls = bool(proxy) and scheme == "http"  # a plain proxy takes absolute URLs
            self._connections[key] = conn
        return conn

    def request(self, method, url, headers, post_data=None):
        parts = urllib.parse.urlsplit(url)
        scheme = parts.scheme or "https"
        conn = self._connection(scheme, parts.hostname or "", parts.port or (443 if scheme == "https" else 80))
        target = url if conn.a4co_absolute_urls else parts.path + (f"?{parts.query}" if parts.query else "")
        try:
            conn.request(method.upper(), target, body=post_data, headers=dict(headers or {}))
            response = conn.getresponse()
            body = response.read()
        except (OSError, http.client.HTTPException) as exc:  # timeouts, refused or dropped connections, TLS
            conn.close()
            raise stripe.APIConnectionError(
                f"Unexpected error communicating with Stripe. (Network error: {type(exc).__name__}: {exc})",
                should_retry=not isinstance(exc, ssl.SSLError)) from exc
        if response.will_close:
            conn.close()
        return body, response.status, response.headers

    def request_stream(self, method, url, headers, post_data=None):
        raise NotImplementedError("streaming responses are not used here")

    def close(self):
        for conn in self._connections.values():
            conn.close()
        self._connections.clear()


def _client() -> stripe.StripeClient:
    # One client per thread (its kept connections are not meant to be shared), rebuilt
    # when the settings it was made from change.
    config = (settings.STRIPE_SECRET_KEY, settings.STRIPE_API_BASE, settings.STRIPE_TIMEOUT_SECONDS)
    cached = getattr(_local, "client", None)
    if cached is None or cached[0] != config:
        client = stripe.StripeClient(
            settings.STRIPE_SECRET_KEY,
            base_addresses={"api": settings.STRIPE_API_BASE},
            max_network_retries=0,
            http_client=KeepAliveClient(timeout=settings.STRIPE_TIMEOUT_SECONDS, base=settings.STRIPE_API_BASE),
        )
        cached = _local.client = (config, client)
    return cached[1]


def _as_dict(value) -> dict:
    """A Stripe sub-object (or None) as a plain dict."""
    if value is None:
        return {}
    return value.to_dict() if hasattr(value, "to_dict") else dict(value)


def _state_of(intent: dict) -> IntentState:
    """IntentState from a PaymentIntent as JSON (the hot path's raw requests)."""
    error = intent.get("last_payment_error") or {}
    return IntentState(id=intent["id"], status=intent["status"], amount_minor=int(intent["amount"]),
                       currency=str(intent["currency"]).upper(),
                       decline_code=str(error.get("decline_code") or error.get("code") or ""),
                       decline_message=str(error.get("message") or ""))


def _intent_post(path: str, *, idempotency_key: str, **params) -> IntentState:
    # Hot path (create and confirm, every payment): a raw request, same errors as the typed
    # API, but the answer is read as JSON instead of being built into StripeObjects (a third of
    # the Stripe library's CPU per call).
    return _state_of(_call(_client().raw_request, "post", path, idempotency_key=idempotency_key, **params).data)


def _state(intent) -> IntentState:
    error = _as_dict(getattr(intent, "last_payment_error", None))
    return IntentState(id=intent.id, status=intent.status, amount_minor=int(intent.amount),
                       currency=str(intent.currency).upper(),
                       decline_code=str(error.get("decline_code") or error.get("code") or ""),
                       decline_message=str(error.get("message") or ""))


def _call(func, *args, **kwargs):
    try:
        return func(*args, **kwargs)
    except (stripe.APIConnectionError, stripe.RateLimitError) as exc:
        raise GatewayUnavailableError(f"stripe unreachable: {exc.user_message or exc}") from exc
    except stripe.APIError as exc:
        raise GatewayUnavailableError(f"stripe error {exc.http_status}: {exc.user_message or exc}") from exc
    except stripe.AuthenticationError as exc:
        raise GatewayUnavailableError("stripe rejected our API key (check STRIPE_SECRET_KEY)") from exc


def payment_intent_create(*, amount_minor: int, currency: str, payment_method: str, order_id: str,
                          customer_id: str, idempotency_key: str) -> IntentState:
    """Create an unconfirmed PaymentIntent for `payment_method` (nothing is charged yet).

    An unknown payment method raises GatewayRejectedError (a permanent failure)."""
    try:
        return _intent_post("/v1/payment_intents", idempotency_key=idempotency_key, amount=amount_minor,
                            currency=currency.lower(), payment_method_types=["card"], payment_method=payment_method,
                            metadata={"order_id": order_id, "customer_id": customer_id})
    except stripe.InvalidRequestError as exc:
        raise GatewayRejectedError(f"stripe refused the PaymentIntent: {exc.user_message or exc}") from exc


def payment_intent_confirm(*, intent_id: str, idempotency_key: str) -> IntentState:
    """Confirm (charge) the PaymentIntent with the payment method it was created with.

    A card decline returns `IntentState(status="declined")`. Confirming an intent that is no
    longer confirmable (it already succeeded, e.g. a retry after a lost answer) returns its
    current state instead of failing.
    """
    try:
        return _intent_post(f"/v1/payment_intents/{intent_id}/confirm", idempotency_key=idempotency_key)
    except stripe.CardError as exc:
        error = exc.error
        return IntentState(id=intent_id, status="declined", amount_minor=0, currency="",
                           decline_code=str(getattr(error, "decline_code", None) or exc.code or "card_error"),
                           decline_message=str(exc.user_message or getattr(error, "message", "") or exc))
    except stripe.InvalidRequestError as exc:
        current = payment_intent_retrieve(intent_id=intent_id)
        if current.status in ("succeeded", "processing", "requires_action", "requires_capture", "canceled"):
            return current
        raise GatewayRejectedError(f"stripe refused the confirmation: {exc.user_message or exc}") from exc


def payment_intent_retrieve(*, intent_id: str) -> IntentState:
    try:
        intent = _call(_client().v1.payment_intents.retrieve, intent_id)
    except stripe.InvalidRequestError as exc:
        raise GatewayRejectedError(f"stripe does not know PaymentIntent {intent_id}: {exc}") from exc
    return _state(intent)


CANCELLABLE = frozenset({"requires_payment_method", "requires_confirmation", "requires_action", "requires_capture"})


def payment_intent_cancel(*, intent_id: str) -> IntentState:
    """Cancel the PaymentIntent if it is still cancellable; returns its state either way."""
    current = payment_intent_retrieve(intent_id=intent_id)
    if current.status not in CANCELLABLE:
        return current
    try:
        intent = _call(_client().v1.payment_intents.cancel, intent_id)
    except stripe.InvalidRequestError:
        # It moved on meanwhile (e.g. it was confirmed): report where it is now.
        return payment_intent_retrieve(intent_id=intent_id)
    return _state(intent)


def refund_ensure(*, intent_id: str, amount_minor: int, order_id: str, idempotency_key: str) -> str:
    """Refund `amount_minor` of the PaymentIntent exactly once; returns the refund id.

    Looks for a refund we made earlier (metadata order_id) before creating one, because not
    every Stripe-compatible server honours Idempotency-Key.
    """
    client = _client()
    existing = _call(client.v1.refunds.list, params={"payment_intent": intent_id, "limit": 100})
    for refund in existing.data:
        if _as_dict(refund.metadata).get("order_id") == order_id and refund.status != "failed":
            return refund.id
    try:
        refund = _call(client.v1.refunds.create, params={
            "payment_intent": intent_id, "amount": amount_minor, "metadata": {"order_id": order_id},
        }, options={"idempotency_key": idempotency_key})
    except stripe.InvalidRequestError as exc:
        raise GatewayRejectedError(f"stripe refused the refund: {exc.user_message or exc}") from exc
    return refund.id


# --- Webhooks ---------------------------------------------------------------------------------


class WebhookSignatureError(ValueError):
    """The webhook's Stripe-Signature is missing, malformed, wrong or too old."""


@dataclasses.dataclass(frozen=True)
class WebhookEvent:
    id: str
    type: str
    payment_intent_id: str
    order_id: str


def webhook_event_verify(*, payload: bytes, signature_header: str, secret: str, tolerance_seconds: int,
                         now_timestamp: float) -> WebhookEvent:
    """Check Stripe's signature scheme (v1: HMAC-SHA256 of "<t>.<payload>") and parse the event.

    Our own implementation rather than stripe.Webhook so that "now" comes from the project's one
    clock. Raises WebhookSignatureError for a bad or stale signature or an unreadable body.
    """
    parts: dict[str, list[str]] = {}
    for item in (signature_header or "").split(","):
        key, _, value = item.strip().partition("=")
        parts.setdefault(key, []).append(value)
    try:
        timestamp = int(parts["t"][0])
    except (KeyError, ValueError, IndexError):
        raise WebhookSignatureError("Stripe-Signature has no timestamp") from None
    expected = hmac.new(secret.encode(), f"{timestamp}.".encode() + payload, hashlib.sha256).hexdigest()
    if not any(hmac.compare_digest(expected, candidate) for candidate in parts.get("v1", [])):
        raise WebhookSignatureError("Stripe-Signature does not match")
    if abs(now_timestamp - timestamp) > tolerance_seconds:
        raise WebhookSignatureError(f"Stripe-Signature timestamp is outside the {tolerance_seconds}s tolerance")
    try:
        event = json.loads(payload)
        obj = event["data"]["object"]
        return WebhookEvent(id=str(event["id"]), type=str(event["type"]),
                            payment_intent_id=str(obj.get("id", "")) if obj.get("object") == "payment_intent" else "",
                            order_id=str((obj.get("metadata") or {}).get("order_id", "")))
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise WebhookSignatureError(f"unreadable event: {exc}") from exc


def webhook_signature_for_tests(*, payload: bytes, secret: str, timestamp: int) -> str:
    """The Stripe-Signature header Stripe would send (for tests and local tooling)."""
    signature = hmac.new(secret.encode(), f"{timestamp}.".encode() + payload, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={signature}"


# --- Reconciliation -------------------------------------------------------------------------------


@dataclasses.dataclass
class OrderMoney:
    """What Stripe says happened to an order's money, in minor units."""

    succeeded_intents: int = 0
    charged_minor: int = 0
    refunded_minor: int = 0
    refunds: int = 0

    @property
    def kept_minor(self) -> int:
        return self.charged_minor - self.refunded_minor


def _list_all(listing, params: dict):
    starting_after = None
    while True:
        page = _call(listing, params={**params, "limit": 100,
                                      **({"starting_after": starting_after} if starting_after else {})})
        yield from page.data
        if not page.has_more or not page.data:
            return
        starting_after = page.data[-1].id


def money_by_order() -> dict[str, OrderMoney]:
    """Every order's charges and refunds at Stripe (PaymentIntents and refunds carrying our
    order_id metadata). Reads everything: for reconciliation and the invariant checker."""
    client = _client()
    money: dict[str, OrderMoney] = {}
    intent_orders: dict[str, str] = {}
    for intent in _list_all(client.v1.payment_intents.list, {}):
        order_id = _as_dict(intent.metadata).get("order_id")
        if not order_id:
            continue
        intent_orders[intent.id] = order_id
        entry = money.setdefault(order_id, OrderMoney())
        if intent.status == "succeeded":
            entry.succeeded_intents += 1
            entry.charged_minor += int(intent.amount)
    for refund in _list_all(client.v1.refunds.list, {}):
        order_id = _as_dict(refund.metadata).get("order_id") or intent_orders.get(getattr(refund, "payment_intent", ""))
        if order_id and refund.status != "failed":
            entry = money.setdefault(order_id, OrderMoney())
            entry.refunded_minor += int(refund.amount or 0)
            entry.refunds += 1
    return money
