"""The token/cost ledger (§7.9)."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from django.db import transaction

from tidebase_core import ids, wire
from tidebase_core.exceptions import InvalidRequest, RunNotFound
from tidebase_core.models import Run, Step, UsageRecord
from tidebase_core.services.events import event_append, notify_channels
from tidebase_core.services.idempotency import claim_key


@transaction.atomic(durable=True)
def usage_record(
    *,
    run_id: str,
    step_id: str | None = None,
    kind: str = "custom",
    provider: str | None = None,
    model: str | None = None,
    label: str | None = None,
    quantity: Decimal | None = None,
    unit: str | None = None,
    input_tokens: int | None = None,
    output_tokens: int | None = None,
    total_tokens: int | None = None,
    cost_usd: Decimal | None = None,
    metadata: dict[str, Any] | None = None,
    idempotency: tuple[str, str] | None = None,
) -> UsageRecord:
    """Append a usage row; ``totalTokens`` defaults to input + output when either is given.
    Raises RunNotFound, or InvalidRequest for a ``stepId`` that is not a step of this run.
    Emits ``usage.recorded`` and its channel event. With ``idempotency=(scope, key)`` a retried
    request returns the record the first one made, so a retry never double-counts."""
    if not Run.objects.filter(id=run_id).exists():
        raise RunNotFound()
    if step_id is not None and not Step.objects.filter(id=step_id, run_id=run_id).exists():
        raise InvalidRequest("stepId is not a step of this run", field="stepId")
    new_id = ids.usage_id()
    if idempotency is not None:
        earlier = claim_key(scope=idempotency[0], key=idempotency[1], resource_id=new_id)
        if earlier is not None:
            return UsageRecord.objects.get(id=earlier)
    if total_tokens is None and (input_tokens is not None or output_tokens is not None):
        total_tokens = (input_tokens or 0) + (output_tokens or 0)
    record = UsageRecord.objects.create(
        id=new_id,
        run_id=run_id,
        step_id=step_id,
        kind=kind,
        provider=provider,
        model=model,
        label=label,
        quantity=quantity,
        unit=unit,
        input_tokens=input_tokens,
        output_tokens=output_tokens,
        total_tokens=total_tokens,
        cost_usd=cost_usd,
        metadata=metadata or {},
    )
    out = wire.usage_out(record)
    event_append(run_id=run_id, type="usage.recorded", payload={"usage": out})
    notify_channels(run_id=run_id, event_type="usage.recorded", payload={"usage": out})
    return record
