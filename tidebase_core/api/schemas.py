"""Request bodies. ``Any`` fields accept any JSON (including null), as upstream does; optional
typed fields also accept null as "absent" (a wire-safe relaxation of §1)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from ninja import Schema
from pydantic import AnyUrl, AwareDatetime, ConfigDict, Field, field_validator

NonEmpty = Field(min_length=1)


class _In(Schema):
    model_config = ConfigDict(extra="ignore")


class ChannelIn(_In):
    type: Literal["webhook"]
    url: AnyUrl
    secret: str | None = None
    events: list[str] | None = None

    def as_dict(self) -> dict[str, Any]:
        return {"type": "webhook", "url": str(self.url), "secret": self.secret, "events": self.events or []}


class RunCreateIn(_In):
    input: Any = None
    metadata: dict[str, Any] | None = None
    recoveryWebhook: AnyUrl | None = None
    channels: list[ChannelIn] | None = None


class ChildCreateIn(RunCreateIn):
    name: str = Field(min_length=1)
    workflowName: str = Field(min_length=1)
    edgeType: str | None = Field(default=None, min_length=1)
    edgeMetadata: dict[str, Any] | None = None


class HeartbeatIn(_In):
    leaseOwner: str | None = None


class RunCompleteIn(_In):
    result: Any = None


class RunFailIn(_In):
    error: Any = None
    failureClass: str | None = None


class RunCancelIn(_In):
    reason: str | None = None
    actor: str | None = None


class RunRecoverIn(_In):
    reason: str | None = None


class StepBeginIn(_In):
    name: str = Field(min_length=1, max_length=1000)
    inputHash: str = Field(min_length=1, max_length=200)
    input: Any = None
    options: dict[str, Any] | None = None
    leaseOwner: str | None = Field(default=None, min_length=1, max_length=200)


class StepCompleteIn(_In):
    leaseOwner: str = Field(min_length=1)
    output: Any = None


class StepFailIn(_In):
    leaseOwner: str = Field(min_length=1)
    error: Any = None
    retryable: bool = False
    resumeDecision: Literal["auto_retry", "safe_replay", "manual_review", "fail_hard"] | None = None


class GateBeginIn(_In):
    name: str = Field(min_length=1, max_length=1000)
    prompt: str = Field(min_length=1)
    data: Any = None
    channels: list[ChannelIn] | None = None
    capability: Any = None
    timeoutMs: int | None = Field(default=None, gt=0, le=10 * 365 * 24 * 3600 * 1000)


class GateResolveIn(_In):
    token: str | None = None
    decision: Literal["approved", "rejected", "canceled"]
    actor: str | None = Field(default=None, max_length=200)
    payload: Any = None


Importance = Literal["transient", "normal", "checkpoint", "milestone"]


class StateWriteIn(_In):
    value: Any = None
    stream: str | None = Field(default=None, min_length=1)
    label: str | None = Field(default=None, min_length=1)
    reason: str | None = None
    importance: Importance = "normal"
    metadata: dict[str, Any] | None = None
    createdBy: str | None = None


class StateSaveIn(_In):
    label: str = Field(min_length=1)
    stream: str | None = Field(default=None, min_length=1)
    reason: str | None = None
    importance: Importance = "milestone"
    metadata: dict[str, Any] | None = None
    createdBy: str | None = None


class TargetIn(_In):
    type: str = Field(min_length=1)
    id: str = Field(min_length=1)


class SnapshotIn(_In):
    label: str = Field(min_length=1)
    state: Any = None
    target: TargetIn | None = None
    reason: str | None = None
    metadata: dict[str, Any] | None = None
    createdBy: str | None = None


class UsageIn(_In):
    stepId: str | None = None
    kind: str = Field(default="custom", min_length=1)
    provider: str | None = None
    model: str | None = None
    label: str | None = None
    unit: str | None = None
    quantity: float | None = Field(default=None, allow_inf_nan=False)
    inputTokens: int | None = Field(default=None, ge=0, le=2**62)
    outputTokens: int | None = Field(default=None, ge=0, le=2**62)
    totalTokens: int | None = Field(default=None, ge=0, le=2**62)
    costUsd: float | None = Field(default=None, ge=0, le=1e9, allow_inf_nan=False)
    metadata: dict[str, Any] | None = None

    @field_validator("quantity")
    @classmethod
    def _bounded(cls, v: float | None) -> float | None:
        if v is not None and abs(v) >= 1e19:
            raise ValueError("quantity is out of range")
        return v


class EnqueueIn(_In):
    workflowName: str = Field(min_length=1)
    input: Any = None
    metadata: dict[str, Any] | None = None
    recoveryWebhook: AnyUrl | None = None
    channels: list[ChannelIn] | None = None
    dedupeKey: str | None = Field(default=None, min_length=1, max_length=500)
    delayMs: int | None = Field(default=None, ge=0, le=10 * 365 * 24 * 3600 * 1000)
    runAt: AwareDatetime | None = None
    maxAttempts: int = Field(default=1, gt=0, le=1000)
    priority: int = Field(default=0, ge=-(2**31), lt=2**31)
    deadlineMs: int | None = Field(default=None, gt=0, le=10 * 365 * 24 * 3600 * 1000)


class ClaimIn(_In):
    queues: list[Annotated[str, Field(min_length=1)]] = Field(min_length=1, max_length=100)
    leaseOwner: str | None = Field(default=None, min_length=1, max_length=200)
    limit: int = Field(default=1, ge=1, le=100)
    waitMs: int = Field(default=0, ge=0)


class QueueConfigIn(_In):
    concurrency: int | None = Field(default=None, gt=0, lt=2**31)
    ratePerMinute: int | None = Field(default=None, gt=0, lt=2**31)
    invokeUrl: AnyUrl | None = None
    paused: bool | None = None


class ScheduleIn(_In):
    cron: str = Field(min_length=1, max_length=200)
    workflowName: str = Field(min_length=1)
    input: Any = None
    queue: str = Field(default="default", min_length=1)
    maxAttempts: int = Field(default=1, gt=0, le=1000)
    enabled: bool = True
