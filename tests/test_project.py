"""Project-level promises: migrations committed, contradictory timeouts refused, old NATS refused."""
from __future__ import annotations

import io
import os
import subprocess
import sys

import pytest
from django.core.exceptions import ImproperlyConfigured
from django.core.management import call_command

from infra.nats import NatsServerTooOldError, server_version_check
from saga.checks import timeouts_validate


@pytest.mark.django_db(databases=["default", "orders", "inventory", "payments"])
def test_migrations_are_committed():
    out = io.StringIO()
    call_command("makemigrations", "--check", "--dry-run", stdout=out)
    assert "No changes detected" in out.getvalue()


@pytest.mark.parametrize("ttl, payment, saga", [(120, 120, 300), (60, 120, 300), (900, 0, 300), (900, 120, 0)])
def test_contradictory_timeouts_are_refused(ttl, payment, saga):
    with pytest.raises(ImproperlyConfigured):
        timeouts_validate(reservation_ttl=ttl, payment_timeout=payment, saga_timeout=saga)


def test_sensible_timeouts_are_accepted():
    timeouts_validate(reservation_ttl=900, payment_timeout=120, saga_timeout=300)


def test_the_processes_refuse_to_start_when_the_ttl_is_not_longer_than_the_payment_timeout():
    env = {**os.environ, "RESERVATION_TTL_SECONDS": "60", "PAYMENT_TIMEOUT_SECONDS": "120"}
    result = subprocess.run([sys.executable, "manage.py", "check"], env=env, capture_output=True, text=True,
                            timeout=60)
    assert result.returncode != 0
    assert "RESERVATION_TTL_SECONDS (60) must be longer than PAYMENT_TIMEOUT_SECONDS (120)" in result.stderr


@pytest.mark.parametrize("version", [(2, 9, 10), (2, 2, 0), (1, 4, 1)])
def test_nats_older_than_2_10_is_refused_with_a_clear_message(version):
    with pytest.raises(NatsServerTooOldError, match="need NATS >= 2.10"):
        server_version_check(version)


@pytest.mark.parametrize("version", [(2, 10, 0), (2, 15, 1), (3, 0, 0)])
def test_current_nats_is_accepted(version):
    server_version_check(version)


@pytest.mark.django_db(databases=["orders", "inventory", "payments"])
def test_analyze_leaves_out_the_json_nobody_queries_by():
    # Their statistics were most of what autovacuum's ANALYZE of these tables cost (the
    # migrations *_without_statistics); every other column keeps the default target.
    from django.db import connections

    targets = {}
    for alias in ("orders", "inventory", "payments"):
        with connections[alias].cursor() as cursor:
            cursor.execute(
                "SELECT c.relname || '.' || a.attname, a.attstattarget FROM pg_attribute a"
                " JOIN pg_class c ON c.oid = a.attrelid WHERE a.attnum > 0 AND NOT a.attisdropped"
                " AND c.relname IN ('orders_outbox', 'inventory_outbox', 'payments_outbox', 'saga_sagastep',"
                " 'saga_auditentry')")
            targets.update(cursor.fetchall())
    zero = {column for column, target in targets.items() if target == 0}
    assert zero == {"orders_outbox.payload", "inventory_outbox.payload", "payments_outbox.payload",
                    "saga_sagastep.detail", "saga_auditentry.details"}
