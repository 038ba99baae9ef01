"""Cost figures (docs/decisions.md, "Cost figures"): ``tb_cost_daily`` and what keeps it current.

- ``tb_step_group(name)``: a step's group for the figures (``model:<agent>``, ``tool:<tool>``,
  ``capability:<agent>:<op>``, else the name up to its first ``:``), so ids and counters in step
  names do not make a row each.
- ``tb_usage_added(...)``: called once per usage record by the usage-record statement (and by
  ``usage_rollup_add``): adds the record's cost to the spend of the budgets that have a limit and to
  its step group's row. A function so the statement stays short enough for psycopg to cache its
  parsing (under 4096 characters); its plans are cached per session like a prepared statement's.
- The trigger on tb_run (``tb_run_cost_figures``), on the two changes that matter, whatever path
  makes them (run routes, claims, the reconciler, cancel, a rejected budget): a run begun again
  (``attempt`` past 1) adds the recorded cost of its completed model steps to ``replay_saved``; a
  run that fails or is cancelled adds its recorded cost to ``failed``/``cancelled``, and a run begun
  again after that takes it back out.
- The trigger on tb_gate (``tb_gate_cost_figures``): a human decision of an approval gate (not a
  budget gate) counts one ``approval`` with its run's recorded cost at that moment.
- ``tb_usage_run.saved_usd``: added with a constant default (a catalog change, no rewrite).
- ``manage_budgets``: the permission to change budgets in the dashboard, given to the ``admin``
  role (``dashboard.roles`` does the same where roles are recreated).
"""

from __future__ import annotations

from typing import Any

from django.db import migrations, models


FUNCTIONS = r"""
CREATE OR REPLACE FUNCTION tb_step_group(name text) RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
  SELECT CASE
    WHEN name LIKE 'model:%' THEN 'model:' || split_part(name, ':', 2)
    WHEN name LIKE 'tool:%' THEN 'tool:' || split_part(split_part(name, ':', 2), '#', 1)
    WHEN name LIKE 'capability:%' THEN 'capability:' || split_part(name, ':', 2) || ':' || split_part(name, ':', 3)
    ELSE split_part(name, ':', 1)
  END
$$;

CREATE OR REPLACE FUNCTION tb_usage_group(step_name text, kind text, label text, provider text) RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
  SELECT CASE
    WHEN step_name IS NOT NULL THEN tb_step_group(step_name)
    WHEN kind = 'tool' THEN 'tool:' || COALESCE(NULLIF(label, ''), provider, 'unnamed')
    ELSE '(no step)'
  END
$$;

CREATE OR REPLACE FUNCTION tb_usage_added(
  p_workflow text, p_step text, p_kind text, p_label text, p_provider text, p_day date, p_cost numeric
) RETURNS integer LANGUAGE plpgsql AS $$
DECLARE
  v_step text;
BEGIN
  IF p_cost IS NULL OR p_cost <= 0 THEN
    RETURN 0;
  END IF;
  INSERT INTO tb_budget_spend AS s (scope, workflow, period, spent_usd)
  SELECT l.scope, l.workflow,
         CASE WHEN l.scope = 'workflow_month' THEN date_trunc('month', p_day::timestamp)::date ELSE p_day END, p_cost
  FROM tb_budget_limit l
  WHERE l.limit_usd IS NOT NULL AND l.workflow IN (p_workflow, '')
  ORDER BY 1, 2
  ON CONFLICT (scope, workflow, period) DO UPDATE SET spent_usd = s.spent_usd + EXCLUDED.spent_usd;
  IF p_step IS NOT NULL THEN
    SELECT name INTO v_step FROM tb_step WHERE id = p_step;
  END IF;
  INSERT INTO tb_cost_daily AS c (kind, day, workflow, name, records, cost_usd)
  VALUES ('step', p_day, p_workflow, tb_usage_group(v_step, p_kind, p_label, p_provider), 1, p_cost)
  ON CONFLICT (kind, day, workflow, name) DO UPDATE SET records = c.records + 1, cost_usd = c.cost_usd + EXCLUDED.cost_usd;
  RETURN 1;
END
$$;

CREATE OR REPLACE FUNCTION tb_cost_add(p_kind text, p_day date, p_workflow text, p_records bigint, p_cost numeric)
RETURNS void LANGUAGE sql AS $$
  INSERT INTO tb_cost_daily AS c (kind, day, workflow, name, records, cost_usd)
  VALUES (p_kind, p_day, p_workflow, '', p_records, p_cost)
  ON CONFLICT (kind, day, workflow, name) DO UPDATE SET records = c.records + EXCLUDED.records,
    cost_usd = c.cost_usd + EXCLUDED.cost_usd
$$;

CREATE OR REPLACE FUNCTION tb_run_cost_figures() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
  v_today date := (now() AT TIME ZONE 'UTC')::date;
  v_saved numeric;
  v_total record;
BEGIN
  IF NEW.attempt > OLD.attempt AND NEW.attempt > 1 THEN
    SELECT COALESCE(sum(u.cost_usd), 0) INTO v_saved
    FROM tb_usage u JOIN tb_step s ON s.id = u.step_id
    WHERE u.run_id = NEW.id AND u.kind = 'llm' AND u.cost_usd > 0 AND s.status = 'completed';
    IF v_saved > 0 THEN
      UPDATE tb_usage_run SET saved_usd = saved_usd + v_saved WHERE run_id = NEW.id;
      PERFORM tb_cost_add('replay_saved', v_today, NEW.workflow_name, 1, v_saved);
    END IF;
  END IF;
  IF NEW.status IS DISTINCT FROM OLD.status AND OLD.status IN ('failed', 'cancelled') THEN
    SELECT outcome, outcome_day, outcome_cost INTO v_total FROM tb_usage_run WHERE run_id = NEW.id FOR UPDATE;
    IF v_total.outcome IS NOT NULL THEN
      PERFORM tb_cost_add(v_total.outcome, v_total.outcome_day, NEW.workflow_name, -1, -v_total.outcome_cost);
      UPDATE tb_usage_run SET outcome = NULL, outcome_day = NULL, outcome_cost = NULL WHERE run_id = NEW.id;
    END IF;
  END IF;
  IF NEW.status IS DISTINCT FROM OLD.status AND NEW.status IN ('failed', 'cancelled') THEN
    UPDATE tb_usage_run SET outcome = NEW.status, outcome_day = v_today, outcome_cost = cost_usd
    WHERE run_id = NEW.id AND cost_usd > 0
    RETURNING cost_usd INTO v_saved;
    IF FOUND THEN
      PERFORM tb_cost_add(NEW.status, v_today, NEW.workflow_name, 1, v_saved);
    END IF;
  END IF;
  RETURN NULL;
END
$$;

CREATE TRIGGER tb_run_cost_figures AFTER UPDATE OF status, attempt ON tb_run
FOR EACH ROW
WHEN ((NEW.attempt > OLD.attempt AND NEW.attempt > 1)
      OR (NEW.status IS DISTINCT FROM OLD.status
          AND (NEW.status IN ('failed', 'cancelled') OR OLD.status IN ('failed', 'cancelled'))))
EXECUTE FUNCTION tb_run_cost_figures();

CREATE OR REPLACE FUNCTION tb_gate_cost_figures() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  PERFORM tb_cost_add('approval', (now() AT TIME ZONE 'UTC')::date,
                      (SELECT workflow_name FROM tb_run WHERE id = NEW.run_id), 1,
                      COALESCE((SELECT cost_usd FROM tb_usage_run WHERE run_id = NEW.run_id), 0));
  RETURN NULL;
END
$$;

CREATE TRIGGER tb_gate_cost_figures AFTER UPDATE OF status ON tb_gate
FOR EACH ROW
WHEN (OLD.status = 'pending' AND NEW.status IN ('approved', 'rejected') AND NEW.name NOT LIKE 'budget:%')
EXECUTE FUNCTION tb_gate_cost_figures();

ALTER TABLE tb_cost_daily SET (fillfactor = 70);
"""

DROP = r"""
DROP TRIGGER IF EXISTS tb_gate_cost_figures ON tb_gate;
DROP TRIGGER IF EXISTS tb_run_cost_figures ON tb_run;
DROP FUNCTION IF EXISTS tb_gate_cost_figures();
DROP FUNCTION IF EXISTS tb_run_cost_figures();
DROP FUNCTION IF EXISTS tb_cost_add(text, date, text, bigint, numeric);
DROP FUNCTION IF EXISTS tb_usage_added(text, text, text, text, text, date, numeric);
DROP FUNCTION IF EXISTS tb_usage_group(text, text, text, text);
DROP FUNCTION IF EXISTS tb_step_group(text);
"""


def grant(apps: Any, schema_editor: Any) -> None:
    ContentType = apps.get_model("contenttypes", "ContentType")
    Permission = apps.get_model("auth", "Permission")
    Group = apps.get_model("auth", "Group")
    ct, _ = ContentType.objects.get_or_create(app_label="tidebase_core", model="budgetversion")
    perm, _ = Permission.objects.get_or_create(
        content_type=ct, codename="manage_budgets", defaults={"name": "Can change cost budgets"}
    )
    Group.objects.get_or_create(name="admin")[0].permissions.add(perm)


class Migration(migrations.Migration):

    dependencies = [
        ('tidebase_core', '0011_budgets'),
        ('dashboard', '0002_groups'),
        ('auth', '0012_alter_user_first_name_max_length'),
        ('contenttypes', '0002_remove_content_type_name'),
    ]

    operations = [
        migrations.AlterModelOptions(
            name='budgetversion',
            options={'permissions': (('manage_budgets', 'Can change cost budgets'),)},
        ),
        migrations.AddField(
            model_name='usageruntotal',
            name='outcome',
            field=models.CharField(blank=True, max_length=16, null=True),
        ),
        migrations.AddField(
            model_name='usageruntotal',
            name='outcome_cost',
            field=models.DecimalField(blank=True, decimal_places=10, max_digits=30, null=True),
        ),
        migrations.AddField(
            model_name='usageruntotal',
            name='outcome_day',
            field=models.DateField(blank=True, null=True),
        ),
        migrations.AddField(
            model_name='usageruntotal',
            name='saved_usd',
            field=models.DecimalField(db_default=0, decimal_places=10, max_digits=30),
        ),
        migrations.CreateModel(
            name='CostDaily',
            fields=[
                ('id', models.BigAutoField(primary_key=True, serialize=False)),
                ('kind', models.CharField(max_length=16)),
                ('day', models.DateField()),
                ('workflow', models.TextField()),
                ('name', models.TextField(blank=True, default='')),
                ('records', models.BigIntegerField(default=0)),
                ('cost_usd', models.DecimalField(decimal_places=10, default=0, max_digits=30)),
            ],
            options={
                'verbose_name': 'daily cost figure',
                'db_table': 'tb_cost_daily',
                'constraints': [models.UniqueConstraint(fields=('kind', 'day', 'workflow', 'name'), name='tb_cost_daily_key')],
            },
        ),
        migrations.RunSQL(sql=FUNCTIONS, reverse_sql=DROP),
        migrations.RunPython(grant, migrations.RunPython.noop),
    ]
