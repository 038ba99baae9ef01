"""The delivery attempts log. The outbox rows themselves (``ChannelDelivery``, ``RecoveryAttempt``,
``Notification``) belong to ``tidebase_core``; this app adds one row per attempt, keyed by text
ids (``kind`` + ``delivery_id``) rather than foreign keys, so core rows can be deleted without
touching the log and the log never constrains core migrations."""

from __future__ import annotations

from django.db import models


class DeliveryKind(models.TextChoices):
    CHANNEL = "channel"
    RECOVERY = "recovery"
    NOTIFICATION = "notification"


class DeliveryAttempt(models.Model):
    """One attempt of one outbox row: an HTTP request, or an email handed to the SMTP server.
    Created when the attempt is claimed (before any network I/O), completed with its outcome
    afterwards; an attempt whose worker died stays open until the next claim marks it
    ``interrupted`` (``error``) at ``interrupted_at``. The mark is kept if the attempt was only
    slow and reports late: its outcome (status, latency, response, real ``finished_at``) is
    recorded next to the mark, never instead of it."""

    kind = models.CharField(max_length=16, choices=DeliveryKind.choices)
    delivery_id = models.CharField(max_length=40)
    number = models.IntegerField()
    trigger = models.CharField(max_length=80, default="dispatch")
    url = models.TextField()
    started_at = models.DateTimeField()
    finished_at = models.DateTimeField(null=True, blank=True)
    interrupted_at = models.DateTimeField(null=True, blank=True)
    latency_ms = models.IntegerField(null=True, blank=True)
    http_status = models.IntegerField(null=True, blank=True)
    error = models.TextField(null=True, blank=True)
    response_excerpt = models.TextField(null=True, blank=True)
    worker = models.CharField(max_length=120, blank=True, default="")

    class Meta:
        db_table = "tb_delivery_attempt"
        ordering = ["kind", "delivery_id", "number"]
        constraints = [
            models.UniqueConstraint(fields=["kind", "delivery_id", "number"], name="tb_delivery_attempt_uniq"),
        ]

    def __str__(self) -> str:
        return f"{self.kind} {self.delivery_id} #{self.number}"

    @property
    def succeeded(self) -> bool:
        return self.http_status is not None and 200 <= self.http_status < 300


class ProcessKind(models.TextChoices):
    WORKER = "worker"
    BEAT = "beat"


class ProcessHeartbeat(models.Model):
    """One row per running worker or beat process (``webhooks.heartbeat``), upserted every
    ``TIDEBASE_HEARTBEAT_S`` with the database clock. ``stopped_at`` is set by a clean shutdown;
    a process that died just stops beating. Rows not seen for ``TIDEBASE_HEARTBEAT_KEEP_S`` are
    pruned by the survivors."""

    id = models.CharField(primary_key=True, max_length=64)
    kind = models.CharField(max_length=16, choices=ProcessKind.choices)
    hostname = models.CharField(max_length=255)
    pid = models.IntegerField()
    started_at = models.DateTimeField()
    last_seen = models.DateTimeField()
    stopped_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        db_table = "tb_process_heartbeat"
        indexes = [models.Index(fields=["kind", "-last_seen"], name="tb_heartbeat_kind_seen_idx")]

    def __str__(self) -> str:
        return f"{self.kind} {self.hostname}:{self.pid}"


class OutboxTrace(models.Model):
    """The W3C trace context (``traceparent``, ``tracestate``) of the request that wrote an
    outbox row, kept only while tracing is on (``tidebase_core.tracing``): written in the same
    transaction as the row, read by each delivery attempt so it continues that trace, deleted
    once the delivery is final. Keyed like ``DeliveryAttempt`` (``kind`` + ``delivery_id``)."""

    kind = models.CharField(max_length=16, choices=DeliveryKind.choices)
    delivery_id = models.CharField(max_length=40)
    traceparent = models.CharField(max_length=55)
    tracestate = models.TextField(null=True, blank=True)
    created_at = models.DateTimeField()

    class Meta:
        db_table = "tb_outbox_trace"
        constraints = [
            models.UniqueConstraint(fields=["kind", "delivery_id"], name="tb_outbox_trace_uniq"),
        ]

    def __str__(self) -> str:
        return f"{self.kind} {self.delivery_id} {self.traceparent}"
