"""Run under the official client's venv: a 10-step run is killed (SIGKILL) after step 5,
then resumed with the same run id; finished steps must not execute again.

The dead worker's run lease has to lapse first (``TIDEBASE_LEASE_MS``; the official client never
heartbeats), so the resume retries while the server answers 409 ``run_leased``."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time

from tidebase import Tidebase, TidebaseError

tide = Tidebase()


def workflow_factory(log_path: str, crash_after: int | None):
    def workflow(run, input):  # type: ignore[no-untyped-def]
        total = 0
        for i in range(10):

            def body(i: int = i) -> int:
                with open(log_path, "a") as fh:
                    fh.write(f"{i}\n")
                return i * i

            total += run.step(f"step-{i}", body, input={"i": i})
            if crash_after is not None and i == crash_after:
                os.kill(os.getpid(), signal.SIGKILL)
        return total

    return workflow


def main() -> None:
    if len(sys.argv) == 4 and sys.argv[1] == "child":
        run_id, log_path = sys.argv[2], sys.argv[3]
        tide.run("crash-resume", workflow_factory(log_path, crash_after=4), run_id=run_id)
        return
    log_path = tempfile.mktemp(suffix=".log")
    run = tide.runs.create("crash-resume", input={})
    child = subprocess.run([sys.executable, __file__, "child", run["id"], log_path], check=False)
    assert child.returncode == -signal.SIGKILL, child.returncode
    with open(log_path) as fh:
        before = [int(x) for x in fh.read().split()]
    assert before == [0, 1, 2, 3, 4], before
    deadline = time.monotonic() + 180
    while True:
        try:
            result = tide.run("crash-resume", workflow_factory(log_path, crash_after=None), run_id=run["id"])
            break
        except TidebaseError as exc:
            if exc.status != 409 or '"run_leased"' not in exc.body or time.monotonic() > deadline:
                raise
            time.sleep(0.25)
    with open(log_path) as fh:
        executions = [int(x) for x in fh.read().split()]
    assert executions == list(range(10)), executions
    assert result == sum(i * i for i in range(10)), result
    detail = tide.runs.get(run["id"])
    assert detail["run"]["status"] == "completed"
    print(json.dumps({"run": run["id"], "executions": executions, "result": result}))


if __name__ == "__main__":
    main()
