"""Pure protocol rules (tidebase_core.protocol): no DB, no clock, many cases.

PROTOCOL.md §5 (leases), §6.5 (run begin), §6.8 (backoff), §7.1 (step begin), §7.3 (failed
step status), §7.7 (PATCH = jsonb ``||``), §12 (resume contract and classification).
"""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

import pytest
from django.db import connection

from tidebase_core import protocol
from tidebase_core.protocol import RunLeaseView, StepView

NOW = dt.datetime(2026, 1, 1, 12, 0, 0, tzinfo=dt.UTC)
LIVE = NOW + dt.timedelta(seconds=30)
EXPIRED = NOW - dt.timedelta(seconds=1)

DEFAULT_CONTRACT = {
    "sideEffects": [],
    "idempotencyKey": None,
    "replay": "auto",
    "checkpointInvariant": None,
    "verifiedBy": None,
    "credentials": [],
}


# --- resume_contract (§12.1) -------------------------------------------------------------


@pytest.mark.parametrize("options", [None, {}, [], "retry", 3])
def test_resume_contract__no_usable_options_gives_the_default_contract(options: Any) -> None:
    assert protocol.resume_contract(options) == DEFAULT_CONTRACT


@pytest.mark.parametrize(
    ("options", "side_effects"),
    [
        ({"sideEffects": ["write", "read"]}, ["write", "read"]),
        ({"sideEffects": ["write", "", 3, None, "read"]}, ["write", "read"]),
        ({"sideEffects": []}, []),
        ({"sideEffects": [], "sideEffect": "write"}, []),  # an array wins over the legacy field
        ({"sideEffects": "write"}, []),
        ({"sideEffects": "write", "sideEffect": "external"}, ["external"]),
        ({"sideEffect": "write"}, ["write"]),
        ({"sideEffect": "none"}, []),
        ({"sideEffect": 1}, []),
        ({"sideEffect": ""}, [""]),
    ],
)
def test_resume_contract__side_effects_come_from_the_array_else_the_legacy_field(
    options: dict[str, Any], side_effects: list[str]
) -> None:
    assert protocol.resume_contract(options)["sideEffects"] == side_effects


@pytest.mark.parametrize(
    ("options", "replay"),
    [
        # 1. an explicit valid replay wins
        ({"replay": "auto", "sideEffects": ["write"]}, "auto"),
        ({"replay": "manual"}, "manual"),
        ({"replay": "never", "onAmbiguousFailure": "retry"}, "never"),
        ({"replay": "manual", "onAmbiguousFailure": "retry"}, "manual"),
        # 2. else the legacy onAmbiguousFailure
        ({"replay": "bogus", "onAmbiguousFailure": "review"}, "manual"),
        ({"onAmbiguousFailure": "retry", "sideEffects": ["write"]}, "auto"),
        ({"onAmbiguousFailure": "review"}, "manual"),
        ({"onAmbiguousFailure": "fail"}, "never"),
        # 3. else inferred from side effects and the idempotency key
        ({"onAmbiguousFailure": "bogus"}, "auto"),
        ({"sideEffects": ["read"]}, "auto"),
        ({"sideEffects": ["read", "read"]}, "auto"),
        ({"sideEffects": ["read", "write"]}, "manual"),
        ({"sideEffects": ["write"], "idempotencyKey": "k-1"}, "auto"),
        ({"sideEffects": ["write"], "idempotencyKey": ""}, "auto"),  # the empty string counts
        ({"sideEffects": ["write"], "idempotencyKey": 7}, "manual"),
        ({"sideEffect": "external"}, "manual"),
        ({"sideEffect": "read"}, "auto"),
        ({"sideEffect": "none"}, "auto"),
    ],
)
def test_resume_contract__replay_is_explicit_then_legacy_then_inferred(options: dict[str, Any], replay: str) -> None:
    assert protocol.resume_contract(options)["replay"] == replay


def test_resume_contract__copies_invariant_verifier_credentials_and_string_keys() -> None:
    options = {
        "sideEffects": ["write"],
        "idempotencyKey": "order-1",
        "checkpointInvariant": {"rows": 3},
        "verifiedBy": "ledger",
        "credentials": [{"name": "stripe"}],
    }
    assert protocol.resume_contract(options) == {
        "sideEffects": ["write"],
        "idempotencyKey": "order-1",
        "replay": "auto",
        "checkpointInvariant": {"rows": 3},
        "verifiedBy": "ledger",
        "credentials": [{"name": "stripe"}],
    }


@pytest.mark.parametrize(("key", "expected"), [("", ""), ("k", "k"), (1, None), (None, None), (["k"], None)])
def test_resume_contract__idempotency_key_is_kept_only_when_a_string(key: Any, expected: str | None) -> None:
    assert protocol.resume_contract({"idempotencyKey": key})["idempotencyKey"] == expected


@pytest.mark.parametrize(("credentials", "expected"), [("x", []), ({"a": 1}, []), (None, []), ([1, "a"], [1, "a"])])
def test_resume_contract__credentials_are_kept_only_when_an_array(credentials: Any, expected: list[Any]) -> None:
    assert protocol.resume_contract({"credentials": credentials})["credentials"] == expected


# --- classify_failure (§12.2) and failed_step_status (§7.3) -----------------------------------


@pytest.mark.parametrize(
    ("replay", "retryable", "decision"),
    [
        ("auto", True, "auto_retry"),
        ("manual", True, "auto_retry"),
        ("never", True, "auto_retry"),
        ("manual", False, "manual_review"),
        ("auto", False, "safe_replay"),
        ("never", False, "fail_hard"),
        (None, False, "safe_replay"),
    ],
)
def test_classify_failure__retryable_first_then_by_replay(replay: str | None, retryable: bool, decision: str) -> None:
    assert protocol.classify_failure({"replay": replay}, retryable=retryable) == decision


@pytest.mark.parametrize(
    ("retryable", "decision", "status"),
    [
        (True, "auto_retry", "failed_retryable"),
        (True, "manual_review", "failed_retryable"),
        (True, "fail_hard", "failed_retryable"),
        (False, "auto_retry", "failed_retryable"),
        (False, "manual_review", "manual_review"),
        (False, "safe_replay", "failed"),
        (False, "fail_hard", "failed"),
    ],
)
def test_failed_step_status__retryable_or_auto_retry_else_manual_review_else_failed(
    retryable: bool, decision: str, status: str
) -> None:
    assert protocol.failed_step_status(retryable=retryable, decision=decision) == status


# --- requeue_backoff_ms (§6.8) -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("attempt", "delay_ms"),
    [
        (0, 5_000),
        (1, 5_000),
        (2, 10_000),
        (3, 20_000),
        (4, 40_000),
        (5, 80_000),
        (6, 160_000),
        (7, 300_000),
        (8, 300_000),
        (1000, 300_000),
    ],
)
def test_requeue_backoff_ms__5s_after_attempt_1_doubling_capped_at_5_minutes(attempt: int, delay_ms: int) -> None:
    assert protocol.requeue_backoff_ms(attempt) == delay_ms


# --- decide_step_begin (§7.1 steps 3-6 plus the fenced takeover) ----------------------------------


def step(
    *,
    status: str = "running",
    input_hash: str = "h1",
    owner: str | None = "A",
    expires: dt.datetime | None = LIVE,
    fence: int | None = None,
) -> StepView:
    return StepView(
        status=status, input_hash=input_hash, lease_owner=owner, lease_expires_at=expires, lease_fence=fence
    )


@pytest.mark.parametrize(
    ("view", "owner", "run", "action"),
    [
        # the stored hash is checked before completion
        (
            step(status="completed", input_hash="h0", owner=None, expires=None),
            "A",
            RunLeaseView("A", 1),
            "input_mismatch",
        ),
        (step(input_hash="h0"), "A", RunLeaseView("A", 1), "input_mismatch"),
        (step(input_hash="h0"), "B", RunLeaseView("B", 2), "input_mismatch"),
        # a completed step replays
        (step(status="completed", owner=None, expires=None), "B", RunLeaseView(None, 0), "return"),
        # a free, expired or own lease executes
        (step(status="failed", owner=None, expires=None), "B", RunLeaseView(None, 0), "execute"),
        (step(status="failed_retryable", owner=None, expires=None), "A", RunLeaseView("A", 1), "execute"),
        (step(status="manual_review", owner=None, expires=None), "B", RunLeaseView(None, 0), "execute"),
        (step(owner="A"), "A", RunLeaseView("A", 1), "execute"),
        (step(owner="A", expires=EXPIRED), "B", RunLeaseView(None, 0), "execute"),
        (step(owner="A", expires=NOW), "B", RunLeaseView(None, 0), "execute"),  # expiry == now is expired
        (step(owner="A", expires=None), "B", RunLeaseView(None, 0), "execute"),
        # a live lease of another owner is locked...
        (step(owner="A", fence=None), "B", RunLeaseView("B", 2), "locked"),
        (step(owner="A", fence=2), "B", RunLeaseView("B", 2), "locked"),
        (step(owner="A", fence=1), "B", RunLeaseView("C", 2), "locked"),  # superseded, but B is not the run owner
        (step(owner="A", fence=1), "B", RunLeaseView(None, 2), "locked"),
        # ...unless it was taken under an older run lease and the current run lease owner asks
        (step(owner="A", fence=1), "B", RunLeaseView("B", 2), "execute"),
        (step(owner="A", fence=1), "B", RunLeaseView("B", 5), "execute"),
    ],
)
def test_decide_step_begin__follows_the_documented_order(
    view: StepView, owner: str, run: RunLeaseView, action: str
) -> None:
    assert protocol.decide_step_begin(view, input_hash="h1", owner=owner, run=run, now=NOW) == action


@pytest.mark.parametrize(
    ("status", "lease_owner", "expires", "elsewhere"),
    [
        ("running", "A", LIVE, True),
        ("running", "B", LIVE, False),  # the caller's own lease
        ("running", "A", EXPIRED, False),
        ("running", "A", NOW, False),
        ("running", "A", None, False),
        ("running", None, None, False),
        ("pending", None, None, False),
        ("queued", "A", LIVE, False),
        ("completed", None, None, False),
        ("failed", None, None, False),
    ],
)
def test_run_leased_elsewhere__only_a_live_lease_of_another_owner_on_a_running_run(
    status: str, lease_owner: str | None, expires: dt.datetime | None, elsewhere: bool
) -> None:
    got = protocol.run_leased_elsewhere(
        status=status, lease_owner=lease_owner, lease_expires_at=expires, owner="B", now=NOW
    )
    assert got is elsewhere


# --- decide_run_begin (§6.5) -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "lease_owner", "expires", "owner", "action"),
    [
        ("cancelled", "A", LIVE, "B", "cancelled"),
        ("cancelled", None, None, None, "cancelled"),
        ("completed", "A", LIVE, "B", "completed"),
        ("completed", None, None, None, "completed"),
        ("running", "A", LIVE, "B", "leased"),
        ("running", "A", LIVE, None, "leased"),
        ("running", "A", LIVE, "A", "acquire"),
        ("running", "A", EXPIRED, "B", "acquire"),
        ("running", "A", NOW, "B", "acquire"),
        ("running", "A", None, "B", "acquire"),
        ("pending", None, None, None, "acquire"),
        ("queued", None, None, "B", "acquire"),
        ("failed", None, None, "B", "acquire"),
    ],
)
def test_decide_run_begin__refuses_only_a_live_lease_of_another_owner(
    status: str, lease_owner: str | None, expires: dt.datetime | None, owner: str | None, action: str
) -> None:
    got = protocol.decide_run_begin(
        status=status, lease_owner=lease_owner, lease_expires_at=expires, owner=owner, now=NOW
    )
    assert got == action


# --- patch_value = Postgres jsonb || (§7.7) ----------------------------------------------------------

PATCH_CASES: list[tuple[Any, Any, Any]] = [
    ({"a": 1, "b": {"x": 1}}, {"b": {"y": 2}, "c": 3}, {"a": 1, "b": {"y": 2}, "c": 3}),
    ({"a": 1}, {}, {"a": 1}),
    ({}, {"a": None}, {"a": None}),
    ([1, 2], [3], [1, 2, 3]),
    ([], [], []),
    ([1], {"a": 1}, [1, {"a": 1}]),
    ({"a": 1}, [1], [{"a": 1}, 1]),
    ([1], 2, [1, 2]),
    (2, [1], [2, 1]),
    ({"a": 1}, 1, [{"a": 1}, 1]),
    ("a", {"b": 1}, ["a", {"b": 1}]),
    ("a", "b", ["a", "b"]),
    (None, {"a": 1}, [None, {"a": 1}]),
    ({"a": 1}, None, [{"a": 1}, None]),
    (True, False, [True, False]),
]


@pytest.mark.parametrize(("old", "patch", "merged"), PATCH_CASES)
def test_patch_value__merges_like_jsonb_concatenation(old: Any, patch: Any, merged: Any) -> None:
    assert protocol.patch_value(old, patch) == merged


@pytest.mark.django_db
@pytest.mark.parametrize(("old", "patch", "merged"), PATCH_CASES)
def test_patch_value__agrees_with_real_postgres(old: Any, patch: Any, merged: Any) -> None:
    with connection.cursor() as cur:
        cur.execute("SELECT (%s::jsonb || %s::jsonb)::text", [json.dumps(old), json.dumps(patch)])
        (text,) = cur.fetchone()
    assert json.loads(text) == merged == protocol.patch_value(old, patch)
