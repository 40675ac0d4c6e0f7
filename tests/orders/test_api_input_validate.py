"""a4co.api.input_validate (one shared serializer per class) must answer exactly as a fresh
serializer's is_valid(raise_exception=True) does: same data when valid, same errors when not."""
from __future__ import annotations

import concurrent.futures

import pytest
from rest_framework import serializers

from a4co.api import input_validate
from orders.apis import OrdersApi

ITEM = {"productId": "SKU-1", "quantity": 2, "unitPrice": "9.99"}
BODIES = [
    {"customerId": "c1", "items": [ITEM]},
    {"customerId": "c1", "items": [ITEM, {**ITEM, "productId": "SKU-2"}], "currency": "usd", "totalAmount": "39.96",
     "reservationTtlSeconds": 900, "paymentMethod": "pm_card_visa"},
    {},
    [],
    {"customerId": "", "items": []},
    {"customerId": "c1", "items": [ITEM, {"productId": "bad id", "quantity": 0, "unitPrice": "-1"}, "x", {}]},
    {"customerId": "c1", "items": [ITEM], "totalAmount": "1.00"},
    {"customerId": "c1", "items": [{**ITEM, "unitPrice": "9.5"}], "currency": "JPY"},
    {"customerId": "c1", "items": [ITEM], "currency": "XXX", "reservationTtlSeconds": 1},
    {"customerId": "c1", "items": [{**ITEM, "quantity": True}], "paymentMethod": "pm card"},
]


def _fresh(body):
    serializer = OrdersApi.CreateInputSerializer(data=body)
    if serializer.is_valid():
        return "valid", dict(serializer.validated_data)
    return "invalid", serializer.errors


def _shared(body):
    try:
        return "valid", dict(input_validate(OrdersApi.CreateInputSerializer, body))
    except serializers.ValidationError as exc:
        return "invalid", exc.detail


@pytest.mark.parametrize("body", BODIES)
def test_same_answer_as_a_fresh_serializer(body):
    assert _shared(body) == _fresh(body)


def test_valid_and_invalid_bodies_are_both_covered():
    outcomes = {_shared(body)[0] for body in BODIES}
    assert outcomes == {"valid", "invalid"}


def test_shared_instance_answers_threads_independently():
    # The same instance validates concurrently: no answer may leak into another.
    jobs = BODIES * 40
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(_shared, jobs))
    assert answers == [_fresh(body) for body in jobs]
