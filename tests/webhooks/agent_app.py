"""A tiny workflow for the recovery end-to-end test. ``main()`` runs it in a process the test
SIGKILLs while its second step hangs; the test's receiver re-invokes it in-process."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Any

from tidebase import Tidebase

WORKFLOW = "recover-demo"


def _log(path: str, line: str) -> None:
    with Path(path).open("a") as fh:
        fh.write(line + "\n")


def workflow(run: Any, input: Any) -> Any:
    log = input["log"]

    def fetch() -> dict[str, int]:
        _log(log, "fetch")
        return {"n": 1}

    def slow() -> str:
        _log(log, "slow")
        if os.environ.get("AGENT_HANG") == "1":
            time.sleep(600)
        return "done"

    first = run.step("fetch", fetch)
    second = run.step("slow", slow)
    return {"fetch": first, "slow": second}


def register(tide: Tidebase) -> Tidebase:
    tide.workflow(WORKFLOW, workflow)
    return tide


def main() -> None:
    server, webhook, log = sys.argv[1:4]
    with Tidebase(url=server) as tide:
        run = tide.runs.create(WORKFLOW, {"log": log}, recovery_webhook=webhook)
        print(run["id"], flush=True)
        tide.run(WORKFLOW, workflow, run_id=run["id"])


if __name__ == "__main__":
    main()
