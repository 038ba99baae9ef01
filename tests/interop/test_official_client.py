"""The official ``tidebase==0.7.0`` client (PyPI, unchanged) against a live server.

Every test runs one scenario from ``scenarios.py`` inside ``var/interop-venv``; the scenario does
its own assertions and returns a JSON summary that is re-checked here."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import start_live_server
from tests.interop.conftest import INTEROP_VENV, OFFICIAL_VERSION, ScenarioRunner, run_scenario

pytestmark = pytest.mark.interop

SHORT_LEASE_S = 1.5


def test_client_identity__is_the_pypi_client_in_its_own_venv(scenario: ScenarioRunner) -> None:
    info = scenario("client_identity")
    assert info["version"] == OFFICIAL_VERSION
    assert Path(info["prefix"]).resolve() == INTEROP_VENV.resolve()
    assert Path(info["file"]).resolve().is_relative_to(INTEROP_VENV.resolve())


def test_crash_mid_run__resumes_in_a_new_process_without_re_executing_finished_steps(
    interop_python: Path, test_database_url: str, tmp_path: Path
) -> None:
    # A dedicated server with a short lease, so the dead worker's leases lapse quickly.
    server = start_live_server(test_database_url, TIDEBASE_LEASE_MS=str(int(SHORT_LEASE_S * 1000)))
    try:
        out = run_scenario(interop_python, server.url, "crash_resume", str(tmp_path), str(SHORT_LEASE_S))
    finally:
        server.stop()
    assert out["counts_at_crash"] == {**{f"step{i}": 1 for i in range(1, 7)}, **{f"step{i}": 0 for i in range(7, 11)}}
    assert out["counts"] == {**{f"step{i}": 1 for i in range(1, 11)}, "step6": 2}
    assert out["result"] == {"total": 155}
    assert out["step_started_events"] == 11  # 10 steps + step 6 again


def test_retries__two_failures_then_success_is_three_attempts(scenario: ScenarioRunner) -> None:
    out = scenario("retries")
    assert out["attempts"] == [1, 2, 3]
    assert out["failed_events"] == 2
    assert out["exhausted_decisions"] == ["auto_retry", "safe_replay"]


@pytest.mark.parametrize("decision", ["approved", "rejected"])
def test_gate__blocking_gate_resolved_over_http_by_another_process(scenario: ScenarioRunner, decision: str) -> None:
    out = scenario("gate", decision)
    assert out["decision"] == decision
    assert out["result"] == {"published": decision == "approved"}
    assert out["reviewer"]["gate_id"].startswith("gate_")


def test_state__set_patch_save_versions_and_snapshots(scenario: ScenarioRunner) -> None:
    out = scenario("state_and_snapshots")
    assert out["versions"] == 6
    assert out["snapshots"] == ["run-snap", "report-v1", "final", "halfway"]


def test_usage__recorded_cost_is_a_json_number_in_run_detail(scenario: ScenarioRunner) -> None:
    out = scenario("usage")
    assert out["costs"] == [0.0123, 0.5]
    assert out["total_tokens"] == 150


def test_children_and_fanout__idempotent_children_and_durable_join(scenario: ScenarioRunner, tmp_path: Path) -> None:
    out = scenario("children_and_fanout", str(tmp_path))
    assert out["result"] == {"single": 49, "again": 49, "fanout": [1, 4, 9, 16]}
    assert out["children"] == 5


def test_session__attach_with_heartbeat_steps_then_complete(scenario: ScenarioRunner) -> None:
    out = scenario("session")
    assert out["outputs"] == [{"turn": 0}, {"turn": 1}, {"turn": 2}]


def test_cancel__observed_at_the_next_step(scenario: ScenarioRunner) -> None:
    out = scenario("cancel_between_steps")
    assert out["executed"] == ["one"]
    assert "run.cancelled" in out["events"]


def test_cancel__observed_while_blocked_in_a_gate(scenario: ScenarioRunner) -> None:
    out = scenario("cancel_in_gate")
    assert out["error"] == "RunCancelled"  # not the gate's own timeout


def test_subscribe__yields_backlog_then_live_events(scenario: ScenarioRunner) -> None:
    out = scenario("subscribe")
    assert out["backlog"][0] == "run.created"
    assert out["backlog"][-1] == "run.completed"
    assert out["live"] == ["step.started", "step.completed", "run.completed"]


def test_manual_review__unkeyed_side_effecting_failure(scenario: ScenarioRunner) -> None:
    out = scenario("manual_review")
    assert out["unkeyed-write"] == {"status": "manual_review", "decision": "manual_review"}
    assert out["keyed-write"] == {"status": "failed", "decision": "safe_replay"}
    assert out["read-only"] == {"status": "failed", "decision": "safe_replay"}


def test_replay__input_mismatch_and_step_lease_fencing(scenario: ScenarioRunner) -> None:
    out = scenario("replay_and_fencing")
    assert out["calls"] == ["a", "a"]


def test_queues__enqueue_work_dedupe_priority_and_requeue(scenario: ScenarioRunner) -> None:
    out = scenario("queue_work")
    assert out["order"] == [2, 1]
    assert out["deduplicated"] is True
    assert out["requeued"] == "queued"


def test_queues__config_round_trip_and_cancel_is_one_way(scenario: ScenarioRunner) -> None:
    out = scenario("queue_config_and_cancel")
    assert out["config"]["concurrency"] == 3
    assert out["cancel_reason"] == "not needed"


def test_schedules__set_list_replace_delete_and_invalid_cron(scenario: ScenarioRunner) -> None:
    out = scenario("schedule_round_trip")
    assert out["bad_cron_status"] == 400
