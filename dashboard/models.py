"""The dashboard owns no tables: this unmanaged model only carries its permissions."""

from __future__ import annotations

from django.db import models

PERMISSIONS = [
    ("view_dashboard", "Can view the operator dashboard"),
    ("resolve_gate", "Can approve or reject gates"),
    ("cancel_run", "Can cancel runs"),
    ("recover_run", "Can request recovery of runs"),
    ("redeliver_webhook", "Can redeliver dead-lettered webhooks"),
    ("manage_api_keys", "Can create and revoke API keys"),
]

# Groups created by migration 0002. Superusers have every permission anyway.
GROUPS: dict[str, list[str]] = {
    "viewer": ["view_dashboard"],
    "approver": ["view_dashboard", "resolve_gate"],
    "admin": [codename for codename, _ in PERMISSIONS],
}


class DashboardPermissions(models.Model):
    class Meta:
        managed = False
        default_permissions = ()
        permissions = tuple(PERMISSIONS)

    def __str__(self) -> str:
        return "dashboard permissions"
