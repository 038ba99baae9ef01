"""Indexes the operator dashboard needs to stay on index scans at 1M runs / 5M usage records
(checked by scripts/dashboard_scale.py and tests/dashboard/test_scale_plans.py).

Plain SQL, built CONCURRENTLY (no write lock on live tables), so the migration is not atomic.
They are deliberately not declared in the models' ``Meta.indexes``: Django cannot express
``INCLUDE`` with ``DESC NULLS LAST`` keys portably here, and keeping them out of the migration
state means ``makemigrations --check`` stays clean.

* ``tb_gate_decided_idx``: the inbox's "recent decisions" (``status <> 'pending'`` ordered by
  ``resolved_at DESC NULLS LAST, id DESC``) without sorting every decided gate.

Considered and left out (measured at 1M runs / 5M usage records): a covering
``tb_usage (created_at) INCLUDE (run_id, provider, model, cost_usd, *_tokens)`` (+600 MB, a wider
write on every usage record; index-only over 30 days was 1.7x faster than the existing range scan
of ``tb_usage_created_idx`` on the append-ordered heap, and the planner preferred the latter
anyway) and ``tb_run (id) INCLUDE (workflow_name)`` (saves one heap fetch per probe only).
"""

from django.db import migrations

INDEXES = {
    "tb_gate_decided_idx": ("ON tb_gate (resolved_at DESC NULLS LAST, id DESC) WHERE status <> 'pending'"),
}


class Migration(migrations.Migration):
    atomic = False

    dependencies = [
        ("tidebase_core", "0004_queues_schedules"),
    ]

    operations = [
        migrations.RunSQL(
            sql=f"CREATE INDEX CONCURRENTLY IF NOT EXISTS {name} {definition}",
            reverse_sql=f"DROP INDEX CONCURRENTLY IF EXISTS {name}",
        )
        for name, definition in INDEXES.items()
    ]
