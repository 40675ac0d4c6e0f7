"""Hostile messages for every consumer route and subject, through the runner's `delivery_handle`
in-process against the real databases and Stripe stand-in (hypothesis: random payloads, and valid
ones mutated). Whatever arrives:
- nothing raises (a consumer never crashes on a message);
- a malformed message is POISON (never retried), changes no domain row (the inbox included), and
  is kept as a dead letter with its reason, as the runner's settle step records it;
- a well-formed message with hostile values (unknown orders, absurd amounts, huge or odd strings)
  is handled or rejected as POISON, never a RETRY: that would mean an unexpected exception,
  retried for nothing and dead-lettered late.
The JetStream path (runner, settle, term) for bad messages is in the last test."""
from __future__ import annotations

import copy
import datetime as dt
import functools
import itertools
import json
import uuid
from decimal import Decimal

import pytest
from django.apps import apps
from hypothesis import HealthCheck, event, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from infra.consumers import Outcome, delivery_handle
from infra.deadletters import FailedDelivery, dead_letter_models, dead_letter_record
from infra.messages import MalformedMessageError, message_envelope, message_parse, message_registry
from infra.streams import ROUTES
from orders.models import Order
from tests.conftest import ALL_DATABASES
from tests.factories import ProductFactory, order_body
from tests.helpers import wait_until
from tests.infra.conftest import RunnerThread
from tests.infra.test_dead_letters import publish_raw
from tests.pump import pump

pytestmark = pytest.mark.django_db(databases=ALL_DATABASES, transaction=True)

ROUTED = [(route, subject) for route in ROUTES for subject in route.consumer.subjects]
DOMAIN_APPS = ("orders", "saga", "inventory", "payments")
FUZZ = hypothesis_settings(deadline=None, database=None, print_blob=True,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                       HealthCheck.data_too_large])
_sequence = itertools.count(1_000_000)


def snapshot() -> dict[str, list]:
    """Every row of every domain table (inboxes and outboxes included; dead letters excluded)."""
    state = {}
    for label in DOMAIN_APPS:
        for model in apps.get_app_config(label).get_models():
            if model.__name__ != "DeadLetter":
                state[model._meta.label] = list(model.objects.order_by("pk").values_list())
    return state


def valid_payloads(order_id: str) -> dict[str, dict]:
    """One well-formed message per subject, about an order that exists (ended CONFIRMED)."""
    now = dt.datetime.now(dt.UTC)
    order = Order.objects.get(id=order_id)
    values = {
        "order_id": order_id, "customer_id": order.customer_id, "reason": "fuzz", "timestamp": now,
        "items": ({"productId": "oil", "quantity": 1, "unitPrice": "5.00"},), "total_amount": Decimal("5.00"),
        "amount": Decimal("5.00"), "payment_id": str(order.payment_id or uuid.uuid4()),
        "reservation_id": str(order.reservation_id or uuid.uuid4()), "expires_at": now,
        "stripe_payment_intent_id": "pi_fuzz", "unavailable_items": ({"productId": "oil", "requested": 1,
                                                                      "available": 0},),
    }
    payloads = {}
    registry = message_registry()
    for subject in {subject for _route, subject in ROUTED}:
        cls = registry[subject]
        fields = {f: values[f] for f in cls.__dataclass_fields__ if f in values}
        payloads[subject] = message_envelope(cls(**fields), event_id=str(uuid.uuid4()), occurred_at=now)
    return payloads


@pytest.fixture
def world(api):
    """A product and a confirmed order: well-formed fuzz reaches real code paths."""
    ProductFactory(product_id="oil", available_quantity=1000)
    order_id = api.post("/api/v1/orders", order_body(("oil", 1, "5.00")), format="json").json()["orderId"]
    pump()
    assert Order.objects.get(id=order_id).status == "CONFIRMED"
    return valid_payloads(order_id)


def settle_as_the_runner_does(route, subject: str, data: bytes, msg_id: str, reason: str) -> None:
    """What ConsumerRunner._settle does with a POISON outcome (then it terms the message)."""
    sequence = next(_sequence)
    failed = FailedDelivery(consumer=route.name, stream=route.consumer.stream, stream_sequence=sequence,
                            subject=subject, data=data, event_id=msg_id, deliveries=1, error=f"malformed: {reason}")
    assert dead_letter_record(route.dead_letter_model, failed)
    dead = apps.get_model(route.dead_letter_model).objects.get(consumer=route.name, stream=route.consumer.stream,
                                                               stream_sequence=sequence)
    assert dead.status == "OPEN" and dead.error == f"malformed: {reason}" and reason
    assert dead.subject == subject


def deliver_and_check(route, subject: str, data: bytes, *, malformed: bool) -> Outcome:
    before = snapshot()
    msg_id = str(uuid.uuid4())
    outcome, reason = delivery_handle(route, subject=subject, data=data, msg_id=msg_id, num_delivered=1)
    if malformed:
        assert outcome is Outcome.POISON, (outcome, reason)
    # RETRY (or UNAVAILABLE: waited out in place) would mean an unexpected exception or a call that
    # cannot succeed: retried for nothing, dead-lettered only after max_deliver deliveries.
    assert outcome in (Outcome.HANDLED, Outcome.POISON, Outcome.DUPLICATE), \
        f"{outcome.value} for {data[:300]!r}: {reason}"
    if outcome is Outcome.POISON:
        assert snapshot() == before, f"a rejected message changed state: {data[:300]!r}"
        settle_as_the_runner_does(route, subject, data, msg_id, reason)
    return outcome


# --- strategies -------------------------------------------------------------------------------------

JSON = st.recursive(
    st.none() | st.booleans() | st.integers(min_value=-(2**80), max_value=2**80) | st.floats() | st.text(max_size=40),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4),
    max_leaves=12)
HOSTILE_TEXT = st.sampled_from([
    "", " ", "x" * 5000, "\x00", "a\x00b", "\ud800", "😀" * 100, "'; DROP TABLE orders_order; --",
    "../../etc/passwd", "%s%s%n", "${jndi:ldap://example.invalid/a}", "\r\nX-Injected: 1", "-1", "NaN",
]) | st.text(max_size=80)
DEEP_LIST = functools.reduce(lambda inner, _: [inner], range(500), 0)  # valid JSON, nested deep
DEEP_DICT = functools.reduce(lambda inner, _: {"a": inner}, range(500), 0)
DEEP = st.sampled_from([DEEP_LIST, DEEP_DICT])
HOSTILE_NUMBER = st.one_of(
    st.integers(min_value=-(2**80), max_value=2**80), st.floats(),
    st.sampled_from(["-1", "0", "-0.01", "0.001", "1e400", "1e-400", "NaN", "Infinity", "-Infinity", "12,50",
                     "99999999999999999999.99", " 5 ", "0x10"]))


@st.composite
def mutated(draw, payload: dict) -> tuple[bytes, bool | None]:
    """A mutation of `payload` as bytes, and True when it must be malformed (None: may be either)."""
    payload = copy.deepcopy(payload)
    kind = draw(st.sampled_from(["drop", "retype", "text", "number", "items", "envelope", "extra", "shape",
                                 "bytes"]))
    event(f"mutation: {kind}")
    keys = sorted(payload)
    if kind == "drop":
        del payload[draw(st.sampled_from(keys))]
    elif kind == "retype":
        payload[draw(st.sampled_from(keys))] = draw(JSON | DEEP)
    elif kind == "text":
        payload[draw(st.sampled_from(keys))] = draw(HOSTILE_TEXT)
    elif kind == "number":
        payload[draw(st.sampled_from(keys))] = draw(HOSTILE_NUMBER)
    elif kind == "items":
        listed = [k for k in keys if isinstance(payload[k], list)] or keys
        key = draw(st.sampled_from(listed))
        payload[key] = draw(st.lists(st.dictionaries(st.sampled_from(
            ["productId", "quantity", "unitPrice", "requested", "available"]), JSON | HOSTILE_NUMBER | HOSTILE_TEXT,
            max_size=4) | JSON, max_size=3))
    elif kind == "envelope":
        key = draw(st.sampled_from(["schemaVersion", "eventType"]))
        payload[key] = draw(JSON.filter(lambda v: v != payload[key]))  # True == 1 == 1.0: still version 1
        return json.dumps(payload).encode(), True
    elif kind == "extra":
        payload[draw(st.text(max_size=20).filter(lambda k: k not in payload))] = draw(JSON)
    elif kind == "shape":
        return json.dumps(draw(st.sampled_from([[payload], str(payload), 42, None, True]))).encode(), True
    elif kind == "bytes":
        raw = json.dumps(payload).encode()
        cut = draw(st.integers(min_value=0, max_value=len(raw) - 1))
        return raw[:cut] + draw(st.binary(min_size=0, max_size=8)) + raw[cut + 1:], None
    return json.dumps(payload).encode(), None


def is_malformed(subject: str, data: bytes) -> bool:
    try:
        message_parse(subject, json.loads(data))
    except (ValueError, UnicodeDecodeError, MalformedMessageError):
        return True
    return False


# --- the fuzz tests -------------------------------------------------------------------------------------

@hypothesis_settings(FUZZ, max_examples=120)
@given(routed=st.sampled_from(ROUTED), data=st.one_of(
    st.binary(max_size=300),
    st.sampled_from([b"[" * 100_000, b'{"a":' * 100_000, json.dumps(DEEP_DICT).encode()]),
    JSON.map(lambda v: json.dumps(v).encode()),
    st.dictionaries(st.text(max_size=15), JSON, max_size=6).map(lambda v: json.dumps(v).encode())))
def test_random_payloads_are_poison_change_nothing_and_are_dead_lettered(world, routed, data):
    route, subject = routed
    event(f"-> {deliver_and_check(route, subject, data, malformed=True).value}")


@hypothesis_settings(FUZZ, max_examples=200)
@given(routed=st.sampled_from(ROUTED), draw=st.data())
def test_mutated_valid_payloads_never_crash_and_rejected_ones_change_nothing(world, routed, draw):
    route, subject = routed
    data, malformed = draw.draw(mutated(world[subject]), label="message")
    if malformed is None:
        malformed = is_malformed(subject, data)
    outcome = deliver_and_check(route, subject, data, malformed=malformed)
    event(f"{'malformed' if malformed else 'well-formed'} -> {outcome.value}")


@pytest.mark.parametrize("subject, change", [
    # What the fuzzer found (each was a RETRY, or an exception out of the dead-letter step).
    ("inventory.out_of_stock", {"orderId": " "}),                  # not a UUID: Django's ValidationError
    ("orders.confirmed", {"orderId": "\ud800"}),                   # lone surrogate: UnicodeEncodeError
    ("orders.created", {"orderId": "x" * 100}),                    # too long for the column: DataError
    ("payments.process_request", {"orderId": "\u001f"}),           # not an HTTP header value (idempotency key)
    ("payments.process_request", {"amount": "-1"}),                # check constraint: IntegrityError
    ("payments.process_request", {"amount": "0.001"}),             # not whole cents: MoneyError
    ("payments.process_request", {"amount": "1.5", "currency": "JPY"}),  # yen have no minor unit
    ("orders.cancelled", b"\x00"),                                 # NUL: the dead letter could not be stored
    ("orders.cancelled", b"[" * 100_000),                          # RecursionError out of the consumer
])
def test_what_the_fuzzer_found_is_poison_changes_nothing_and_is_dead_lettered(world, subject, change):
    route = next(route for route, routed in ROUTED if routed == subject)
    data = change if isinstance(change, bytes) else json.dumps({**world[subject], **change}).encode()
    deliver_and_check(route, subject, data, malformed=True)


def test_the_valid_payloads_are_handled_and_a_repeat_is_a_duplicate(world):
    for route, subject in ROUTED:
        data, msg_id = json.dumps(world[subject]).encode(), str(uuid.uuid4())
        first = delivery_handle(route, subject=subject, data=data, msg_id=msg_id, num_delivered=1)
        again = delivery_handle(route, subject=subject, data=data, msg_id=msg_id, num_delivered=2)
        assert (first[0], again[0]) == (Outcome.HANDLED, Outcome.DUPLICATE), (subject, first, again)


def test_bad_messages_on_every_route_are_dead_lettered_by_the_runner_with_a_reason(jetstream, world):
    """Through JetStream and the real runner: each bad message is settled once, as a dead letter."""
    bad = [b"\x00\xff not json", b'{"schemaVersion": 1', b"[]"]
    sent = []
    for n, (route, subject) in enumerate(ROUTED):
        publish_raw(subject, bad[n % len(bad)])
        sent.append((route.name, subject))
    before = snapshot()
    with RunnerThread(list(ROUTES)) as runner:
        wait_until(lambda: sum(m.objects.count() for m in dead_letter_models()) >= len(sent), timeout=30,
                   message=f"{len(sent)} dead letters")
    dead = [d for model in dead_letter_models() for d in model.objects.all()]
    assert sorted((d.consumer, d.subject) for d in dead) == sorted(sent)
    assert all(d.error.startswith("malformed: ") and d.deliveries == 1 for d in dead)
    assert snapshot() == before
    assert sum(v for (_, kind), v in runner.counts.items() if kind == "poison") == len(sent)
