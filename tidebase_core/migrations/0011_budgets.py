"""Cost budgets that park a run (docs/decisions.md, "Budgets that park a run").

- ``tb_run.budget_usd`` (the run's own budget) and ``tb_run.budget_allowance_usd`` (an approved
  allowance past the shared budgets): nullable without a default, so adding them is a catalog
  change only, whatever the size of tb_run.
- ``tb_budget_version``: every change of a shared budget (per workflow per UTC day or month, global
  per UTC day), never updated; ``tb_budget_limit``: the current limit of each, read by step begins;
  ``tb_budget_spend``: the spend of a budget with a limit in its current period, added to by every
  usage record (``fillfactor = 70`` so those updates, which change no indexed column, stay HOT).

Nothing is backfilled: no budget exists before this migration, and a limit set later computes its
period's spend from ``tb_usage_daily`` when it is set.
"""

from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("tidebase_core", "0010_usage_cost_source"),
    ]

    operations = [
        migrations.AddField(
            model_name="run",
            name="budget_allowance_usd",
            field=models.DecimalField(
                blank=True,
                decimal_places=10,
                help_text="Approved allowance past the shared (workflow, global) budgets: the run may go on until its own spend reaches this.",
                max_digits=30,
                null=True,
            ),
        ),
        migrations.AddField(
            model_name="run",
            name="budget_usd",
            field=models.DecimalField(
                blank=True,
                decimal_places=10,
                help_text="The run's own budget in USD (NULL: none); raised by approving its budget gate.",
                max_digits=20,
                null=True,
            ),
        ),
        migrations.CreateModel(
            name="BudgetLimit",
            fields=[
                ("id", models.BigAutoField(primary_key=True, serialize=False)),
                (
                    "scope",
                    models.CharField(
                        choices=[
                            ("workflow_day", "per workflow per UTC day"),
                            ("workflow_month", "per workflow per UTC month"),
                            ("global_day", "all workflows per UTC day"),
                        ],
                        max_length=16,
                    ),
                ),
                ("workflow", models.TextField(blank=True, default="")),
                ("limit_usd", models.DecimalField(blank=True, decimal_places=10, max_digits=20, null=True)),
                ("version", models.IntegerField()),
                ("updated_by", models.TextField()),
                ("updated_at", models.DateTimeField(auto_now=True)),
            ],
            options={
                "db_table": "tb_budget_limit",
                "constraints": [models.UniqueConstraint(fields=("scope", "workflow"), name="tb_budget_limit_key")],
            },
        ),
        migrations.CreateModel(
            name="BudgetSpend",
            fields=[
                ("id", models.BigAutoField(primary_key=True, serialize=False)),
                (
                    "scope",
                    models.CharField(
                        choices=[
                            ("workflow_day", "per workflow per UTC day"),
                            ("workflow_month", "per workflow per UTC month"),
                            ("global_day", "all workflows per UTC day"),
                        ],
                        max_length=16,
                    ),
                ),
                ("workflow", models.TextField(blank=True, default="")),
                ("period", models.DateField()),
                ("spent_usd", models.DecimalField(decimal_places=10, default=0, max_digits=30)),
            ],
            options={
                "db_table": "tb_budget_spend",
                "constraints": [
                    models.UniqueConstraint(fields=("scope", "workflow", "period"), name="tb_budget_spend_key")
                ],
            },
        ),
        migrations.CreateModel(
            name="BudgetVersion",
            fields=[
                ("id", models.BigAutoField(primary_key=True, serialize=False)),
                (
                    "scope",
                    models.CharField(
                        choices=[
                            ("workflow_day", "per workflow per UTC day"),
                            ("workflow_month", "per workflow per UTC month"),
                            ("global_day", "all workflows per UTC day"),
                        ],
                        max_length=16,
                    ),
                ),
                ("workflow", models.TextField(blank=True, default="")),
                ("version", models.IntegerField()),
                ("limit_usd", models.DecimalField(blank=True, decimal_places=10, max_digits=20, null=True)),
                ("created_by", models.TextField()),
                ("note", models.TextField(blank=True, default="")),
                ("created_at", models.DateTimeField(auto_now_add=True)),
            ],
            options={
                "db_table": "tb_budget_version",
                "constraints": [
                    models.UniqueConstraint(fields=("scope", "workflow", "version"), name="tb_budget_version_key")
                ],
            },
        ),
        migrations.RunSQL(
            sql="ALTER TABLE tb_budget_spend SET (fillfactor = 70)",
            reverse_sql=migrations.RunSQL.noop,
        ),
    ]
