"""The step and gate protocol decisions, shared by both clients (no I/O).

Covers encoding a step call once (:class:`StepSpec`), reading the
``steps/begin`` answer, the resume cache of completed steps, the failure
classification of PROTOCOL §12.3, and the gate wait loop.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Mapping
from typing import Any

from ._base import GATE_DECISIONS, GATE_LONG_POLL_MS, compact, serialize_error
from ._exceptions import (
    AsyncStepInSyncClient,
    InputMismatch,
    RunCancelled,
    StepLocked,
    StepOutputNotSerializable,
    TidebaseError,
)
from ._json import hash_input, revalidate, to_json_data, wrap_replayed

__all__ = [
    "FATAL_STEP_ERRORS",
    "GateDecision",
    "GateWaiter",
    "StepCache",
    "StepSpec",
    "check_begin",
    "classify_resume_decision",
    "gate_poll_answer",
    "map_gate",
]


# ---- steps -----------------------------------------------------------------


@dataclasses.dataclass
class StepSpec:
    """A step call, encoded once: ``input`` is JSON data, ``input_hash`` set."""

    name: str
    input: Any
    input_hash: str
    options: dict[str, Any]
    retries: int
    timeout_s: float | None
    returns: Any

    @classmethod
    def build(
        cls,
        name: str,
        *,
        input: Any = None,
        input_hash: str | None = None,
        retries: int = 0,
        timeout_s: float | None = None,
        side_effects: list[str] | None = None,
        idempotency_key: str | None = None,
        replay: str | None = None,
        checkpoint_invariant: Any = None,
        verified_by: Any = None,
        credentials: list[Any] | None = None,
        returns: Any = None,
    ) -> StepSpec:
        data = to_json_data(input, "input")
        options = compact(
            retries=retries or None,
            timeoutMs=None if timeout_s is None else int(timeout_s * 1000),
            sideEffects=side_effects,
            idempotencyKey=idempotency_key,
            replay=replay,
            checkpointInvariant=checkpoint_invariant,
            verifiedBy=verified_by,
            credentials=credentials,
        )
        return cls(name, data, input_hash or hash_input(data), options, max(0, retries), timeout_s, returns)

    def begin_body(self, lease_owner: str) -> dict[str, Any]:
        return {
            "name": self.name,
            "inputHash": self.input_hash,
            "input": self.input,
            "options": self.options,
            "leaseOwner": lease_owner,
        }

    def replayed(self, output: Any) -> Any:
        return wrap_replayed(output) if self.returns is None else revalidate(output, self.returns)

    def fresh(self, value: Any, encoded: Any) -> Any:
        return value if self.returns is None else revalidate(encoded, self.returns)

    def encode_output(self, value: Any) -> Any:
        try:
            return to_json_data(value, "output")
        except TypeError as error:
            raise StepOutputNotSerializable(
                f"Step {self.name!r} returned {type(value).__qualname__}, which cannot be checkpointed "
                f"as JSON ({error}). Return plain JSON data instead: for a Pydantic AI result return "
                "`result.output` (or `result.output.model_dump()`), for a Pydantic model `.model_dump()`, "
                "for other objects a dict of the fields you need. The step was failed (fail_hard) "
                "and will not be retried.",
                code="output_not_serializable",
            ) from error

    def fail_body(self, lease_owner: str, error: BaseException, *, retryable: bool) -> dict[str, Any]:
        if isinstance(error, FATAL_STEP_ERRORS):
            decision = "fail_hard"
        elif retryable:
            decision = "auto_retry"
        else:
            decision = classify_resume_decision(self.options)
        return {
            "leaseOwner": lease_owner,
            "retryable": retryable,
            "resumeDecision": decision,
            "error": serialize_error(error),
        }


FATAL_STEP_ERRORS = (StepOutputNotSerializable, AsyncStepInSyncClient)


def classify_resume_decision(options: Mapping[str, Any]) -> str:
    """What a final step failure means for a resume (PROTOCOL §12.3)."""
    replay = options.get("replay")
    if replay in ("manual", "never", "auto"):
        return {"manual": "manual_review", "never": "fail_hard", "auto": "safe_replay"}[replay]
    side_effects = [e for e in (options.get("sideEffects") or []) if e]
    writes = bool(side_effects) and not all(e == "read" for e in side_effects)
    if writes and not options.get("idempotencyKey"):
        return "manual_review"
    return "safe_replay"


def check_begin(answer: Mapping[str, Any], run_id: str, spec: StepSpec, path: str) -> str:
    """Return ``"return"`` or ``"execute"``; raise for every other action."""
    action = answer.get("action")
    if action in ("return", "execute"):
        return str(action)
    if action == "cancelled":
        raise RunCancelled(run_id, body=dict(answer))
    if action == "input_mismatch":
        raise InputMismatch(
            spec.name, str(answer.get("expectedInputHash")), str(answer.get("actualInputHash")), path=path
        )
    if action == "locked":
        raise StepLocked(
            f"Step {spec.name!r} is leased by another worker",
            status=200,
            code="step_locked",
            body=dict(answer),
            path=path,
        )
    raise TidebaseError(f"steps/begin answered an unknown action {action!r}", body=dict(answer), path=path)


class StepCache:
    """Completed steps of one run, loaded once on resume (name → hash, output)."""

    def __init__(self) -> None:
        self._steps: dict[str, tuple[str, Any]] = {}

    def load(self, answer: Mapping[str, Any]) -> None:
        for step in answer.get("steps") or []:
            if step.get("status", "completed") == "completed" and "output" in step:
                self._steps[step["name"]] = (step["inputHash"], step["output"])

    def remember(self, spec: StepSpec, output: Any) -> None:
        self._steps[spec.name] = (spec.input_hash, output)

    def lookup(self, spec: StepSpec, path: str) -> tuple[bool, Any]:
        """``(True, value)`` on a hit; raises :class:`InputMismatch` on a changed input."""
        if spec.name not in self._steps:
            return False, None
        stored_hash, output = self._steps[spec.name]
        if stored_hash != spec.input_hash:
            raise InputMismatch(spec.name, stored_hash, spec.input_hash, path=path)
        return True, spec.replayed(output)


# ---- gates -----------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class GateDecision:
    """The resolution of a gate. ``approved`` is the usual check."""

    gate_id: str
    name: str
    status: str
    decision: str
    actor: str | None = None
    payload: Any = None

    @classmethod
    def from_gate(cls, gate: Mapping[str, Any]) -> GateDecision:
        if gate.get("decision") not in GATE_DECISIONS:
            raise TidebaseError(
                f"Gate {gate.get('name')!r} resolved with unsupported decision {gate.get('decision')!r}"
            )
        payload = gate.get("decisionPayload")
        return cls(
            gate_id=gate["id"],
            name=gate["name"],
            status=gate["status"],
            decision=gate["decision"],
            actor=gate.get("actor"),
            payload=wrap_replayed(payload),
        )

    @property
    def approved(self) -> bool:
        return self.decision == "approved"

    @property
    def rejected(self) -> bool:
        return self.decision == "rejected"


def map_gate(gate: Mapping[str, Any]) -> dict[str, Any]:
    """The non-blocking gate view: ``{gateId, name, status, decision, actor, payload}``."""
    return {
        "gateId": gate["id"],
        "name": gate["name"],
        "status": gate["status"],
        "decision": gate.get("decision"),
        "actor": gate.get("actor"),
        "payload": gate.get("decisionPayload"),
    }


class GateWaiter:
    """Drives ``gate()``: long-poll while the server supports it, else poll.

    The server answers ``GET …/gates/:id?waitMs=N`` as soon as the gate leaves
    ``pending`` (or the run is cancelled), or after ``N`` ms. A server that
    ignores ``waitMs`` answers at once with a pending gate; that is detected
    and the waiter falls back to sleeping ``poll_s`` between polls.
    """

    def __init__(self, timeout_s: float | None, poll_s: float, long_poll: bool) -> None:
        self.deadline = None if timeout_s is None else time.monotonic() + timeout_s
        self.poll_s = poll_s
        self.long_poll = long_poll

    def remaining_s(self) -> float | None:
        return None if self.deadline is None else self.deadline - time.monotonic()

    def expired(self) -> bool:
        remaining = self.remaining_s()
        return remaining is not None and remaining <= 0

    def wait_ms(self) -> int:
        remaining = self.remaining_s()
        wait = GATE_LONG_POLL_MS if remaining is None else min(GATE_LONG_POLL_MS, int(remaining * 1000))
        return max(0, wait)

    def params(self) -> dict[str, str] | None:
        return {"waitMs": str(self.wait_ms())} if self.long_poll else None

    def after_pending_poll(self, asked_ms: int, elapsed_s: float) -> float:
        """Seconds to sleep after a poll that came back still pending."""
        early = elapsed_s < asked_ms / 2000  # a long-poll answered before half its wait
        if self.long_poll and not early:
            return 0.0
        if self.long_poll and asked_ms >= 1000:
            self.long_poll = False  # the server ignores waitMs: poll from now on
        remaining = self.remaining_s()
        return self.poll_s if remaining is None else max(0.0, min(self.poll_s, remaining))


def gate_poll_answer(answer: Mapping[str, Any], run_id: str) -> Mapping[str, Any]:
    if answer.get("runStatus") == "cancelled":
        raise RunCancelled(run_id, body=dict(answer))
    gate: Mapping[str, Any] = answer["gate"]
    return gate
