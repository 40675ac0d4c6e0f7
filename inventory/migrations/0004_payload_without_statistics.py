"""ANALYZE leaves out the outbox's JSON payload: no query filters or sorts on it, and its
statistics were most of what each (auto)ANALYZE of the table cost, CPU taken from
the message path under load (docs/benchmarks.md, "Seventh round").
"""
from django.db import migrations


class Migration(migrations.Migration):

    dependencies = [
        ('inventory', '0003_plain_indexes'),
    ]

    operations = [
        migrations.RunSQL(
            "ALTER TABLE inventory_outbox ALTER COLUMN payload SET STATISTICS 0",
            reverse_sql="ALTER TABLE inventory_outbox ALTER COLUMN payload SET STATISTICS -1",
        ),
    ]
