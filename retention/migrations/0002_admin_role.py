"""Give the dashboard's ``admin`` role the permission of the Storage page (``dashboard.roles``
does the same where the roles are recreated)."""

from __future__ import annotations

from typing import Any

from django.db import migrations

CODENAME = "manage_retention"
NAME = "Can view storage and edit retention policies"


def grant(apps: Any, schema_editor: Any) -> None:
    # Permissions are normally created after migrate (post_migrate); create this one now so the
    # role can hold it on a fresh database.
    ContentType = apps.get_model("contenttypes", "ContentType")
    Permission = apps.get_model("auth", "Permission")
    Group = apps.get_model("auth", "Group")
    ct, _ = ContentType.objects.get_or_create(app_label="retention", model="retentionpolicy")
    perm, _ = Permission.objects.get_or_create(content_type=ct, codename=CODENAME, defaults={"name": NAME})
    group, _ = Group.objects.get_or_create(name="admin")
    group.permissions.add(perm)


def revoke(apps: Any, schema_editor: Any) -> None:
    Permission = apps.get_model("auth", "Permission")
    Permission.objects.filter(content_type__app_label="retention", codename=CODENAME).delete()


class Migration(migrations.Migration):
    dependencies = [
        ("retention", "0001_initial"),
        ("dashboard", "0002_groups"),
        ("auth", "0012_alter_user_first_name_max_length"),
        ("contenttypes", "0002_remove_content_type_name"),
    ]

    operations = [migrations.RunPython(grant, revoke)]
