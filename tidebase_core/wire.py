"""Wire shapes of PROTOCOL.md §3: model (or raw row) → JSON-ready dict.

Serializers read attributes, so they accept model instances and ``db.Row`` objects alike. JSON
columns of raw rows arrive as ``RawJson`` text (see ``db.py``) and are spliced into responses
unparsed, so a multi-megabyte checkpoint is never decoded and re-encoded on the replay path.
"""

from __future__ import annotations

import datetime as dt
import json
import math
from decimal import Decimal
from typing import Any

import orjson
from django.conf import settings
from django.http import HttpResponse


def ts(value: dt.datetime | None) -> str | None:
    """ISO-8601 UTC with exactly three fractional digits and ``Z`` (JS ``toISOString``)."""
    if value is None:
        return None
    if value.tzinfo is not None:
        value = value.astimezone(dt.UTC)
    # Not strftime: its %Y does not pad years before 1000 ("119-07-10"), JS and RFC 3339 do.
    v = value
    ms = v.microsecond // 1000
    return f"{v.year:04d}-{v.month:02d}-{v.day:02d}T{v.hour:02d}:{v.minute:02d}:{v.second:02d}.{ms:03d}Z"


def num(value: Decimal | None) -> float | int | None:
    """Decimals go out as JSON numbers (PROTOCOL.md §19.13)."""
    if value is None:
        return None
    return int(value) if value == value.to_integral_value() else float(value)


class RawJson(str):
    """JSON text read from a jsonb column; serialized verbatim, never re-parsed."""

    __slots__ = ()


_OPTS = orjson.OPT_PASSTHROUGH_SUBCLASS


def _default(value: Any) -> Any:
    if isinstance(value, RawJson):
        return orjson.Fragment(str(value))
    if isinstance(value, str):
        return str(value)
    if isinstance(value, bool):
        return bool(value)
    if isinstance(value, int):
        return int(value)
    if isinstance(value, dict):
        return dict(value)
    if isinstance(value, list):
        return list(value)
    if isinstance(value, Decimal):
        return num(value)
    if isinstance(value, dt.datetime):
        return ts(value)
    raise TypeError(f"not JSON serializable: {type(value).__name__}")


def dumps(data: Any) -> bytes:
    try:
        return orjson.dumps(data, default=_default, option=_OPTS)
    except orjson.JSONEncodeError as exc:
        if "64-bit" not in str(exc):
            raise
        return _dumps_exact(data)  # JSON has no integer limit; a client's 2**70 comes back as sent


def _exact(value: Any) -> Any:
    """The slow path's view of a value: plain types the stdlib encoder writes exactly."""
    if isinstance(value, RawJson):
        return json.loads(str(value))
    if value is None or isinstance(value, (str, bool)):
        return value
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        return value if math.isfinite(value) else None  # as orjson writes them
    if isinstance(value, dict):
        return {key: _exact(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_exact(item) for item in value]
    return _exact(_default(value))  # Decimal, datetime; anything else raises TypeError


def _dumps_exact(data: Any) -> bytes:
    return json.dumps(_exact(data), ensure_ascii=False, separators=(",", ":")).encode()


def json_response(data: Any, status: int = 200) -> HttpResponse:
    return HttpResponse(dumps(data), status=status, content_type="application/json")


def error_response(exc: Any) -> HttpResponse:
    """A ``DomainError`` as its JSON answer, with its headers (e.g. ``Retry-After``)."""
    response = json_response(exc.body(), exc.status_code)
    for name, value in exc.headers():
        response[name] = value
    return response


def run_out(r: Any) -> dict[str, Any]:
    return {
        "id": r.id,
        "workflowName": r.workflow_name,
        "input": r.input,
        "metadata": r.metadata,
        "status": r.status,
        "result": r.result,
        "error": r.error,
        "recoveryWebhook": r.recovery_webhook,
        "leaseOwner": r.lease_owner,
        "leaseExpiresAt": ts(r.lease_expires_at),
        "attempt": r.attempt,
        "queue": r.queue,
        "dedupeKey": r.dedupe_key,
        "priority": r.priority,
        "runAt": ts(r.run_at),
        "maxAttempts": r.max_attempts,
        "deadlineAt": ts(r.deadline_at),
        "cancelRequestedAt": ts(r.cancel_requested_at),
        "cancelledAt": ts(r.cancelled_at),
        "cancelReason": r.cancel_reason,
        "cancelActor": r.cancel_actor,
        "failureClass": r.failure_class,
        "createdAt": ts(r.created_at),
        "updatedAt": ts(r.updated_at),
        "completedAt": ts(r.completed_at),
        "budgetUsd": num(r.budget_usd),
    }


def step_out(s: Any) -> dict[str, Any]:
    return {
        "id": s.id,
        "runId": s.run_id,
        "name": s.name,
        "inputHash": s.input_hash,
        "input": s.input,
        "options": s.options,
        "resumeContract": s.resume_contract,
        "status": s.status,
        "output": s.output,
        "error": s.error,
        "leaseOwner": s.lease_owner,
        "leaseExpiresAt": ts(s.lease_expires_at),
        "attempt": s.attempt,
        "startedAt": ts(s.started_at),
        "completedAt": ts(s.completed_at),
        "createdAt": ts(s.created_at),
        "updatedAt": ts(s.updated_at),
    }


def resolve_url(g: Any) -> str:
    return f"{settings.TIDEBASE_PUBLIC_URL}/runs/{g.run_id}/gates/{g.id}/resolve"


def decide_url(g: Any) -> str:
    """Where a human decides the gate: its card in the dashboard's approvals inbox (a login with
    the ``resolve_gate`` permission). Channel deliveries that may not carry the resolve token
    carry this instead."""
    return f"{settings.TIDEBASE_PUBLIC_URL}/dashboard/#gate-{g.id}"


SET_BY = "setByScope"
"""Key of a stored channel dict (a gate's inline channels) holding the scope of the principal
that configured it; run channels keep it in ``Channel.set_by_scope``. A channel delivery carries
a gate's resolve token only when that scope may resolve gates (``auth.RESOLVER_SCOPES``)."""


def gate_out(g: Any, *, show_token: bool) -> dict[str, Any]:
    """Full gate form. Inline channel secrets are never echoed; the resolve token only to
    callers that may resolve the gate (PROTOCOL.md §18.8, decided in docs/decisions.md)."""
    return {
        "id": g.id,
        "runId": g.run_id,
        "name": g.name,
        "prompt": g.prompt,
        "data": g.data,
        "status": g.status,
        "decision": g.decision,
        "actor": g.actor,
        "decidedBy": g.decided_by,
        "decisionPayload": g.decision_payload,
        "capability": g.capability,
        "channels": [redact_channel(c) for c in (g.channels or [])],
        "resolveToken": g.resolve_token if show_token else None,
        "resolveUrl": resolve_url(g),
        "decideUrl": decide_url(g),
        "timeoutMs": g.timeout_ms,
        "timeoutAt": ts(g.timeout_at),
        "createdAt": ts(g.created_at),
        "updatedAt": ts(g.updated_at),
        "resolvedAt": ts(g.resolved_at),
        **gate_policy_out(g),
    }


def gate_policy_out(g: Any) -> dict[str, Any]:
    """Additive fields of a gate under an approval policy (all null without one): the policy
    version it opened under, then the one it was decided under, and its SLA times (when it is
    reminded, escalated and expires; when that happened). Only columns of the gate row, so a
    list of gates costs no query more; the votes so far are the resolve answer's ``quorum``."""
    return {
        "policyVersion": g.policy_version,
        "remindAt": ts(g.remind_at),
        "escalateAt": ts(g.escalate_at),
        "expireAt": ts(g.expire_at),
        "remindedAt": ts(g.reminded_at),
        "escalatedAt": ts(g.escalated_at),
        "expiredAt": ts(g.expired_at),
    }


def public_gate(g: Any, *, show_token: bool) -> dict[str, Any]:
    """The gate in events and channel payloads. A gate under a policy also carries
    ``gate_policy_out`` (additive); a gate without one keeps exactly the shape it always had."""
    out = {
        "id": g.id,
        "runId": g.run_id,
        "name": g.name,
        "prompt": g.prompt,
        "data": g.data,
        "status": g.status,
        "decision": g.decision,
        "actor": g.actor,
        "capability": g.capability,
        "resolveUrl": resolve_url(g),
        "resolveToken": g.resolve_token if show_token else None,
        "decideUrl": decide_url(g),
    }
    if g.policy_id is not None:
        out.update(gate_policy_out(g))
    return out


def redact_channel(c: dict[str, Any]) -> dict[str, Any]:
    out = {k: v for k, v in c.items() if k not in ("secret", SET_BY)}
    out["hasSecret"] = bool(c.get("secret"))
    return out


def channel_out(c: Any) -> dict[str, Any]:
    return {
        "id": c.id,
        "runId": c.run_id,
        "type": c.type,
        "config": {"url": c.url, "secret": None, "hasSecret": bool(c.secret)},
        "events": c.events,
        "createdAt": ts(c.created_at),
    }


def event_out(e: Any) -> dict[str, Any]:
    return {
        "id": e.id,
        "runId": e.run_id,
        "seq": e.seq,
        "type": e.type,
        "payload": e.payload,
        "createdAt": ts(e.created_at),
    }


def state_out(s: Any) -> dict[str, Any]:
    return {"runId": s.run_id, "value": s.value, "version": s.version, "updatedAt": ts(s.updated_at)}


def stream_out(s: Any) -> dict[str, Any]:
    return {
        "id": s.id,
        "runId": s.run_id,
        "name": s.name,
        "targetType": s.target_type,
        "targetId": s.target_id,
        "currentVersion": s.current_version,
        "currentValue": s.current_value,
        "metadata": s.metadata,
        "createdAt": ts(s.created_at),
        "updatedAt": ts(s.updated_at),
    }


def version_out(v: Any) -> dict[str, Any]:
    return {
        "id": v.id,
        "streamId": v.stream_id,
        "runId": v.run_id,
        "stepId": v.step_id,
        "version": v.version,
        "value": v.value,
        "patch": v.patch,
        "label": v.label,
        "reason": v.reason,
        "importance": v.importance,
        "metadata": v.metadata,
        "createdBy": v.created_by,
        "createdAt": ts(v.created_at),
    }


def public_version(v: Any) -> dict[str, Any]:
    return {
        "id": v.id,
        "streamId": v.stream_id,
        "runId": v.run_id,
        "version": v.version,
        "label": v.label,
        "reason": v.reason,
        "importance": v.importance,
        "createdAt": ts(v.created_at),
    }


def edge_out(e: Any) -> dict[str, Any]:
    return {
        "id": e.id,
        "parentRunId": e.parent_run_id,
        "childRunId": e.child_run_id,
        "name": e.name,
        "edgeType": e.edge_type,
        "metadata": e.metadata,
        "createdAt": ts(e.created_at),
    }


def usage_out(u: Any) -> dict[str, Any]:
    return {
        "id": u.id,
        "runId": u.run_id,
        "stepId": u.step_id,
        "kind": u.kind,
        "provider": u.provider,
        "model": u.model,
        "label": u.label,
        "quantity": num(u.quantity),
        "unit": u.unit,
        "inputTokens": u.input_tokens,
        "outputTokens": u.output_tokens,
        "totalTokens": u.total_tokens,
        "costUsd": num(u.cost_usd),
        "costSource": u.cost_source,
        "metadata": u.metadata,
        "createdAt": ts(u.created_at),
    }


def recovery_out(a: Any) -> dict[str, Any]:
    return {
        "id": a.id,
        "runId": a.run_id,
        "reason": a.reason,
        "webhookUrl": a.webhook_url,
        "status": a.status,
        "httpStatus": a.http_status,
        "responseBody": a.response_body,
        "errorText": a.error_text,
        "attempts": a.attempts,
        "createdAt": ts(a.created_at),
        "completedAt": ts(a.completed_at),
    }


def delivery_out(d: Any, *, show_token: bool) -> dict[str, Any]:
    """A channel delivery. For callers that may not resolve, the gate's resolve token is blanked
    in the payload, and the receiver's stored answer of a delivery that carried one is withheld:
    a receiver that echoes its request would hand the token back, and cutting out the whole
    token is not enough (an agent can pad the gate's data so the 8000-character excerpt ends
    inside the token, and guess the few characters left)."""
    payload = d.payload
    response_body, error_text = d.response_body, d.error_text
    if not show_token and isinstance(payload, dict) and isinstance(payload.get("gate"), dict):
        token = payload["gate"].get("resolveToken")
        payload = {**payload, "gate": {**payload["gate"], "resolveToken": None}}
        if isinstance(token, str) and token:
            response_body = WITHHELD if response_body else response_body
            error_text = redact_text(error_text, token)
    return {
        "id": d.id,
        "runId": d.run_id,
        "channelId": d.channel_id,
        "gateId": d.gate_id,
        "eventType": d.event_type,
        "payload": payload,
        "status": d.status,
        "httpStatus": d.http_status,
        "responseBody": response_body,
        "errorText": error_text,
        "attempts": d.attempts,
        "createdAt": ts(d.created_at),
        "completedAt": ts(d.completed_at),
    }


WITHHELD = "[withheld: this delivery carried a resolve token]"


def redact_text(text: str | None, secret: str) -> str | None:
    return text.replace(secret, "[redacted]") if text else text


def queue_config_out(c: Any) -> dict[str, Any]:
    return {
        "name": c.name,
        "concurrency": c.concurrency,
        "ratePerMinute": c.rate_per_minute,
        "invokeUrl": c.invoke_url,
        "paused": c.paused,
    }


def schedule_out(s: Any) -> dict[str, Any]:
    return {
        "name": s.name,
        "cron": s.cron,
        "workflowName": s.workflow_name,
        "input": s.input,
        "queue": s.queue,
        "maxAttempts": s.max_attempts,
        "enabled": s.enabled,
        "nextRunAt": ts(s.next_run_at),
        "lastEnqueuedAt": ts(s.last_enqueued_at),
        "createdAt": ts(s.created_at),
        "updatedAt": ts(s.updated_at),
    }
