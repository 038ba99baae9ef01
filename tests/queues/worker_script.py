"""A pull worker (our SDK) for test_worker_crash: executes ``crashy`` runs from queue ``jobs``,
appending each step execution to a log file; with ``CRASH_AT=k`` it SIGKILLs itself right after
step k is checkpointed. It stops when the stop file exists."""

from __future__ import annotations

import os
import signal
import sys
from typing import Any

from tidebase import Tidebase

log_path, stop_path = sys.argv[1], sys.argv[2]
crash_at = int(os.environ.get("CRASH_AT", "-1"))
tide = Tidebase()


@tide.workflow("crashy")
def crashy(run: Any, input: Any) -> int:
    total = 0
    for i in range(6):

        def body(i: int = i) -> int:
            with open(log_path, "a") as fh:
                fh.write(f"{i}\n")
            return i

        total += run.step(f"step-{i}", body, input={"i": i})
        if i == crash_at:
            os.kill(os.getpid(), signal.SIGKILL)
    return total


if __name__ == "__main__":
    tide.work(["jobs"], poll_s=0.05, stop=lambda: os.path.exists(stop_path))
