"""The beat task that applies the retention policy (``TIDEBASE_RETENTION_INTERVAL_S``)."""

from __future__ import annotations

import logging
import time
from typing import Any

from django.conf import settings

from config.celery import app
from retention.services import prune_exclusive

logger = logging.getLogger(__name__)


@app.task(name="tidebase.retention", ignore_result=True)  # type: ignore[untyped-decorator]
def retention() -> dict[str, Any]:
    """One pass, at most ``TIDEBASE_RETENTION_PASS_S`` long (the next pass continues), under an
    advisory lock so two beats do not both do it. Writes a line only when it deleted something
    or had to stop early."""
    report = prune_exclusive(deadline=time.monotonic() + float(settings.TIDEBASE_RETENTION_PASS_S))
    if report is None:
        return {"retention": "busy"}
    summary = report.summary()
    if summary or report.incomplete:
        logger.info(
            "retention: %s%s",
            ", ".join(f"{t}={n}" for t, n in summary.items()) or "nothing deleted",
            f" (continues next pass: {', '.join(report.incomplete)})" if report.incomplete else "",
            extra={"retention": summary, "incomplete": report.incomplete},
        )
    return {"deleted": summary, "batches": report.batches, "incomplete": report.incomplete}
