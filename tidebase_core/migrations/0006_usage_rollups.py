"""Usage rollups for the dashboard's usage page (docs/decisions.md, "Usage rollups").

``tb_usage_daily`` (UTC day x workflow x provider x model) and ``tb_usage_run`` (per-run totals)
are maintained by ``services.usage.usage_record`` in the transaction that inserts each record;
this migration creates them and backfills them from tb_usage with set-based SQL (one GROUP BY per
table; about 40 s at 5M usage records, before the new tables' indexes are built). The backfill holds a SHARE lock on tb_usage so no record
commits between its snapshot and its commit. Records that code older than this migration writes
after it (a rolling deploy) are not in the rollups: run ``manage.py tidebase_usage_rollups
rebuild --since <deploy day>`` once the new code serves every write.

The SQL is frozen here on purpose (the runtime copy is ``services.usage._rebuild_sql``). Reversing
drops both tables.
"""

import django.db.models.deletion
from django.db import migrations, models


BACKFILL = [
    # The backfill reads every usage record: above the default 30 s statement timeout at scale.
    "SET LOCAL statement_timeout = 0",
    "LOCK TABLE tb_usage IN SHARE MODE",
    # HOT updates for the hot rows: an upsert only changes non-indexed columns.
    "ALTER TABLE tb_usage_daily SET (fillfactor = 70)",
    """
    INSERT INTO tb_usage_run (run_id, workflow, first_at, last_at, records, input_tokens, output_tokens,
                              total_tokens, cost_usd)
    SELECT u.run_id, r.workflow_name, min(u.created_at), max(u.created_at), count(*),
           COALESCE(sum(u.input_tokens), 0), COALESCE(sum(u.output_tokens), 0),
           COALESCE(sum(COALESCE(u.total_tokens, COALESCE(u.input_tokens, 0) + COALESCE(u.output_tokens, 0))), 0),
           COALESCE(sum(u.cost_usd), 0)
    FROM tb_usage u JOIN tb_run r ON r.id = u.run_id
    GROUP BY u.run_id, r.workflow_name
    """,
    """
    INSERT INTO tb_usage_daily (day, workflow, provider, model, records, runs, input_tokens, output_tokens,
                                total_tokens, cost_usd)
    SELECT (u.created_at AT TIME ZONE 'UTC')::date, r.workflow_name, u.provider, u.model, count(*),
           count(f.id), COALESCE(sum(u.input_tokens), 0), COALESCE(sum(u.output_tokens), 0),
           COALESCE(sum(COALESCE(u.total_tokens, COALESCE(u.input_tokens, 0) + COALESCE(u.output_tokens, 0))), 0),
           COALESCE(sum(u.cost_usd), 0)
    FROM tb_usage u
    JOIN tb_run r ON r.id = u.run_id
    LEFT JOIN (SELECT DISTINCT ON (run_id) id FROM tb_usage ORDER BY run_id, created_at, id) f ON f.id = u.id
    GROUP BY 1, 2, 3, 4
    """,
    "ANALYZE tb_usage_run",
    "ANALYZE tb_usage_daily",
]


class Migration(migrations.Migration):

    dependencies = [
        ('tidebase_core', '0005_dashboard_indexes'),
    ]

    operations = [
        migrations.CreateModel(
            name='UsageDaily',
            fields=[
                ('id', models.BigAutoField(primary_key=True, serialize=False)),
                ('day', models.DateField()),
                ('workflow', models.TextField()),
                ('provider', models.TextField(blank=True, null=True)),
                ('model', models.TextField(blank=True, null=True)),
                ('records', models.BigIntegerField(default=0)),
                ('runs', models.BigIntegerField(default=0)),
                ('input_tokens', models.BigIntegerField(default=0)),
                ('output_tokens', models.BigIntegerField(default=0)),
                ('total_tokens', models.BigIntegerField(default=0)),
                ('cost_usd', models.DecimalField(decimal_places=10, default=0, max_digits=30)),
            ],
            options={
                'verbose_name': 'daily usage',
                'verbose_name_plural': 'daily usage',
                'db_table': 'tb_usage_daily',
                'constraints': [models.UniqueConstraint(fields=('day', 'workflow', 'provider', 'model'), name='tb_usage_daily_key', nulls_distinct=False)],
            },
        ),
        migrations.CreateModel(
            name='UsageRunTotal',
            fields=[
                ('run', models.OneToOneField(on_delete=django.db.models.deletion.CASCADE, primary_key=True, related_name='usage_total', serialize=False, to='tidebase_core.run')),
                ('workflow', models.TextField()),
                ('first_at', models.DateTimeField()),
                ('last_at', models.DateTimeField()),
                ('records', models.BigIntegerField(default=0)),
                ('input_tokens', models.BigIntegerField(default=0)),
                ('output_tokens', models.BigIntegerField(default=0)),
                ('total_tokens', models.BigIntegerField(default=0)),
                ('cost_usd', models.DecimalField(decimal_places=10, default=0, max_digits=30)),
            ],
            options={
                'verbose_name': 'run usage total',
                'db_table': 'tb_usage_run',
                'indexes': [models.Index(fields=['-cost_usd', 'run'], include=('first_at', 'last_at'), name='tb_usage_run_cost_idx')],
            },
        ),
        migrations.RunSQL(sql=BACKFILL, reverse_sql=migrations.RunSQL.noop),
    ]
