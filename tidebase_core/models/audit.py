"""The tamper-evident audit trail (docs/decisions.md, "Audit trail")."""

from __future__ import annotations

from django.db import models


class AuditEntry(models.Model):
    """One entry of the audit trail. ``hash`` is sha256 over the entry's canonical JSON, which
    includes ``prev_hash`` (the previous entry's hash): changing, removing or reordering an entry
    breaks the chain from that entry on. Appended only by ``tidebase_core.services.audit``."""

    seq = models.BigIntegerField(primary_key=True)
    at = models.DateTimeField()
    kind = models.TextField()
    run_id = models.TextField(null=True, blank=True)
    gate_id = models.TextField(null=True, blank=True)
    actor = models.TextField()
    channel = models.TextField()
    policy_version = models.TextField(null=True, blank=True)
    data = models.JSONField(default=dict)
    prev_hash = models.TextField()
    hash = models.TextField()

    class Meta:
        db_table = "tb_audit"
        permissions = (("view_audit", "Can view, export and verify the audit trail"),)
        indexes = [models.Index(fields=["at"], name="tb_audit_at")]

    def __str__(self) -> str:
        return f"#{self.seq} {self.kind} by {self.actor} via {self.channel}"


class AuditHead(models.Model):
    """The chain head, one row (id 1): the last entry's seq and hash. Appends lock it (``SELECT
    ... FOR UPDATE``), so they serialize and never chain to the same previous entry; verification
    compares it with the last entry, so removing the newest entries is detected too."""

    id = models.SmallIntegerField(primary_key=True)
    seq = models.BigIntegerField()
    hash = models.TextField()

    class Meta:
        db_table = "tb_audit_head"

    def __str__(self) -> str:
        return f"audit head #{self.seq}"
