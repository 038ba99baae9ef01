from __future__ import annotations

from typing import Any

from django.conf import settings
from django.db.models import QuerySet

from tidebase_core import wire
from tidebase_core.db import EVENT_JSON, STEP_JSON, Row, fetch_prepared, fetch_rows
from tidebase_core.exceptions import RunNotFound
from tidebase_core.models import Run, StateVersion


def run_list(*, limit: int = 100) -> QuerySet[Run]:
    """The newest runs first (§6.3; the official client's tests read ``runs[0]``)."""
    return Run.objects.order_by("-created_at", "-id")[:limit]


def step_list(*, run_id: str, status: str | None = None) -> list[Row]:
    if status:
        sql, params = (
            "SELECT * FROM tb_step WHERE run_id = %s AND status = %s ORDER BY created_at, id",
            [run_id, status],
        )
    else:
        sql, params = "SELECT * FROM tb_step WHERE run_id = %s ORDER BY created_at, id", [run_id]
    return fetch_rows(sql, params, STEP_JSON)


def events_after(*, run_id: str, after: int, limit: int = 500) -> list[Row]:
    return fetch_rows(
        "SELECT * FROM tb_event WHERE run_id = %s AND seq > %s ORDER BY seq LIMIT %s",
        [run_id, after, limit],
        EVENT_JSON,
    )


def state_versions(*, run_id: str, stream: str | None = None, labeled: bool = False) -> QuerySet[StateVersion]:
    qs = StateVersion.objects.filter(run_id=run_id)
    if stream is not None:
        qs = qs.filter(stream__name=stream)
    if labeled:
        qs = qs.filter(label__isnull=False)
    return qs.order_by("stream__name", "version")


def snapshots(*, run_id: str) -> QuerySet[StateVersion]:
    return StateVersion.objects.filter(run_id=run_id, label__isnull=False).order_by("-created_at", "-version")


# --- the wire shapes in SQL ---------------------------------------------------------------------
# Run detail and the run routes' channel payloads are built by Postgres as JSON text, so a detail
# is ONE statement (one snapshot, one round trip, no ORM) and its stored JSON is never decoded
# and re-encoded in Python. Each builder yields the keys and values of its ``wire.*_out``
# twin; tests/core/test_run_sql.py holds them equal, field by field.


def ts_sql(expr: str) -> str:
    """``wire.ts`` in SQL: UTC, milliseconds truncated, ``Z``."""
    return f"""to_char({expr} AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"')"""


def num_sql(expr: str) -> str:
    """``wire.num`` in SQL: a numeric without trailing zeros (``2``, not ``2.0000000000``)."""
    return f"trim_scale({expr})"


def _obj(pairs: list[tuple[str, str]]) -> str:
    return "json_build_object(" + ", ".join(f"'{key}', {value}" for key, value in pairs) + ")"


def _agg(item: str, source: str, order: str) -> str:
    return f"(SELECT COALESCE(json_agg({item} ORDER BY {order}), '[]'::json) {source})"


def run_json(a: str) -> str:
    """``wire.run_out`` of the ``tb_run`` row ``a`` (table column names: ``queue_name``)."""
    return _obj(
        [
            ("id", f"{a}.id"),
            ("workflowName", f"{a}.workflow_name"),
            ("input", f"{a}.input"),
            ("metadata", f"{a}.metadata"),
            ("status", f"{a}.status"),
            ("result", f"{a}.result"),
            ("error", f"{a}.error"),
            ("recoveryWebhook", f"{a}.recovery_webhook"),
            ("leaseOwner", f"{a}.lease_owner"),
            ("leaseExpiresAt", ts_sql(f"{a}.lease_expires_at")),
            ("attempt", f"{a}.attempt"),
            ("queue", f"{a}.queue_name"),
            ("dedupeKey", f"{a}.dedupe_key"),
            ("priority", f"{a}.priority"),
            ("runAt", ts_sql(f"{a}.run_at")),
            ("maxAttempts", f"{a}.max_attempts"),
            ("deadlineAt", ts_sql(f"{a}.deadline_at")),
            ("cancelRequestedAt", ts_sql(f"{a}.cancel_requested_at")),
            ("cancelledAt", ts_sql(f"{a}.cancelled_at")),
            ("cancelReason", f"{a}.cancel_reason"),
            ("cancelActor", f"{a}.cancel_actor"),
            ("failureClass", f"{a}.failure_class"),
            ("createdAt", ts_sql(f"{a}.created_at")),
            ("updatedAt", ts_sql(f"{a}.updated_at")),
            ("completedAt", ts_sql(f"{a}.completed_at")),
            ("budgetUsd", num_sql(f"{a}.budget_usd")),
        ]
    )


def step_json(a: str) -> str:
    return _obj(
        [
            ("id", f"{a}.id"),
            ("runId", f"{a}.run_id"),
            ("name", f"{a}.name"),
            ("inputHash", f"{a}.input_hash"),
            ("input", f"{a}.input"),
            ("options", f"{a}.options"),
            ("resumeContract", f"{a}.resume_contract"),
            ("status", f"{a}.status"),
            ("output", f"{a}.output"),
            ("error", f"{a}.error"),
            ("leaseOwner", f"{a}.lease_owner"),
            ("leaseExpiresAt", ts_sql(f"{a}.lease_expires_at")),
            ("attempt", f"{a}.attempt"),
            ("startedAt", ts_sql(f"{a}.started_at")),
            ("completedAt", ts_sql(f"{a}.completed_at")),
            ("createdAt", ts_sql(f"{a}.created_at")),
            ("updatedAt", ts_sql(f"{a}.updated_at")),
        ]
    )


def _state_json(a: str) -> str:
    return _obj(
        [
            ("runId", f"{a}.run_id"),
            ("value", f"{a}.value"),
            ("version", f"{a}.version"),
            ("updatedAt", ts_sql(f"{a}.updated_at")),
        ]
    )


def _stream_json(a: str) -> str:
    return _obj(
        [
            ("id", f"{a}.id"),
            ("runId", f"{a}.run_id"),
            ("name", f"{a}.name"),
            ("targetType", f"{a}.target_type"),
            ("targetId", f"{a}.target_id"),
            ("currentVersion", f"{a}.current_version"),
            ("currentValue", f"{a}.current_value"),
            ("metadata", f"{a}.metadata"),
            ("createdAt", ts_sql(f"{a}.created_at")),
            ("updatedAt", ts_sql(f"{a}.updated_at")),
        ]
    )


def _version_json(a: str) -> str:
    return _obj(
        [
            ("id", f"{a}.id"),
            ("streamId", f"{a}.stream_id"),
            ("runId", f"{a}.run_id"),
            ("stepId", f"{a}.step_id"),
            ("version", f"{a}.version"),
            ("value", f"{a}.value"),
            ("patch", f"{a}.patch"),
            ("label", f"{a}.label"),
            ("reason", f"{a}.reason"),
            ("importance", f"{a}.importance"),
            ("metadata", f"{a}.metadata"),
            ("createdBy", f"{a}.created_by"),
            ("createdAt", ts_sql(f"{a}.created_at")),
        ]
    )


def _edge_json(a: str) -> str:
    return _obj(
        [
            ("id", f"{a}.id"),
            ("parentRunId", f"{a}.parent_run_id"),
            ("childRunId", f"{a}.child_run_id"),
            ("name", f"{a}.name"),
            ("edgeType", f"{a}.edge_type"),
            ("metadata", f"{a}.metadata"),
            ("createdAt", ts_sql(f"{a}.created_at")),
        ]
    )


def _recovery_json(a: str) -> str:
    return _obj(
        [
            ("id", f"{a}.id"),
            ("runId", f"{a}.run_id"),
            ("reason", f"{a}.reason"),
            ("webhookUrl", f"{a}.webhook_url"),
            ("status", f"{a}.status"),
            ("httpStatus", f"{a}.http_status"),
            ("responseBody", f"{a}.response_body"),
            ("errorText", f"{a}.error_text"),
            ("attempts", f"{a}.attempts"),
            ("createdAt", ts_sql(f"{a}.created_at")),
            ("completedAt", ts_sql(f"{a}.completed_at")),
        ]
    )


def _has_secret(expr: str) -> str:
    return f"(COALESCE({expr}, '') <> '')"


def _channel_json(a: str) -> str:
    config = _obj([("url", f"{a}.url"), ("secret", "NULL"), ("hasSecret", _has_secret(f"{a}.secret"))])
    return _obj(
        [
            ("id", f"{a}.id"),
            ("runId", f"{a}.run_id"),
            ("type", f"{a}.type"),
            ("config", config),
            ("events", f"{a}.events"),
            ("createdAt", ts_sql(f"{a}.created_at")),
        ]
    )


def _carried(a: str) -> str:
    """Whether the delivery's payload carried a gate resolve token (a non-empty string)."""
    return (
        f"(jsonb_typeof({a}.payload -> 'gate' -> 'resolveToken') = 'string'"
        f" AND {a}.payload -> 'gate' ->> 'resolveToken' <> '')"
    )


def _delivery_json(a: str) -> str:
    """``wire.delivery_out``. For callers that may not resolve (``%(show)s`` false) the gate's
    resolve token is blanked in the payload and, when the delivery carried one, the receiver's
    answer is withheld and the token cut out of the error text."""
    gate = f"(NOT %(show)s AND jsonb_typeof({a}.payload) = 'object' AND jsonb_typeof({a}.payload -> 'gate') = 'object')"
    token = f"({gate} AND {_carried(a)})"
    return _obj(
        [
            ("id", f"{a}.id"),
            ("runId", f"{a}.run_id"),
            ("channelId", f"{a}.channel_id"),
            ("gateId", f"{a}.gate_id"),
            ("eventType", f"{a}.event_type"),
            (
                "payload",
                f"CASE WHEN {gate} THEN jsonb_set({a}.payload, '{{gate,resolveToken}}', 'null') ELSE {a}.payload END",
            ),
            ("status", f"{a}.status"),
            ("httpStatus", f"{a}.http_status"),
            (
                "responseBody",
                f"CASE WHEN {token} AND {a}.response_body <> '' THEN %(withheld)s::text ELSE {a}.response_body END",
            ),
            (
                "errorText",
                f"CASE WHEN {token} AND {a}.error_text <> ''"
                f" THEN replace({a}.error_text, {a}.payload -> 'gate' ->> 'resolveToken', '[redacted]')"
                f" ELSE {a}.error_text END",
            ),
            ("attempts", f"{a}.attempts"),
            ("createdAt", ts_sql(f"{a}.created_at")),
            ("completedAt", ts_sql(f"{a}.completed_at")),
        ]
    )


def _gate_json(a: str) -> str:
    # ``wire.redact_channel`` of each inline channel: no secret, no stamp, ``hasSecret`` instead
    has_secret = _has_secret("c ->> 'secret'")
    channels = (
        f"(SELECT COALESCE(json_agg((c - 'secret' - '{wire.SET_BY}')"
        f" || jsonb_build_object('hasSecret', {has_secret}) ORDER BY n), '[]'::json)"
        f" FROM jsonb_array_elements(COALESCE({a}.channels, '[]'::jsonb)) WITH ORDINALITY AS ch(c, n))"
    )
    return _obj(
        [
            ("id", f"{a}.id"),
            ("runId", f"{a}.run_id"),
            ("name", f"{a}.name"),
            ("prompt", f"{a}.prompt"),
            ("data", f"{a}.data"),
            ("status", f"{a}.status"),
            ("decision", f"{a}.decision"),
            ("actor", f"{a}.actor"),
            ("decidedBy", f"{a}.decided_by"),
            ("decisionPayload", f"{a}.decision_payload"),
            ("capability", f"{a}.capability"),
            ("channels", channels),
            ("resolveToken", f"CASE WHEN %(show)s THEN {a}.resolve_token END"),
            ("resolveUrl", f"%(public_url)s::text || '/runs/' || {a}.run_id || '/gates/' || {a}.id || '/resolve'"),
            ("decideUrl", f"%(public_url)s::text || '/dashboard/#gate-' || {a}.id"),
            ("timeoutMs", f"{a}.timeout_ms"),
            ("timeoutAt", ts_sql(f"{a}.timeout_at")),
            ("createdAt", ts_sql(f"{a}.created_at")),
            ("updatedAt", ts_sql(f"{a}.updated_at")),
            ("resolvedAt", ts_sql(f"{a}.resolved_at")),
            # wire.gate_policy_out
            ("policyVersion", f"{a}.policy_version"),
            ("remindAt", ts_sql(f"{a}.remind_at")),
            ("escalateAt", ts_sql(f"{a}.escalate_at")),
            ("expireAt", ts_sql(f"{a}.expire_at")),
            ("remindedAt", ts_sql(f"{a}.reminded_at")),
            ("escalatedAt", ts_sql(f"{a}.escalated_at")),
            ("expiredAt", ts_sql(f"{a}.expired_at")),
        ]
    )


def _usage_json(a: str) -> str:
    return _obj(
        [
            ("id", f"{a}.id"),
            ("runId", f"{a}.run_id"),
            ("stepId", f"{a}.step_id"),
            ("kind", f"{a}.kind"),
            ("provider", f"{a}.provider"),
            ("model", f"{a}.model"),
            ("label", f"{a}.label"),
            ("quantity", num_sql(f"{a}.quantity")),
            ("unit", f"{a}.unit"),
            ("inputTokens", f"{a}.input_tokens"),
            ("outputTokens", f"{a}.output_tokens"),
            ("totalTokens", f"{a}.total_tokens"),
            ("costUsd", num_sql(f"{a}.cost_usd")),
            ("costSource", f"{a}.cost_source"),
            ("metadata", f"{a}.metadata"),
            ("createdAt", ts_sql(f"{a}.created_at")),
        ]
    )


def _event_json(a: str) -> str:
    return _obj(
        [
            ("id", f"{a}.id"),
            ("runId", f"{a}.run_id"),
            ("seq", f"{a}.seq"),
            ("type", f"{a}.type"),
            ("payload", f"{a}.payload"),
            ("createdAt", ts_sql(f"{a}.created_at")),
        ]
    )


# Run detail (§6.4) in the documented orders; ties broken by id, so answers are stable. One
# text column per part, named by its key, in the answer's order.
DETAIL_PARTS: list[tuple[str, str]] = [
    ("run", run_json("r")),
    ("steps", _agg(step_json("s"), "FROM tb_step s WHERE s.run_id = r.id", "s.created_at, s.id")),
    ("state", f"(SELECT {_state_json('st')} FROM tb_run_state st WHERE st.run_id = r.id)"),
    (
        "stateStreams",
        _agg(_stream_json("ss"), "FROM tb_state_stream ss WHERE ss.run_id = r.id", "ss.created_at, ss.id"),
    ),
    (
        "stateVersions",
        _agg(
            _version_json("v"),
            "FROM tb_state_version v JOIN tb_state_stream vs ON vs.id = v.stream_id WHERE v.run_id = r.id",
            "vs.name, v.version",
        ),
    ),
    (
        "runEdges",
        _agg(_edge_json("e"), "FROM tb_run_edge e WHERE e.parent_run_id = r.id", "e.created_at, e.id"),
    ),
    (
        "childRuns",
        _agg(
            run_json("cr"),
            "FROM tb_run_edge ce JOIN tb_run cr ON cr.id = ce.child_run_id WHERE ce.parent_run_id = r.id",
            "ce.created_at, ce.id",
        ),
    ),
    (
        "recoveryAttempts",
        _agg(
            _recovery_json("ra"),
            "FROM tb_recovery_attempt ra WHERE ra.run_id = r.id",
            "ra.created_at DESC, ra.id DESC",
        ),
    ),
    ("channels", _agg(_channel_json("c"), "FROM tb_channel c WHERE c.run_id = r.id", "c.created_at, c.id")),
    (
        "channelDeliveries",
        _agg(
            _delivery_json("d"),
            "FROM (SELECT * FROM tb_channel_delivery WHERE run_id = r.id"
            " ORDER BY created_at DESC, id DESC LIMIT 100) d",
            "d.created_at DESC, d.id DESC",
        ),
    ),
    ("gates", _agg(_gate_json("g"), "FROM tb_gate g WHERE g.run_id = r.id", "g.created_at, g.id")),
    ("usage", _agg(_usage_json("u"), "FROM tb_usage u WHERE u.run_id = r.id", "u.created_at, u.id")),
    ("events", _agg(_event_json("ev"), "FROM tb_event ev WHERE ev.run_id = r.id", "ev.seq")),
]


DETAIL_KEYS = frozenset(key for key, _ in DETAIL_PARTS)
DETAIL_SQL = (
    "SELECT "
    + ", ".join(f'({sql})::text AS "{key}"' for key, sql in DETAIL_PARTS)
    + " FROM tb_run r WHERE r.id = %(run)s"
)


def run_detail(*, run_id: str, show_tokens: bool) -> dict[str, Any]:
    """Everything about one run (§6.4), each part as JSON text built by Postgres (``RawJson``,
    spliced into the answer as is). One statement, so one consistent snapshot: a step cannot
    show up completed while its ``step.completed`` event is missing, and no ORM on the way."""
    rows = fetch_prepared(
        DETAIL_SQL,
        {
            "run": run_id,
            "show": show_tokens,
            "public_url": settings.TIDEBASE_PUBLIC_URL,
            "withheld": wire.WITHHELD,
        },
        DETAIL_KEYS,
    )
    if not rows:
        raise RunNotFound()
    return vars(rows[0])
