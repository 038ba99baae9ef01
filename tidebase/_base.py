"""Everything the sync and async clients share that does no I/O.

Configuration, the retry policy, request/response handling, typed error
mapping, request-body builders and the step/gate protocol decisions live
here, so ``_client.py`` and ``_async_client.py`` only move bytes.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import email.utils
import json
import os
import random
import uuid
from collections.abc import Mapping
from typing import Any
from urllib.parse import quote as _quote

import httpx

from . import _tracing
from ._exceptions import RunCancelled, TidebaseError, error_class_for
from ._json import to_json_data

__version__ = "0.1.0"

DEFAULT_URL = "http://localhost:7373"
DEFAULT_TIMEOUT_S = 30.0
GATE_LONG_POLL_MS = 25_000
USER_AGENT = f"tidebase-django-python/{__version__}"
GATE_DECISIONS = ("approved", "rejected", "canceled")


def new_run_id() -> str:
    """A fresh ``run_<32 hex>`` id (the server assigns run ids; this is for
    callers that need an id-shaped value of their own)."""
    return "run_" + uuid.uuid4().hex


def quote(segment: str) -> str:
    """Percent-encode a name used as one path segment (``/`` included)."""
    return _quote(segment, safe="")


@dataclasses.dataclass(frozen=True)
class ClientConfig:
    url: str
    api_key: str | None
    webhook_secret: str | None
    timeout_s: float

    @classmethod
    def resolve(
        cls, url: str | None, api_key: str | None, webhook_secret: str | None, timeout_s: float | None
    ) -> ClientConfig:
        base = url or os.environ.get("TIDEBASE_URL") or DEFAULT_URL
        return cls(
            url=base.removesuffix("/"),
            api_key=api_key or os.environ.get("TIDEBASE_API_KEY") or None,
            webhook_secret=webhook_secret or os.environ.get("TIDEBASE_WEBHOOK_SECRET") or None,
            timeout_s=DEFAULT_TIMEOUT_S if timeout_s is None else timeout_s,
        )

    def headers(self) -> dict[str, str]:
        headers = {"user-agent": USER_AGENT, "accept": "application/json"}
        if self.api_key:
            headers["authorization"] = f"Bearer {self.api_key}"
        return headers


@dataclasses.dataclass(frozen=True)
class RetryPolicy:
    """How transient failures are retried.

    * Connect failures (the request never left) and 429 are retried for every
      request.
    * 502/503/504 and lost responses are retried only for *safe* calls: reads,
      and writes the server deduplicates (same-owner re-begins, gates and
      children by name, cancel, heartbeat, and POSTs whose ``Idempotency-Key``
      the server honours).
    * Backoff is exponential with full jitter; ``Retry-After`` wins when given.
    """

    max_retries: int = 3
    backoff_base_s: float = 0.5
    backoff_max_s: float = 8.0
    retry_after_max_s: float = 60.0

    RETRY_STATUSES = frozenset({502, 503, 504})

    def retry_status(self, status: int, *, safe: bool) -> bool:
        return status == 429 or (safe and status in self.RETRY_STATUSES)

    def delay_s(self, attempt: int, retry_after: str | None = None) -> float:
        """Seconds to wait before retry number ``attempt`` (1-based)."""
        hinted = parse_retry_after(retry_after)
        if hinted is not None:
            return min(hinted, self.retry_after_max_s)
        ceiling = min(self.backoff_max_s, self.backoff_base_s * (2 ** (attempt - 1)))
        return random.uniform(ceiling / 2, ceiling)


NO_RETRY = RetryPolicy(max_retries=0)


def parse_retry_after(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.UTC)
    return max(0.0, (when - dt.datetime.now(dt.UTC)).total_seconds())


_NO_BODY: Any = object()


def _not_plain(value: Any) -> Any:
    raise TypeError(type(value).__name__)


@dataclasses.dataclass(frozen=True)
class Call:
    """One logical API call (its retries share the idempotency key)."""

    method: str
    path: str
    body: Any = _NO_BODY
    params: Mapping[str, str] | None = None
    safe: bool = False
    timeout_s: float | None = None
    extra_headers: Mapping[str, str] | None = None

    def content(self) -> bytes | None:
        if self.body is _NO_BODY:
            return b"" if self.method == "POST" else None
        try:
            # Bodies are almost always plain JSON data already: encode them without the
            # to_json_data walk, which gives the same text for them. Anything json would need
            # help with (or refuse, like NaN) takes the walk, and its errors.
            text = json.dumps(self.body, ensure_ascii=False, allow_nan=False, default=_not_plain)
        except (TypeError, ValueError):
            text = json.dumps(to_json_data(self.body), ensure_ascii=False, allow_nan=False)
        return text.encode()

    def headers(self, idempotency_key: str) -> dict[str, str]:
        headers = {"content-type": "application/json"}
        if self.method == "POST":
            headers["idempotency-key"] = idempotency_key
        if self.extra_headers:
            headers.update(self.extra_headers)
        _tracing.inject(headers)  # W3C traceparent of the current span, if any (tidebase/_tracing.py)
        return headers


_UNSENT = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)


def transport_error_retryable(error: httpx.TransportError, *, safe: bool) -> bool:
    """A request that never left can always be retried; a lost response only
    when repeating the call is harmless."""
    return isinstance(error, _UNSENT) or (safe and not isinstance(error, httpx.UnsupportedProtocol))


def new_idempotency_key() -> str:
    return uuid.uuid4().hex


def run_id_from_path(path: str) -> str:
    parts = path.split("/")
    return parts[2] if len(parts) > 2 and parts[1] == "runs" else "unknown"


def parse_response(status: int, content: bytes, path: str) -> Any:
    """Decode a response body, raising a typed error for non-2xx."""
    try:
        body: Any = json.loads(content) if content else None
    except ValueError:
        body = content.decode("utf-8", "replace")
    if 200 <= status < 300:
        if isinstance(body, str):
            raise TidebaseError(f"Tidebase answered {status} with a non-JSON body ({path})", status=status, path=path)
        return body
    message, code = _error_fields(body)
    if code == "run_cancelled":
        raise RunCancelled(run_id_from_path(path), body=body)
    cls = error_class_for(status, code)
    raise cls(f"Tidebase request failed: {status} {message} ({path})", status=status, code=code, body=body, path=path)


def _error_fields(body: Any) -> tuple[str, str | None]:
    if not isinstance(body, dict):
        return (str(body or "").strip() or "no body"), None
    error = body.get("error")
    code = body.get("code")
    if isinstance(error, dict):  # {"error": {"code": ..., "message": ...}}
        code = code or error.get("code")
        error = error.get("message")
    return str(error or "error"), code if isinstance(code, str) else None


# ---- request bodies --------------------------------------------------------


def compact(**fields: Any) -> dict[str, Any]:
    """Keyword arguments as a body, dropping ``None`` values."""
    return {k: v for k, v in fields.items() if v is not None}


def run_create_body(
    input: Any, metadata: Mapping[str, Any] | None, recovery_webhook: str | None, channels: list[Any] | None
) -> dict[str, Any]:
    return compact(input=input, metadata=metadata, recoveryWebhook=recovery_webhook, channels=channels)


def utc_timestamp(value: str | dt.datetime) -> str:
    """``run_at`` as the ``...Z`` form the server requires."""
    if isinstance(value, str):
        return value
    if value.tzinfo is None:
        raise ValueError("run_at must be timezone-aware")
    return value.astimezone(dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def enqueue_body(workflow_name: str, options: Mapping[str, Any]) -> dict[str, Any]:
    delay_s, deadline_s, run_at = options.get("delay_s"), options.get("deadline_s"), options.get("run_at")
    return compact(
        workflowName=workflow_name,
        input=options.get("input"),
        metadata=options.get("metadata"),
        recoveryWebhook=options.get("recovery_webhook"),
        channels=options.get("channels"),
        dedupeKey=options.get("dedupe_key"),
        delayMs=None if delay_s is None else int(delay_s * 1000),
        runAt=None if run_at is None else utc_timestamp(run_at),
        maxAttempts=options.get("max_attempts"),
        priority=options.get("priority"),
        deadlineMs=None if deadline_s is None else int(deadline_s * 1000),
        budgetUsd=None if options.get("budget_usd") is None else float(options["budget_usd"]),
    )


def gate_begin_body(
    name: str, prompt: str, data: Any, channels: list[Any] | None, capability: Any, timeout_s: float | None
) -> dict[str, Any]:
    body: dict[str, Any] = {
        "name": name,
        "prompt": prompt,
        "data": {} if data is None else data,
        "channels": channels or [],
        "capability": capability,
    }
    if timeout_s is not None:
        body["timeoutMs"] = max(1, int(timeout_s * 1000))
    return body


_STATE_KEYS = {
    "stream": "stream",
    "label": "label",
    "reason": "reason",
    "importance": "importance",
    "metadata": "metadata",
    "created_by": "createdBy",
}


def state_options(options: Mapping[str, Any]) -> dict[str, Any]:
    unknown = set(options) - set(_STATE_KEYS)
    if unknown:
        raise TypeError(f"unexpected state option(s): {', '.join(sorted(unknown))}")
    return {_STATE_KEYS[k]: v for k, v in options.items() if v is not None}


_USAGE_KEYS = {
    "step_id": "stepId",
    "kind": "kind",
    "provider": "provider",
    "model": "model",
    "label": "label",
    "quantity": "quantity",
    "unit": "unit",
    "input_tokens": "inputTokens",
    "output_tokens": "outputTokens",
    "total_tokens": "totalTokens",
    "cost_usd": "costUsd",
    "metadata": "metadata",
}


def usage_body(options: Mapping[str, Any]) -> dict[str, Any]:
    unknown = set(options) - set(_USAGE_KEYS)
    if unknown:
        raise TypeError(f"unexpected usage field(s): {', '.join(sorted(unknown))}")
    body = {_USAGE_KEYS[k]: v for k, v in options.items() if v is not None}
    for key in ("quantity", "costUsd"):  # the ledger wants JSON numbers, not strings
        if key in body and not isinstance(body[key], (int, float)):
            body[key] = float(body[key])
    return body


def snapshot_body(label: str, state: Any, options: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "label": label,
        "state": state,
        **compact(
            target=options.get("target"),
            reason=options.get("reason"),
            metadata=options.get("metadata"),
            createdBy=options.get("created_by"),
        ),
    }


def versions_params(stream: str | None, labeled: bool | None) -> dict[str, str]:
    params = {"stream": stream} if stream else {}
    if labeled is not None:
        params["labeled"] = "true" if labeled else "false"
    return params


def child_body(workflow_name: str, name: str | None, options: Mapping[str, Any]) -> dict[str, Any]:
    return compact(
        name=name or workflow_name,
        workflowName=workflow_name,
        input=options.get("input"),
        metadata=options.get("metadata"),
        recoveryWebhook=options.get("recovery_webhook"),
        channels=options.get("channels"),
        edgeType=options.get("edge_type") or "child",
        edgeMetadata=options.get("edge_metadata"),
        budgetUsd=None if options.get("budget_usd") is None else float(options["budget_usd"]),
    )


def fanout_join_input(name: str, children: list[Mapping[str, Any]]) -> dict[str, Any]:
    return {"fanout": name, "join": "all", "children": [child["name"] for child in children]}


FANOUT_INVARIANT = "all child run results were collected"


CLAIM_WAIT_MS = 5000
"""Claims long-poll this long on servers that support ``waitMs`` (others ignore the field)."""


def claim_body(queues: list[str], lease_owner: str | None, limit: int, wait_ms: int = 0) -> dict[str, Any]:
    return compact(queues=queues, leaseOwner=lease_owner, limit=limit, waitMs=wait_ms or None)


def claim_call(body: dict[str, Any]) -> Call:
    wait_s = body.get("waitMs", 0) / 1000
    return Call("POST", "/queues/claim", body, timeout_s=wait_s + 30 if wait_s else None)


def should_sleep_after_claim(claim: Mapping[str, Any], body: Mapping[str, Any], elapsed_s: float) -> bool:
    """Sleep ``poll_s`` after an empty claim unless the server held the request (long-poll)."""
    if claim["runs"]:
        return False
    wait_s = body.get("waitMs", 0) / 1000
    return not wait_s or elapsed_s < wait_s / 2


def serialize_error(error: BaseException) -> dict[str, str]:
    return {"name": type(error).__name__, "message": str(error)}


def check_workflow_name(run: Mapping[str, Any], workflow_name: str) -> None:
    if run["workflowName"] != workflow_name:
        raise ValueError(f"Run {run['id']} belongs to workflow {run['workflowName']!r}, not {workflow_name!r}")


def encode_result(result: Any) -> Any:
    try:
        return to_json_data(result, "result")
    except TypeError as error:
        raise TypeError(
            f"The workflow returned {type(result).__qualname__}, which cannot be stored as the run result "
            f"({error}). Return plain JSON data (e.g. `result.output` or `.model_dump()`)."
        ) from error


def new_lease_owner() -> str:
    """A worker identity sent as ``x-tidebase-worker`` on run begin, so a
    begin retried after a lost response re-acquires its own lease."""
    return str(uuid.uuid4())


def should_list_steps(run: Mapping[str, Any], resumed: bool) -> bool:
    """A run can only have checkpoints if it ran before."""
    return resumed or int(run.get("attempt") or 0) > 1


__all__ = ["Call", "ClientConfig", "RetryPolicy", "new_run_id"]
