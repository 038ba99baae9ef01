"""Pure protocol rules: no ORM, no clock. Callers pass ``now`` and row values in.

PROTOCOL.md §5 (leases), §6.8 (backoff), §7.1 (step begin order), §12 (resume contract and
classification). Where we deviate from upstream on purpose, docs/decisions.md says why.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any, Literal

REPLAY_MODES = ("auto", "manual", "never")
RESUME_DECISIONS = ("auto_retry", "safe_replay", "manual_review", "fail_hard")
LEGACY_REPLAY = {"retry": "auto", "review": "manual", "fail": "never"}


def resume_contract(options: dict[str, Any] | None) -> dict[str, Any]:
    """Derive a step's resume contract from its client-supplied options (§12.1)."""
    options = options if isinstance(options, dict) else {}
    raw_effects = options.get("sideEffects")
    if isinstance(raw_effects, list):
        side_effects = [e for e in raw_effects if isinstance(e, str) and e]
    elif isinstance(options.get("sideEffect"), str) and options["sideEffect"] != "none":
        side_effects = [options["sideEffect"]]
    else:
        side_effects = []
    key = options.get("idempotencyKey")
    idempotency_key = key if isinstance(key, str) else None

    replay = options.get("replay")
    if replay not in REPLAY_MODES:
        replay = LEGACY_REPLAY.get(options.get("onAmbiguousFailure"))  # type: ignore[arg-type]
    if replay is None:
        reads_only = all(e == "read" for e in side_effects)
        replay = "auto" if (reads_only or idempotency_key is not None) else "manual"
    credentials = options.get("credentials")
    return {
        "sideEffects": side_effects,
        "idempotencyKey": idempotency_key,
        "replay": replay,
        "checkpointInvariant": options.get("checkpointInvariant"),
        "verifiedBy": options.get("verifiedBy"),
        "credentials": credentials if isinstance(credentials, list) else [],
    }


def classify_failure(contract: dict[str, Any], *, retryable: bool) -> str:
    """Server-side resume decision when the client sends none (§12.2)."""
    if retryable:
        return "auto_retry"
    replay = contract.get("replay")
    if replay == "manual":
        return "manual_review"
    if replay == "never":
        return "fail_hard"
    return "safe_replay"


def failed_step_status(*, retryable: bool, decision: str) -> str:
    """Step status written by step fail (§7.3)."""
    if retryable or decision == "auto_retry":
        return "failed_retryable"
    if decision == "manual_review":
        return "manual_review"
    return "failed"


def requeue_backoff_ms(attempt: int) -> int:
    """Delay before a failed queue run is claimable again: 5 s after attempt 1, doubling,
    capped at 5 minutes (§6.8; the code's formula, not the docs')."""
    return int(min(300_000, 5000 * 2 ** max(0, attempt - 1)))


StepAction = Literal["execute", "return", "locked", "input_mismatch"]


@dataclass(frozen=True)
class StepView:
    status: str
    input_hash: str
    lease_owner: str | None
    lease_expires_at: dt.datetime | None
    lease_fence: int | None


@dataclass(frozen=True)
class RunLeaseView:
    lease_owner: str | None
    attempt: int


def decide_step_begin(
    step: StepView, *, input_hash: str, owner: str, run: RunLeaseView, now: dt.datetime
) -> StepAction:
    """What steps/begin does with an existing step (§7.1 steps 3-6), plus our takeover rule:
    a step lease taken under an older run lease (fence < run attempt) yields to the current
    run lease owner at once, so a re-invoked run never waits for a dead worker's step lease."""
    if step.input_hash != input_hash:
        return "input_mismatch"
    if step.status == "completed":
        return "return"
    live = (
        step.lease_owner is not None
        and step.lease_owner != owner
        and step.lease_expires_at is not None
        and step.lease_expires_at > now
    )
    if not live:
        return "execute"
    superseded = step.lease_fence is not None and step.lease_fence < run.attempt
    if superseded and run.lease_owner == owner:
        return "execute"
    return "locked"


def run_leased_elsewhere(
    *, status: str, lease_owner: str | None, lease_expires_at: dt.datetime | None, owner: str, now: dt.datetime
) -> bool:
    """Whether another worker holds the run's live lease. A step caller in that position has
    lost the run (it was taken over): it may replay finished steps but not start any."""
    return (
        status == "running"
        and lease_owner is not None
        and lease_owner != owner
        and lease_expires_at is not None
        and lease_expires_at > now
    )


RunBeginAction = Literal["acquire", "completed", "cancelled", "leased"]


def decide_run_begin(
    *,
    status: str,
    lease_owner: str | None,
    lease_expires_at: dt.datetime | None,
    owner: str | None,
    now: dt.datetime,
) -> RunBeginAction:
    """Run begin (§6.5): refused only while another owner holds a live lease."""
    if status == "cancelled":
        return "cancelled"
    if status == "completed":
        return "completed"
    if lease_owner is not None and lease_expires_at is not None and lease_expires_at > now and lease_owner != owner:
        return "leased"
    return "acquire"


def channel_matches(events: list[Any] | None, event_type: str) -> bool:
    return not events or event_type in events


def patch_value(old: Any, patch: Any) -> Any:
    """Postgres ``jsonb || jsonb`` semantics for PATCH (§7.7): objects merge shallowly (new
    keys win); arrays concatenate; an array meets a non-array by wrapping the other side."""
    if isinstance(old, dict) and isinstance(patch, dict):
        return {**old, **patch}
    if isinstance(old, list) and isinstance(patch, list):
        return [*old, *patch]
    if isinstance(old, list):
        return [*old, patch]
    if isinstance(patch, list):
        return [old, *patch]
    return [old, patch]
