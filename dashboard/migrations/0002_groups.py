"""Create the dashboard's permissions and the groups viewer / approver / admin."""

from __future__ import annotations

from typing import Any

from django.db import migrations

PERMISSIONS = [
    ("view_dashboard", "Can view the operator dashboard"),
    ("resolve_gate", "Can approve or reject gates"),
    ("cancel_run", "Can cancel runs"),
    ("recover_run", "Can request recovery of runs"),
    ("redeliver_webhook", "Can redeliver dead-lettered webhooks"),
    ("manage_api_keys", "Can create and revoke API keys"),
]
GROUPS = {
    "viewer": ["view_dashboard"],
    "approver": ["view_dashboard", "resolve_gate"],
    "admin": [codename for codename, _ in PERMISSIONS],
}


def create_groups(apps: Any, schema_editor: Any) -> None:
    # Permissions are normally created after migrate (post_migrate); create them now so the
    # groups can reference them on a fresh database.
    ContentType = apps.get_model("contenttypes", "ContentType")
    Permission = apps.get_model("auth", "Permission")
    Group = apps.get_model("auth", "Group")
    ct, _ = ContentType.objects.get_or_create(app_label="dashboard", model="dashboardpermissions")
    perms = {}
    for codename, name in PERMISSIONS:
        perms[codename], _ = Permission.objects.get_or_create(content_type=ct, codename=codename, defaults={"name": name})
    for group_name, codenames in GROUPS.items():
        group, _ = Group.objects.get_or_create(name=group_name)
        group.permissions.add(*(perms[c] for c in codenames))


def remove_groups(apps: Any, schema_editor: Any) -> None:
    apps.get_model("auth", "Group").objects.filter(name__in=list(GROUPS)).delete()


class Migration(migrations.Migration):
    dependencies = [
        ("dashboard", "0001_initial"),
        ("auth", "0012_alter_user_first_name_max_length"),
        ("contenttypes", "0002_remove_content_type_name"),
    ]

    operations = [migrations.RunPython(create_groups, remove_groups)]
