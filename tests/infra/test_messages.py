import datetime as dt
import json
from decimal import Decimal

import pytest

from infra.messages import MalformedMessageError, message_envelope, message_parse, registered_subjects
from inventory.messages import InventoryReleaseRequest
from orders.messages import OrderCreated

NOW = dt.datetime(2026, 11, 27, 12, 0, tzinfo=dt.UTC)


def created() -> OrderCreated:
    return OrderCreated(order_id="o-1", customer_id="c-1",
                        items=({"productId": "p", "quantity": 2, "unitPrice": "1.50"},),
                        total_amount=Decimal("3.00"), currency="EUR", reservation_ttl_seconds=900)


def test_wire_format_is_camel_case_with_envelope():
    wire = message_envelope(created(), event_id="e-1", occurred_at=NOW)
    assert wire == {
        "eventId": "e-1", "eventType": "orders.created", "occurredAt": NOW.isoformat(), "schemaVersion": 1,
        "orderId": "o-1", "customerId": "c-1", "items": [{"productId": "p", "quantity": 2, "unitPrice": "1.50"}],
        "totalAmount": "3.00", "currency": "EUR", "reservationTtlSeconds": 900,
    }


def test_round_trip_through_json():
    wire = json.loads(json.dumps(message_envelope(created(), event_id="e-1", occurred_at=NOW)))
    assert message_parse("orders.created", wire) == created()


def test_optional_fields_may_be_missing_or_null():
    message = message_parse("inventory.release_request", {"orderId": "o", "reason": "r", "reservationId": None})
    assert message == InventoryReleaseRequest(order_id="o", reason="r", reservation_id=None)


def test_unknown_extra_fields_are_ignored():
    wire = message_envelope(created(), event_id="e-1", occurred_at=NOW) | {"somethingNew": 1}
    assert message_parse("orders.created", wire) == created()


@pytest.mark.parametrize("subject, payload, why", [
    ("orders.created", [1, 2], "not a JSON object"),
    ("orders.nope", {}, "unknown message type"),
    ("orders.created", {"schemaVersion": 2}, "unsupported schemaVersion"),
    ("orders.created", {"eventType": "orders.failed"}, "does not match"),
    ("orders.cancelled", {"orderId": "o", "timestamp": NOW.isoformat()}, "missing field 'reason'"),
    ("orders.cancelled", {"orderId": "o", "reason": "r", "timestamp": "yesterday"}, "timestamp"),
    ("orders.cancelled", {"orderId": "o", "reason": "r", "timestamp": "2026-11-27T12:00:00"}, "timezone"),
    ("payments.succeeded", {"orderId": "o", "paymentId": "p", "amount": "lots", "stripePaymentIntentId": "pi"},
     "amount"),
    ("orders.created", {"orderId": 5, "customerId": "c", "items": [], "totalAmount": "1"}, "orderId"),
    ("orders.created", {"orderId": "o", "customerId": "c", "items": "x", "totalAmount": "1"}, "items"),
])
def test_malformed_messages_are_rejected_with_a_reason(subject, payload, why):
    with pytest.raises(MalformedMessageError, match=why):
        message_parse(subject, payload)


def test_every_contract_subject_is_registered():
    assert set(registered_subjects()) >= {
        "orders.created", "orders.confirmed", "orders.cancelled", "orders.failed", "inventory.reserved",
        "inventory.out_of_stock", "inventory.released", "inventory.release_request",
        "payments.process_request", "payments.succeeded", "payments.failed",
    }
