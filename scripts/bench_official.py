"""Benchmark worker for the official ``tidebase==0.7.0`` client. Runs *inside* var/interop-venv
(started by scripts/bench.py) so ``import tidebase`` is the PyPI client, never the repo's SDK.

Usage: ``bench_official.py <config-json>`` with keys ``url`` (the Tidebase server), ``rtt_url``
(a bare HTTP server), and loop sizes. Prints one JSON object of raw measurements (milliseconds).

With ``"mode": "routes"`` it measures one round of the route table that ``make bench`` prints
side by side for two servers (``routes()``; no ``rtt_url`` needed): GET /health, a step
(begin + complete), steps/s with 8 client threads, a replayed step, a usage record, a state
set, run overhead (create + begin + complete of an empty workflow) and a resume invocation
(run detail with its step list + begin, on a failed run whose steps are all finished).
"""

from __future__ import annotations

import json
import statistics
import sys
import threading
import time
import urllib.request
from typing import Any

import tidebase
from tidebase import Tidebase


def pct(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


def summary(samples_s: list[float]) -> dict[str, float]:
    ms = [s * 1000 for s in samples_s]
    return {
        "p50": round(pct(ms, 0.50), 3),
        "p95": round(pct(ms, 0.95), 3),
        "mean": round(statistics.fmean(ms), 3),
        "n": len(ms),
    }


def bare_rtt(url: str, n: int) -> list[float]:
    """The same transport the official client uses: urllib.request, one connection per request,
    a small JSON POST body, read and decode a JSON answer."""
    body = json.dumps({"name": "step-1", "inputHash": "x" * 64, "input": {"i": 1}}).encode()
    samples = []
    for i in range(n + 20):
        req = urllib.request.Request(url, data=body, headers={"content-type": "application/json"}, method="POST")
        t0 = time.perf_counter()
        with urllib.request.urlopen(req) as response:
            json.loads(response.read().decode())
        if i >= 20:
            samples.append(time.perf_counter() - t0)
    return samples


def health_rtt(url: str, n: int) -> list[float]:
    """GET /health on the Tidebase server with the same transport: the framework floor (no SQL)."""
    samples = []
    for i in range(n + 20):
        req = urllib.request.Request(url + "/health", headers={"content-type": "application/json"}, method="GET")
        t0 = time.perf_counter()
        with urllib.request.urlopen(req) as response:
            json.loads(response.read().decode())
        if i >= 20:
            samples.append(time.perf_counter() - t0)
    return samples


def timed_steps(tide: Tidebase, n: int, prefix: str, fail_at_end: bool = False) -> tuple[str, list[float], float]:
    """Run one workflow of n trivial steps; returns (run_id, per-step seconds, wall seconds)."""
    samples: list[float] = []

    def workflow(run: Any, _input: Any) -> Any:
        for i in range(n):
            t0 = time.perf_counter()
            run.step(f"{prefix}-{i}", lambda i=i: {"i": i, "ok": True}, input={"i": i})
            samples.append(time.perf_counter() - t0)
        if fail_at_end:
            raise RuntimeError("stop here so the run can be resumed")
        return n

    run = tide.runs.create("bench", input={"n": n})
    t0 = time.perf_counter()
    try:
        tide.run("bench", workflow, run_id=run["id"])
    except RuntimeError:
        if not fail_at_end:
            raise
    return run["id"], samples, time.perf_counter() - t0


def threaded(url: str, threads: int, steps: int) -> dict[str, Any]:
    barrier = threading.Barrier(threads + 1)
    results: list[list[float]] = []
    errors: list[BaseException] = []

    def worker(k: int) -> None:
        tide = Tidebase(url=url)
        run = tide.runs.create("bench", input={"thread": k})
        samples: list[float] = []

        def workflow(ctx: Any, _input: Any) -> Any:
            barrier.wait()
            for i in range(steps):
                t0 = time.perf_counter()
                ctx.step(f"t{k}-{i}", lambda i=i: i, input={"i": i})
                samples.append(time.perf_counter() - t0)
            return steps

        try:
            tide.run("bench", workflow, run_id=run["id"])
        except BaseException as exc:
            errors.append(exc)
        results.append(samples)

    pool = [threading.Thread(target=worker, args=(k,)) for k in range(threads)]
    for t in pool:
        t.start()
    barrier.wait()
    t0 = time.perf_counter()
    for t in pool:
        t.join()
    wall = time.perf_counter() - t0
    if errors:
        raise errors[0]
    flat = [s for r in results for s in r]
    return {
        "threads": threads,
        "steps": len(flat),
        "wall_s": round(wall, 3),
        "steps_per_s": len(flat) / wall,
        "step_ms": summary(flat),
    }


def gate_latency(url: str, samples: int) -> list[float]:
    """Decision sent (raw HTTP resolve) → run.gate() returning, with the client's default poll_s."""
    tide = Tidebase(url=url)
    out: list[float] = []
    for k in range(samples):
        run = tide.runs.create("bench-gate")
        returned_at: list[float] = []

        def workflow(ctx: Any, _input: Any, k: int = k, returned_at: list[float] = returned_at) -> Any:
            decision = ctx.gate(f"g{k}", "approve?")  # default poll_s
            returned_at.append(time.perf_counter())
            return decision.decision

        worker = threading.Thread(
            target=lambda run=run, workflow=workflow: tide.run("bench-gate", workflow, run_id=run["id"])
        )
        worker.start()
        gate = None
        while gate is None:
            gates = tide.runs.get(run["id"])["gates"]
            gate = gates[0] if gates else None
            if gate is None:
                time.sleep(0.01)
        time.sleep(0.05 + (k % 4) * 0.23)  # decide at varied phases of the poll interval
        body = json.dumps({"token": gate["resolveToken"], "decision": "approved", "actor": "bench"}).encode()
        req = urllib.request.Request(
            f"{url}/runs/{run['id']}/gates/{gate['id']}/resolve",
            data=body,
            headers={"content-type": "application/json"},
            method="POST",
        )
        sent = time.perf_counter()
        with urllib.request.urlopen(req) as response:
            response.read()
        worker.join(30)
        out.append(returned_at[0] - sent)
    return out


def main(config: dict[str, Any]) -> dict[str, Any]:
    url = config["url"]
    tide = Tidebase(url=url)
    result: dict[str, Any] = {"client_version": getattr(tidebase, "__version__", None) or _version()}

    result["bare_rtt_ms"] = summary(bare_rtt(config["rtt_url"], config["rtt_samples"]))

    result["server_health_ms"] = summary(health_rtt(url, config["rtt_samples"]))
    timed_steps(tide, config["warmup_steps"], "warm")  # connections, caches, JIT-less warm-up
    _, seq, wall = timed_steps(tide, config["sequential_steps"], "seq")
    result["sequential"] = {"step_ms": summary(seq), "steps_per_s": len(seq) / wall, "wall_s": round(wall, 3)}

    result["threads"] = {str(n): threaded(url, n, config["thread_steps"]) for n in config["thread_counts"]}

    run_id, _, _ = timed_steps(tide, config["replay_steps"], "rep", fail_at_end=True)
    replayed: list[float] = []

    def replay(ctx: Any, _input: Any) -> Any:
        for i in range(config["replay_steps"]):
            t0 = time.perf_counter()
            ctx.step(f"rep-{i}", lambda: (_ for _ in ()).throw(AssertionError("re-executed")), input={"i": i})
            replayed.append(time.perf_counter() - t0)
        return "replayed"

    assert tide.run("bench", replay, run_id=run_id) == "replayed"
    result["replayed_step_ms"] = summary(replayed)

    import inspect

    from tidebase import RunContext

    result["gate_poll_s_default"] = inspect.signature(RunContext.gate).parameters["poll_s"].default
    result["gate_latency_ms"] = summary(gate_latency(url, config["gate_samples"]))
    return result


USAGE_BODY: dict[str, Any] = {
    "kind": "llm",
    "provider": "openai",
    "model": "gpt-4o-mini",
    "input_tokens": 1200,
    "output_tokens": 350,
    "cost_usd": 0.0021,
    "metadata": {"bench": True},
}


def state_value(i: int) -> dict[str, Any]:
    return {"i": i, "status": "working", "items": ["a", "b", "c"], "progress": {"done": i, "total": 100}}


def timed_in_run(tide: Tidebase, n: int, call: Any) -> list[float]:
    """``call(ctx, i)`` n times inside one running run; per-call seconds."""
    samples: list[float] = []

    def workflow(ctx: Any, _input: Any) -> Any:
        for i in range(n):
            t0 = time.perf_counter()
            call(ctx, i)
            samples.append(time.perf_counter() - t0)
        return n

    tide.run("bench-routes", workflow, input={"n": n})
    return samples


def run_overhead(tide: Tidebase, n: int) -> list[float]:
    """Create + begin + complete of a workflow with no steps (``tide.run`` without a run id)."""
    samples = []
    for i in range(n):
        t0 = time.perf_counter()
        tide.run("bench-overhead", lambda _ctx, _input: None, input={"i": i})
        samples.append(time.perf_counter() - t0)
    return samples


def resume_invocations(tide: Tidebase, n: int, steps: int) -> list[float]:
    """What ``tide.run(name, wf, run_id=...)`` sends before the workflow replays: the run detail
    (``GET /runs/:id``, with its step list) and ``POST /runs/:id/begin``, on a run that failed
    after ``steps`` finished steps. One fresh run per sample, prepared untimed."""
    prepared = []
    for k in range(n):
        run_id, _, _ = timed_steps(tide, steps, f"resume{k}", fail_at_end=True)
        prepared.append(run_id)
    samples = []
    for run_id in prepared:
        t0 = time.perf_counter()
        detail = tide.runs.get(run_id)
        tide.request("POST", f"/runs/{run_id}/begin")
        samples.append(time.perf_counter() - t0)
        assert len(detail["steps"]) == steps, detail["steps"]
    return samples


def routes(config: dict[str, Any]) -> dict[str, Any]:
    """One round of the route table: p50 ms per route (and steps/s with 8 threads)."""
    url = config["url"]
    tide = Tidebase(url=url)
    n = config["samples"]
    health_rtt(url, 20)
    timed_steps(tide, config["warmup_steps"], "warm")
    _, seq, _ = timed_steps(tide, n, "seq")
    eight = threaded(url, 8, config["thread_steps"])
    run_id, _, _ = timed_steps(tide, n, "rep", fail_at_end=True)
    replayed: list[float] = []

    def replay(ctx: Any, _input: Any) -> Any:
        for i in range(n):
            t0 = time.perf_counter()
            ctx.step(f"rep-{i}", lambda: (_ for _ in ()).throw(AssertionError("re-executed")), input={"i": i})
            replayed.append(time.perf_counter() - t0)
        return "replayed"

    assert tide.run("bench", replay, run_id=run_id) == "replayed"
    usage = timed_in_run(tide, n, lambda ctx, _i: ctx.usage.record(**USAGE_BODY))
    state = timed_in_run(tide, n, lambda ctx, i: ctx.state.set(state_value(i)))
    overhead = run_overhead(tide, config["overhead_samples"])
    resume = resume_invocations(tide, config["resume_samples"], config["resume_steps"])
    health = health_rtt(url, n)
    p50 = {
        "step_ms": seq,
        "replayed_step_ms": replayed,
        "usage_record_ms": usage,
        "state_set_ms": state,
        "run_overhead_ms": overhead,
        "resume_invocation_ms": resume,
        "health_ms": health,
    }
    result: dict[str, Any] = {k: summary(v)["p50"] for k, v in p50.items()}
    result["steps_per_s_8_threads"] = round(eight["steps_per_s"], 1)
    result["client_version"] = getattr(tidebase, "__version__", None) or _version()
    return result


def _version() -> str:
    from importlib.metadata import version

    return version("tidebase")


if __name__ == "__main__":
    cfg = json.loads(sys.argv[1])
    print(json.dumps(routes(cfg) if cfg.get("mode") == "routes" else main(cfg)), flush=True)
