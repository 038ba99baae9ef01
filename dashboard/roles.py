"""The dashboard's roles. Migration 0002 creates them on install; ``ensure_roles`` recreates them
(idempotently) where a database lost them, e.g. after a test flush."""

from __future__ import annotations

from django.contrib.auth.models import Group, Permission
from django.contrib.contenttypes.models import ContentType

from dashboard.models import GROUPS, PERMISSIONS


def ensure_roles() -> dict[str, Group]:
    ct, _ = ContentType.objects.get_or_create(app_label="dashboard", model="dashboardpermissions")
    perms = {
        codename: Permission.objects.get_or_create(content_type=ct, codename=codename, defaults={"name": name})[0]
        for codename, name in PERMISSIONS
    }
    groups = {}
    for name, codenames in GROUPS.items():
        group, _ = Group.objects.get_or_create(name=name)
        group.permissions.add(*(perms[c] for c in codenames))
        groups[name] = group
    return groups
