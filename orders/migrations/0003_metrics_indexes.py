"""Indexes for the /metrics scrape (infra/metrics.py), in the Order Service's database.

Plain SQL, not Meta.indexes, because one of them is on the saga table (same database, same
service) and neither changes what the models mean. IF [NOT] EXISTS: with every alias on one
database, this migration runs once per alias.
"""
from django.db import migrations


class Migration(migrations.Migration):

    dependencies = [
        ("orders", "0002_dead_letters"),
        ("saga", "0002_compensation_stack"),
    ]

    operations = [
        # order_status_count: an index-only scan of a small (deduplicated) index.
        migrations.RunSQL(
            "CREATE INDEX IF NOT EXISTS orders_status_metrics ON orders_order (status)",
            "DROP INDEX IF EXISTS orders_status_metrics"),
        # saga_duration_seconds and the finished-saga counts: index-only range scans on finished_at.
        migrations.RunSQL(
            "CREATE INDEX IF NOT EXISTS saga_finished_metrics ON saga_sagainstance (finished_at)"
            " INCLUDE (status, started_at) WHERE finished_at IS NOT NULL",
            "DROP INDEX IF EXISTS saga_finished_metrics"),
    ]
