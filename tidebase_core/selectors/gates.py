"""Gate reads."""

from __future__ import annotations

import datetime as dt

from django.db.models.functions import Now

from tidebase_core.exceptions import NotFound
from tidebase_core.models import Gate


def gate_get(*, run_id: str, gate_id: str) -> tuple[Gate, str, dt.datetime]:
    """A gate of a run, the run's status (for cancellation detection) and the database clock,
    in one query. Raises NotFound. A pending gate past its ``timeout_at`` is returned as it is
    stored: ``services.gates.gate_expire_if_due`` cancels it."""
    gate = Gate.objects.select_related("run").filter(id=gate_id, run_id=run_id).annotate(db_now=Now()).first()
    if gate is None:
        raise NotFound("gate not found")
    return gate, gate.run.status, gate.db_now
