"""A webhook receiver that restarts the bug-triage agent when Tidebase says so.

Tidebase sends ``run.resume`` when a run's worker died (its lease expired), when the run failed
(``run_failed``) or when an operator asks (``manual``); this receiver verifies the signature,
drops replays and resumes the agent with the same run id, so finished steps (the ticket, the
model's triage) replay from their checkpoints and only the rest executes.

    export TIDEBASE_URL=http://localhost:7373 TIDEBASE_WEBHOOK_SECRET=change-me
    python -m tidebase.receiver --app examples.receiver.app:handler --port 8088

The server side needs ``TIDEBASE_WEBHOOK_SECRET`` set to the same value and, because the
receiver is on loopback, ``TIDEBASE_WEBHOOK_ALLOW_HOSTS=127.0.0.1,localhost``.
"""

from __future__ import annotations

import logging
import os
from typing import Any

from tidebase.receiver import WebhookHandler

logger = logging.getLogger("examples.receiver")

WORKFLOW = "bug-triage"


class TriageResumer:
    """Resumes runs of the (async, Pydantic AI) bug-triage agent. The agent module is imported
    lazily: it pulls in Pydantic AI, which the receiver itself does not need."""

    def run(self, name: str, workflow: Any = None, run_id: str | None = None) -> Any:
        from examples.bug_triage import agent

        assert run_id is not None
        return agent.run_workflow(run_id)  # a coroutine: the handler runs it on its own thread


handler = WebhookHandler(TriageResumer(), secret=os.environ.get("TIDEBASE_WEBHOOK_SECRET"), workflows=[WORKFLOW])


@handler.on("gate.created")
def approval_requested(message: dict[str, Any]) -> None:
    """Channel deliveries can land here too: log the link a reviewer would open."""
    gate = message["payload"]["gate"]
    logger.warning("approval needed for run %s: %s → %s", message["runId"], gate.get("name"), gate.get("resolveUrl"))


if __name__ == "__main__":
    from tidebase.receiver import main

    main(["--app", "examples.receiver.app:handler", "--port", "8088"])
