"""Fewer index writes per step: every first step begin inserts a tb_step row and a tb_event row.

- ``tb_step.run_id`` and ``tb_event.run_id`` lose their own indexes (and their
  ``varchar_pattern_ops`` twins): the unique (run_id, name) and (run_id, seq) indexes lead with
  run_id and serve every lookup by run, including the cascade on run deletion.
- ``tb_step.id`` loses the ``varchar_pattern_ops`` twin Django creates for a varchar primary key:
  nothing runs LIKE on step ids (the primary key serves equality). tb_run keeps its twin: the
  dashboard searches runs by id prefix.

A first begin now maintains 4 indexes instead of 9.
"""

import django.db.models.deletion
from django.db import migrations, models

DROP_STEP_ID_LIKE = """
DO $$
DECLARE name text;
BEGIN
    FOR name IN SELECT indexname FROM pg_indexes
                WHERE schemaname = current_schema() AND tablename = 'tb_step'
                  AND indexdef LIKE '%(id varchar_pattern_ops)%'
    LOOP
        EXECUTE format('DROP INDEX %I', name);
    END LOOP;
END $$
"""

RECREATE_STEP_ID_LIKE = "CREATE INDEX IF NOT EXISTS tb_step_id_b896cc36_like ON tb_step (id varchar_pattern_ops)"


class Migration(migrations.Migration):
    dependencies = [
        ("tidebase_core", "0007_usage_run_drop_like_index"),
    ]

    operations = [
        migrations.AlterField(
            model_name="event",
            name="run",
            field=models.ForeignKey(
                db_index=False,
                on_delete=django.db.models.deletion.CASCADE,
                related_name="events",
                to="tidebase_core.run",
            ),
        ),
        migrations.AlterField(
            model_name="step",
            name="run",
            field=models.ForeignKey(
                db_index=False,
                on_delete=django.db.models.deletion.CASCADE,
                related_name="steps",
                to="tidebase_core.run",
            ),
        ),
        migrations.RunSQL(sql=[DROP_STEP_ID_LIKE], reverse_sql=[RECREATE_STEP_ID_LIKE]),
    ]
