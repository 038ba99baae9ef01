"""The sync client: steps, a gate, state, and resuming by run id.

Needs a Tidebase server at ``TIDEBASE_URL`` (default http://localhost:7373).
Approve the gate from the dashboard (or the API) while this waits.
"""

from __future__ import annotations

import sys
from typing import Any

from tidebase import RunContext, Tidebase


def make_plan(topic: str) -> dict[str, Any]:
    return {"topic": topic, "sections": ["intro", "findings", "next steps"]}


def workflow(run: RunContext, input: dict[str, Any]) -> Any:
    plan = run.step("plan", lambda: make_plan(input["topic"]), input=input)
    run.state.set({"phase": "awaiting-approval"})
    decision = run.gate("approve-plan", f"Write a report with sections {plan['sections']}?")
    if not decision.approved:
        return {"status": "rejected", "by": decision.actor}
    report = run.step("write", lambda: {"title": plan["topic"], "pages": len(plan["sections"])}, input=plan)
    run.state.set({"phase": "done"})
    return report


if __name__ == "__main__":
    with Tidebase() as tide:
        result = tide.run("report", workflow, run_id=sys.argv[1] if len(sys.argv) > 1 else None, input={"topic": "Q3"})
        print(result)
