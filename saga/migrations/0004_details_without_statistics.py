"""ANALYZE leaves out the step log's and the audit log's JSON details: no query filters or
sorts on them, and their statistics were most of what each (auto)ANALYZE of the step log
cost, CPU taken from the message path under load (docs/benchmarks.md, "Seventh round").
"""
from django.db import migrations


class Migration(migrations.Migration):

    dependencies = [
        ('saga', '0003_audit_log'),
    ]

    operations = [
        migrations.RunSQL(
            "ALTER TABLE saga_sagastep ALTER COLUMN detail SET STATISTICS 0",
            reverse_sql="ALTER TABLE saga_sagastep ALTER COLUMN detail SET STATISTICS -1",
        ),
        migrations.RunSQL(
            "ALTER TABLE saga_auditentry ALTER COLUMN details SET STATISTICS 0",
            reverse_sql="ALTER TABLE saga_auditentry ALTER COLUMN details SET STATISTICS -1",
        ),
    ]
