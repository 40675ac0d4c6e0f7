"""Index for the /metrics scrape (infra/metrics.py): payments_processed_total counts payments
by status with an index-only scan of this small (deduplicated) index.

Plain SQL, not Meta.indexes: it changes nothing the model means. IF [NOT] EXISTS: with every
alias on one database, this migration runs once per alias.
"""
from django.db import migrations


class Migration(migrations.Migration):

    dependencies = [
        ("payments", "0005_payment_refund_permission"),
    ]

    operations = [
        migrations.RunSQL(
            "CREATE INDEX IF NOT EXISTS payments_status_metrics ON payments_payment (status)",
            "DROP INDEX IF EXISTS payments_status_metrics"),
    ]
