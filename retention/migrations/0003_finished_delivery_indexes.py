"""Indexes the delivery pruner walks: finished (delivered or dead-lettered) outbox rows by
completion time. Partial, so pending rows, the ones the dispatcher works on, are not in them; a
row enters once, when it finishes (an update that already changes the indexed ``status``).

Built CONCURRENTLY (no lock that blocks writers, so not in a transaction)."""

from __future__ import annotations

from django.db import migrations

INDEXES = {
    "tb_delivery_finished_idx": "tb_channel_delivery",
    "tb_recovery_finished_idx": "tb_recovery_attempt",
}


class Migration(migrations.Migration):
    atomic = False

    dependencies = [
        ("retention", "0002_admin_role"),
        ("tidebase_core", "0010_usage_cost_source"),
    ]

    operations = [
        migrations.RunSQL(
            f"CREATE INDEX CONCURRENTLY IF NOT EXISTS {name} ON {table} (completed_at) "
            "WHERE status IN ('delivered', 'failed')",
            f"DROP INDEX CONCURRENTLY IF EXISTS {name}",
        )
        for name, table in INDEXES.items()
    ]
