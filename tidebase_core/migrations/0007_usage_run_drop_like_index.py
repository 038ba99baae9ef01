"""Drop the ``varchar_pattern_ops`` twin Django creates for tb_usage_run's varchar primary key.

Nothing runs LIKE on ``tb_usage_run.run_id``, and every usage record updates its run's row there
(a non-HOT update: the cost is indexed), so the twin is one more index write per usage record for
nothing. It is created from the deferred SQL at the end of 0006, hence this separate migration.
Not in the migration state (Django never declares these indexes), so ``makemigrations`` stays
clean; the reverse recreates it.
"""

from django.db import migrations

DROP = """
DO $$
DECLARE name text;
BEGIN
    FOR name IN SELECT indexname FROM pg_indexes
                WHERE schemaname = current_schema() AND tablename = 'tb_usage_run'
                  AND indexdef LIKE '%varchar_pattern_ops%'
    LOOP
        EXECUTE format('DROP INDEX %I', name);
    END LOOP;
END $$
"""

RECREATE = (
    "CREATE INDEX IF NOT EXISTS tb_usage_run_run_id_930bcaea_like ON tb_usage_run (run_id varchar_pattern_ops)"
)


class Migration(migrations.Migration):
    dependencies = [
        ("tidebase_core", "0006_usage_rollups"),
    ]

    operations = [
        migrations.RunSQL(sql=[DROP], reverse_sql=[RECREATE]),
    ]
