"""The tamper-evident audit trail (docs/decisions.md, "Audit trail").

- ``tb_audit``: the entries, ``seq`` 1, 2, … with no gaps (assigned from the head, not a sequence,
  so a rolled-back append leaves no hole), each hashed over its content and the previous hash.
- ``tb_audit_head``: one row (id 1), the last entry's seq and hash; appends lock it.
- ``view_audit``: the permission for the dashboard's Audit page, given to the ``admin`` role
  (``dashboard.roles`` does the same where roles are recreated).
"""

from __future__ import annotations

from typing import Any

from django.db import migrations, models


def setup(apps: Any, schema_editor: Any) -> None:
    AuditHead = apps.get_model("tidebase_core", "AuditHead")
    AuditHead.objects.get_or_create(id=1, defaults={"seq": 0, "hash": "0" * 64})
    ContentType = apps.get_model("contenttypes", "ContentType")
    Permission = apps.get_model("auth", "Permission")
    Group = apps.get_model("auth", "Group")
    ct, _ = ContentType.objects.get_or_create(app_label="tidebase_core", model="auditentry")
    perm, _ = Permission.objects.get_or_create(
        content_type=ct, codename="view_audit", defaults={"name": "Can view, export and verify the audit trail"}
    )
    Group.objects.get_or_create(name="admin")[0].permissions.add(perm)


class Migration(migrations.Migration):
    dependencies = [
        ("tidebase_core", "0012_cost_figures"),
        ("dashboard", "0002_groups"),
        ("auth", "0012_alter_user_first_name_max_length"),
    ]

    operations = [
        migrations.CreateModel(
            name="AuditEntry",
            fields=[
                ("seq", models.BigIntegerField(primary_key=True, serialize=False)),
                ("at", models.DateTimeField()),
                ("kind", models.TextField()),
                ("run_id", models.TextField(blank=True, null=True)),
                ("gate_id", models.TextField(blank=True, null=True)),
                ("actor", models.TextField()),
                ("channel", models.TextField()),
                ("policy_version", models.TextField(blank=True, null=True)),
                ("data", models.JSONField(default=dict)),
                ("prev_hash", models.TextField()),
                ("hash", models.TextField()),
            ],
            options={
                "db_table": "tb_audit",
                "permissions": (("view_audit", "Can view, export and verify the audit trail"),),
                "indexes": [models.Index(fields=["at"], name="tb_audit_at")],
            },
        ),
        migrations.CreateModel(
            name="AuditHead",
            fields=[
                ("id", models.SmallIntegerField(primary_key=True, serialize=False)),
                ("seq", models.BigIntegerField()),
                ("hash", models.TextField()),
            ],
            options={"db_table": "tb_audit_head"},
        ),
        migrations.RunPython(setup, migrations.RunPython.noop),
    ]
