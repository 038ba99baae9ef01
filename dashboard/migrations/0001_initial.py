from __future__ import annotations

from django.db import migrations, models


class Migration(migrations.Migration):
    initial = True
    dependencies: list[tuple[str, str]] = []

    operations = [
        migrations.CreateModel(
            name="DashboardPermissions",
            fields=[("id", models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name="ID"))],
            options={
                "managed": False,
                "default_permissions": (),
                "permissions": (
                    ("view_dashboard", "Can view the operator dashboard"),
                    ("resolve_gate", "Can approve or reject gates"),
                    ("cancel_run", "Can cancel runs"),
                    ("recover_run", "Can request recovery of runs"),
                    ("redeliver_webhook", "Can redeliver dead-lettered webhooks"),
                    ("manage_api_keys", "Can create and revoke API keys"),
                ),
            },
        ),
    ]
