"""Request bodies, validated with JSON's types and nothing looser (issue #12, item 7).

- **Strict types.** Every model is ``strict``: a boolean is ``true``/``false`` (never ``"y"`` or
  ``1``), a string is a string, an integer is a JSON number with an integral value (``5`` or
  ``5.0``, never ``"5"`` or ``true``), a number is any finite JSON number. Objects and arrays are
  JSON objects and arrays.
- **null.** As upstream (PROTOCOL.md §1): fields typed "any JSON" (``input``, ``data``,
  ``capability``, ``payload``, ``state``, ``value``, ``output``, ``error``, ``result``) accept
  ``null``; an optional typed field (string, number, boolean, object, array) is either absent or of
  its type — ``"leaseOwner": null`` is a 400. The exceptions are the queue-config caps, where
  ``null`` means "keep" (§10.4). Neither SDK sends ``null`` for a typed field (§19).
- **Unknown fields** are ignored, as upstream.

These models are also the request half of the OpenAPI document (``/api/openapi.json``), so the
document states exactly what the server accepts (``tidebase_core.api.openapi``).
"""

from __future__ import annotations

import datetime as dt
import re
from typing import Annotated, Any, Literal, TypeVar

from ninja import Schema
from pydantic import AfterValidator, AnyUrl, AwareDatetime, BeforeValidator, ConfigDict, Field, GetCoreSchemaHandler
from pydantic import GetJsonSchemaHandler as JsonSchemaHandler
from pydantic.json_schema import JsonSchemaValue
from pydantic_core import CoreSchema, core_schema

T = TypeVar("T")


def _not_null(value: object) -> object:
    if value is None:
        raise ValueError("must not be null (omit the field instead)")
    return value


def _integral(value: object) -> object:
    """JSON has one number type: ``5.0`` is the integer 5 (§1 "Integers"); ``5.5`` is not."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def _utc(value: dt.datetime) -> dt.datetime:
    """In UTC: Postgres refuses offsets beyond ±15:59 that ISO-8601 allows (``+17:20``)."""
    return value.astimezone(dt.UTC)


TIMESTAMP_YEARS = r"^(19[7-9][0-9]|[2-8][0-9]{3}|9[0-8][0-9]{2}|99[0-8][0-9])-"
"""Years 1970 to 9989: in UTC, whatever the offset, a timestamp stays within what Python and
Postgres hold (``0001-01-01T00:00:00+01:00`` is in the year 0)."""


def _timestamp_text(value: object) -> object:
    if not isinstance(value, str):
        raise ValueError("must be a string")
    if re.match(TIMESTAMP_YEARS, value) is None:
        raise ValueError("must be an ISO-8601 timestamp in the years 1970 to 9989")
    return value


class _NotNull:
    """Refuse an explicit ``null`` before ``T | None`` validates (so errors keep plain field
    paths), and document the field as ``T`` alone: absent is its default, not ``null``."""

    def __get_pydantic_core_schema__(self, source: Any, handler: GetCoreSchemaHandler) -> CoreSchema:
        return core_schema.no_info_before_validator_function(_not_null, handler(source))

    def __get_pydantic_json_schema__(self, schema: CoreSchema, handler: JsonSchemaHandler) -> JsonSchemaValue:
        js = handler(schema)
        branches = [b for b in js.get("anyOf", ()) if b != {"type": "null"}]
        if len(branches) != 1:
            return js
        return {**branches[0], **{k: v for k, v in js.items() if k != "anyOf"}}


Opt = Annotated[T | None, _NotNull()]
"""An optional field that is either absent or of type ``T``: ``null`` is refused."""

AS_INT = BeforeValidator(_integral)
"""For JSON integers: ``Annotated[int, Field(<bounds>), AS_INT]``. The bounds come before it, so
the document shows them as plain ``minimum``/``maximum``."""


TEN_YEARS_MS = 10 * 365 * 24 * 3600 * 1000
Text = Annotated[str, Field(min_length=1)]
Name = Annotated[str, Field(min_length=1, max_length=1000)]
Owner = Annotated[str, Field(min_length=1, max_length=200)]
Url = AnyUrl
Timestamp = Annotated[
    AwareDatetime,
    Field(strict=False, json_schema_extra={"pattern": TIMESTAMP_YEARS}),
    BeforeValidator(_timestamp_text),
    AfterValidator(_utc),
]
"""An ISO-8601 string with a zone (``Z`` or an offset, §19.11); never a number."""

Object = dict[str, Any]
Millis = Annotated[int, Field(gt=0, le=TEN_YEARS_MS), AS_INT]
Tokens = Annotated[int, Field(ge=0, le=2**53), AS_INT]
"""At most 2**53 (what every JSON client reads exactly): input + output, and the rollups' sums of
up to 1024 records, stay within Postgres ``bigint``."""
Int32Positive = Annotated[int, Field(gt=0, lt=2**31), AS_INT]
Usd = Annotated[float, Field(ge=0, lt=1e9, allow_inf_nan=False)]
"""An amount of US dollars: a budget, a projected cost."""


class _In(Schema):
    model_config = ConfigDict(extra="ignore", strict=True)


class ChannelIn(_In):
    type: Literal["webhook"]
    url: Url
    secret: Opt[str] = None
    events: Opt[list[str]] = None

    def as_dict(self) -> dict[str, Any]:
        return {"type": "webhook", "url": str(self.url), "secret": self.secret, "events": self.events or []}


class RunCreateIn(_In):
    input: Any = None
    metadata: Opt[Object] = None
    recoveryWebhook: Opt[Url] = None
    channels: Opt[list[ChannelIn]] = None
    budgetUsd: Opt[Usd] = None


class ChildCreateIn(RunCreateIn):
    name: Name
    workflowName: Text
    edgeType: Opt[Text] = None
    edgeMetadata: Opt[Object] = None


class HeartbeatIn(_In):
    leaseOwner: Owner


class RunCompleteIn(_In):
    result: Any = None


class RunFailIn(_In):
    error: Any = None
    failureClass: Opt[str] = None


class RunCancelIn(_In):
    # null reads as absent on these two optional bodies: upstream treats any body as optional
    # here, and the official client's ``runs.recover(run_id, reason=None)`` sends a null.
    reason: str | None = None
    actor: str | None = None


class RunRecoverIn(_In):
    reason: str | None = None


OnBudget = Literal["park", "error"]
"""What steps/begin answers when a budget of the run is reached: ``park``, the ``parked`` action
(200, with the budget gate to wait on); ``error`` (the default, for clients that know no such
action, like the official one), 409 ``budget_parked`` with the same gate."""


class StepBeginIn(_In):
    name: Name
    inputHash: Annotated[str, Field(min_length=1, max_length=200)]
    input: Any = None
    options: Opt[Object] = None
    leaseOwner: Opt[Owner] = None
    onBudget: OnBudget = "error"


class BudgetCheckIn(_In):
    """May the run send a request that will cost about ``projectedUsd``?"""

    projectedUsd: Usd
    step: Opt[Name] = None
    onBudget: OnBudget = "park"


class StepCompleteIn(_In):
    leaseOwner: Owner
    output: Any = None


ResumeDecision = Literal["auto_retry", "safe_replay", "manual_review", "fail_hard"]


class StepFailIn(_In):
    leaseOwner: Owner
    error: Any = None
    retryable: bool = False
    resumeDecision: Opt[ResumeDecision] = None


class GateBeginIn(_In):
    name: Name
    prompt: Text
    data: Any = None
    channels: Opt[list[ChannelIn]] = None
    capability: Any = None
    timeoutMs: Opt[Millis] = None


class GateResolveIn(_In):
    token: Opt[str] = None
    decision: Literal["approved", "rejected", "canceled"]
    actor: Opt[Annotated[str, Field(max_length=200)]] = None
    payload: Any = None
    comment: Opt[Annotated[str, Field(max_length=2000)]] = None
    """Additive: the decider's comment (kept on the vote and in the audit trail; an approval
    policy may require one). Without it, ``payload.comment`` is the comment."""


Importance = Literal["transient", "normal", "checkpoint", "milestone"]


class StateWriteIn(_In):
    value: Any = None
    stream: Opt[Name] = None
    label: Opt[Name] = None
    reason: Opt[str] = None
    importance: Importance = "normal"
    metadata: Opt[Object] = None
    createdBy: Opt[str] = None


class StateSaveIn(_In):
    label: Name
    stream: Opt[Name] = None
    reason: Opt[str] = None
    importance: Importance = "milestone"
    metadata: Opt[Object] = None
    createdBy: Opt[str] = None


class TargetIn(_In):
    type: Annotated[str, Field(min_length=1, max_length=500)]
    id: Annotated[str, Field(min_length=1, max_length=500)]


class SnapshotIn(_In):
    label: Name
    state: Any = None
    target: Opt[TargetIn] = None
    reason: Opt[str] = None
    metadata: Opt[Object] = None
    createdBy: Opt[str] = None


class UsageIn(_In):
    stepId: Opt[str] = None
    kind: Text = "custom"
    provider: Opt[str] = None
    model: Opt[str] = None
    label: Opt[str] = None
    unit: Opt[str] = None
    quantity: Opt[Annotated[float, Field(gt=-1e19, lt=1e19, allow_inf_nan=False)]] = None
    inputTokens: Opt[Tokens] = None
    outputTokens: Opt[Tokens] = None
    totalTokens: Opt[Tokens] = None
    costUsd: Opt[Annotated[float, Field(ge=0, le=1e9, allow_inf_nan=False)]] = None
    metadata: Opt[Object] = None


class EnqueueIn(_In):
    workflowName: Text
    input: Any = None
    metadata: Opt[Object] = None
    recoveryWebhook: Opt[Url] = None
    channels: Opt[list[ChannelIn]] = None
    dedupeKey: Opt[Annotated[str, Field(min_length=1, max_length=500)]] = None
    delayMs: Opt[Annotated[int, Field(ge=0, le=TEN_YEARS_MS), AS_INT]] = None
    runAt: Opt[Timestamp] = None
    maxAttempts: Annotated[int, Field(gt=0, le=1000), AS_INT] = 1
    priority: Annotated[int, Field(ge=-(2**31), lt=2**31), AS_INT] = 0
    deadlineMs: Opt[Millis] = None
    budgetUsd: Opt[Usd] = None


class ClaimIn(_In):
    queues: list[Annotated[str, Field(min_length=1, max_length=1000)]] = Field(min_length=1, max_length=100)
    leaseOwner: Opt[Owner] = None
    limit: Annotated[int, Field(ge=1, le=100), AS_INT] = 1
    waitMs: Annotated[int, Field(ge=0, le=TEN_YEARS_MS), AS_INT] = 0


class QueueConfigIn(_In):
    """``null`` keeps the stored value (§10.4): these fields are nullable on purpose."""

    concurrency: Int32Positive | None = None
    ratePerMinute: Int32Positive | None = None
    invokeUrl: Url | None = None
    paused: bool | None = None


CRON_FIELD = r"[0-9*/,-]+"
CRON = rf"^[ \t]*{CRON_FIELD}([ \t]+{CRON_FIELD}){{4}}[ \t]*$"
"""The shape of a 5-field cron (§11.3: numbers, ``*``, ranges, steps and lists; no names). Whether
the values are in range and the expression ever fires is ``cronsim``'s to say (400, ``field``)."""


class ScheduleIn(_In):
    cron: Annotated[str, Field(min_length=1, max_length=200, pattern=CRON)]
    workflowName: Text
    input: Any = None
    queue: Annotated[str, Field(min_length=1, max_length=1000)] = "default"
    maxAttempts: Annotated[int, Field(gt=0, le=1000), AS_INT] = 1
    enabled: bool = True
