"""One workflow, runnable with either Python client: ours (the repo's ``tidebase``) or the
official ``tidebase==0.7.0`` (in var/interop-venv). Used by test_cross_client.py.

    python xclient_worker.py RUN_ID LOG_PATH CRASH_AFTER

Runs (or resumes) RUN_ID; each step that executes appends ``<client>:<i>`` to LOG_PATH. With
CRASH_AFTER >= 0 the process SIGKILLs itself right after step CRASH_AFTER is checkpointed.
While the dead worker's run lease has not lapsed the server answers 409 ``run_leased``; the
worker retries. Prints one JSON line: ``{"client": ..., "result": ...}``.

Only the API both clients share is used, and nothing from the repo is imported.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from typing import Any

import tidebase

CLIENT = "ours" if hasattr(tidebase, "CheckpointDict") else "official"
STEPS = 5
# Step inputs both clients must hash identically (sorted keys, non-ASCII kept, floats as Python
# writes them, nesting).
INPUTS: list[Any] = [
    {"i": 0, "title": "Save crashes — ünïcode", "tags": ["ui", "crash"], "ratio": 2.5, "ok": True, "none": None},
    {"i": 1, "b": {"z": 1, "a": "é"}, "a": [1, 2.5, {"y": None, "x": False}]},
    {"i": 2, "text": "日本語 🚀", "nested": {"deep": {"deeper": [[], {}, ""]}}},
    {"i": 3, "big": 12345678901234567890, "neg": -0.125, "exp": 1e-07},
    {"i": 4},
]


def workflow(log_path: str, crash_after: int) -> Any:
    def run_workflow(run: Any, input: Any) -> int:
        total = 0
        for i in range(STEPS):

            def body(i: int = i) -> dict[str, int]:
                with open(log_path, "a") as fh:
                    fh.write(f"{CLIENT}:{i}\n")
                return {"i": i, "sq": i * i}

            total += run.step(f"step-{i}", body, input=INPUTS[i])["sq"]
            if i == crash_after:
                os.kill(os.getpid(), signal.SIGKILL)
        return total

    return run_workflow


def main() -> None:
    run_id, log_path, crash_after = sys.argv[1], sys.argv[2], int(sys.argv[3])
    tide = tidebase.Tidebase()
    deadline = time.monotonic() + 60
    while True:
        try:
            result = tide.run("xclient", workflow(log_path, crash_after), run_id=run_id)
            break
        except tidebase.TidebaseError as error:  # both clients: .status and .body
            leased = getattr(error, "status", None) == 409 and "run_leased" in str(getattr(error, "body", ""))
            if not leased or time.monotonic() > deadline:
                raise
            time.sleep(0.1)
    print(json.dumps({"client": CLIENT, "result": result}))


if __name__ == "__main__":
    main()
