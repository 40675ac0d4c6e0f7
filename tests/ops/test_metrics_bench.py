"""`manage.py metrics_bench` (a benchmark, not a timed test): it inserts, measures and cleans up."""
from __future__ import annotations

import io
import re

import pytest
from django.core.management import CommandError, call_command

from inventory.models import Reservation
from orders.models import Order
from orders.models import OutboxMessage as OrdersOutbox
from payments.models import Payment
from saga.models import SagaInstance
from tests.conftest import ALL_DATABASES

pytestmark = pytest.mark.django_db(databases=ALL_DATABASES, transaction=True)


def test_the_bench_inserts_measures_and_cleans_up(settings):
    settings.DEBUG = True
    Order.objects.create(owner_id=1, customer_id="a-real-customer", total_amount=1, reservation_ttl_seconds=900)
    out = io.StringIO()
    call_command("metrics_bench", orders=300, repeat=3, stdout=out)
    text = out.getvalue()
    assert "inserted 300 orders" in text
    assert "orders in the database: 301 (CONFIRMED 255)" in text  # 85 in every 100, plus the real one
    assert re.search(r"x3 after it: median [\d.]+ ms, min [\d.]+ ms, max [\d.]+ ms", text)
    assert re.search(r"db:orders: median [\d.]+ ms", text)
    assert list(Order.objects.values_list("customer_id", flat=True)) == ["a-real-customer"]
    assert not SagaInstance.objects.exists() and not Payment.objects.exists()
    assert not Reservation.objects.exists() and not OrdersOutbox.objects.exists()


def test_the_bench_refuses_a_database_without_debug_unless_forced(settings):
    settings.DEBUG = False
    with pytest.raises(CommandError, match="--force"):
        call_command("metrics_bench", orders=10)
    call_command("metrics_bench", orders=10, repeat=1, force=True, stdout=io.StringIO())
    assert not Order.objects.exists()
