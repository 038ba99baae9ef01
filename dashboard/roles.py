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
    # The Storage page's permission belongs to the retention app (its migration 0002 grants it).
    retention_ct, _ = ContentType.objects.get_or_create(app_label="retention", model="retentionpolicy")
    storage, _ = Permission.objects.get_or_create(
        content_type=retention_ct,
        codename="manage_retention",
        defaults={"name": "Can view storage and edit retention policies"},
    )
    groups["admin"].permissions.add(storage)
    # Changing budgets belongs to tidebase_core (migration 0012 grants it to admin).
    budgets_ct, _ = ContentType.objects.get_or_create(app_label="tidebase_core", model="budgetversion")
    manage_budgets, _ = Permission.objects.get_or_create(
        content_type=budgets_ct, codename="manage_budgets", defaults={"name": "Can change cost budgets"}
    )
    groups["admin"].permissions.add(manage_budgets)
    # The Audit page's permission belongs to tidebase_core (migration 0013 grants it to admin).
    audit_ct, _ = ContentType.objects.get_or_create(app_label="tidebase_core", model="auditentry")
    view_audit, _ = Permission.objects.get_or_create(
        content_type=audit_ct, codename="view_audit", defaults={"name": "Can view, export and verify the audit trail"}
    )
    groups["admin"].permissions.add(view_audit)
    # Editing approval policies belongs to tidebase_core (migration 0014 grants it to admin).
    policies_ct, _ = ContentType.objects.get_or_create(app_label="tidebase_core", model="approvalpolicy")
    manage_policies, _ = Permission.objects.get_or_create(
        content_type=policies_ct, codename="manage_policies", defaults={"name": "Can change approval policies"}
    )
    groups["admin"].permissions.add(manage_policies)
    return groups
