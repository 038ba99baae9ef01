"""A worker process for the crash tests: ``python -m tests.pydantic_ai.worker URL RUN_ID DATA_DIR
[--crash-in TOOL]`` runs (or resumes) the triage workflow and prints its result as JSON. With
``--crash-in`` it is SIGKILLed inside that tool. A resume retries while the dead worker's run
lease has not lapsed (409 ``run_leased``)."""

from __future__ import annotations

import argparse
import asyncio
import json
from pathlib import Path
from typing import Any

from tests.live import until_unleased_async
from tests.pydantic_ai.agents import build_triage_agent, triage_workflow
from tidebase.aio import AsyncTidebase


async def main(url: str, run_id: str, data_dir: Path, crash_in: str | None) -> Any:
    agent = build_triage_agent(data_dir, crash_in=crash_in)
    async with AsyncTidebase(url) as tide:
        return await until_unleased_async(
            lambda: tide.run("pai-triage", lambda run, input: triage_workflow(agent, run, input), run_id=run_id)
        )


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("url")
    parser.add_argument("run_id")
    parser.add_argument("data_dir", type=Path)
    parser.add_argument("--crash-in")
    args = parser.parse_args()
    print(json.dumps(asyncio.run(main(args.url, args.run_id, args.data_dir, args.crash_in))), flush=True)
