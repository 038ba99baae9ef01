"""End to end in a real browser: a workflow opens a gate, an operator approves it in the
inbox, a second operator's concurrent rejection loses cleanly, the run page follows live."""

from __future__ import annotations

import datetime as dt
import re
import threading
from decimal import Decimal
from typing import Any

from django.utils import timezone
from playwright.sync_api import expect

from tests.browser.conftest import shot
from tidebase import Tidebase


def _start_workflow(url: str, results: dict[str, Any]) -> threading.Thread:
    def workflow(run: Any, input: dict[str, Any]) -> Any:
        plan = run.step("plan", lambda: {"sections": ["intro", "fix"]}, input=input)
        run.usage.record(
            kind="llm", provider="openai", model="gpt-4o", input_tokens=1200, output_tokens=300, cost_usd=0.042
        )
        run.state.set({"phase": "awaiting-approval"})
        decision = run.gate(
            "approve-fix", f"Ship the fix for ticket {input['ticket']}?", data={"diff": "+12 -3", "plan": plan}
        )
        results["decision"] = decision
        if not decision.approved:
            return {"status": "rejected"}
        return run.step("ship", lambda: {"shipped": True})

    def go() -> None:
        try:
            with Tidebase(url) as tide:
                results["result"] = tide.run("bug-triage", workflow, input={"ticket": 4242})
        except BaseException as exc:  # surfaced by the test
            results["error"] = exc

    thread = threading.Thread(target=go, daemon=True)
    thread.start()
    return thread


def test_gate_approved_in_the_inbox__workflow_completes_and_the_late_rejection_loses(
    live_server_url: str, login: Any
) -> None:
    results: dict[str, Any] = {}
    thread = _start_workflow(live_server_url, results)

    alice, bob = login("alice"), login("bob")
    card_a = alice.locator("article.gate-card", has_text="approve-fix")
    card_b = bob.locator("article.gate-card", has_text="approve-fix")
    # The inbox polls every 3 s: the gate shows up without a reload.
    expect(card_a).to_be_visible(timeout=20_000)
    expect(card_b).to_be_visible(timeout=20_000)
    expect(card_a).to_contain_text("Ship the fix for ticket 4242?")
    expect(card_a).to_contain_text('"diff": "+12 -3"')
    expect(card_a).to_contain_text("bug-triage")
    shot(alice, "inbox")

    # Watch the run page live in a second tab of alice's.
    run_page = alice.context.new_page()
    run_page.goto(card_a.get_by_role("link").first.get_attribute("href") or "")
    expect(run_page.locator("#run-live")).to_have_attribute("data-status", "running")
    expect(run_page.locator(".timeline")).to_contain_text("plan")

    # Bob's page goes stale (his next poll is held back), as if he clicked within the same poll window.
    bob.evaluate(
        """document.body.addEventListener('htmx:beforeRequest', (e) => {
             if (e.detail.elt.id === 'inbox-rows') e.preventDefault();
           });"""
    )
    card_a.get_by_label("Comment").fill("looks good")
    card_a.get_by_role("button", name="Approve").click()
    expect(card_a).to_contain_text("Approved by alice")
    shot(alice, "inbox-decided")

    card_b.get_by_role("button", name="Reject").click()
    expect(card_b).to_contain_text("Already decided by alice")
    shot(bob, "inbox-conflict")

    thread.join(30)
    assert "error" not in results, results.get("error")
    assert results["result"] == {"shipped": True}
    assert results["decision"].approved
    assert results["decision"].actor == "alice"

    # The run page followed along without a reload, then stopped polling.
    expect(run_page.locator("#run-live")).to_have_attribute("data-status", "completed", timeout=15_000)
    expect(run_page.locator(".timeline")).to_contain_text("ship")
    expect(run_page.locator("#event-rows")).to_contain_text("gate.resolved")
    expect(run_page.locator("#event-rows")).to_contain_text("run.completed")
    shot(run_page, "run")

    # Alice's inbox drops the gate; the history shows who decided.
    expect(card_a).to_have_count(0, timeout=10_000)
    expect(alice.locator("#history-rows")).to_contain_text("alice")
    expect(alice.locator("#history-rows")).to_contain_text("approve-fix")


def test_runs_filter_and_usage_charts(live_server_url: str, login: Any) -> None:
    from tidebase_core.models import Run, UsageRecord
    from tidebase_core.services.usage import usage_rollups_rebuild

    now = timezone.now()
    for i in range(6):
        run = Run.objects.create(
            workflow_name="summarize" if i % 2 else "triage", status=["running", "completed", "failed"][i % 3]
        )
        for day in range(4):
            rec = UsageRecord.objects.create(
                run=run,
                provider="anthropic" if i % 2 else "openai",
                model="claude-sonnet" if i % 2 else "gpt-4o",
                input_tokens=1000 * (i + 1),
                output_tokens=200 * (day + 1),
                cost_usd=Decimal("0.10") * (i + 1),
            )
            UsageRecord.objects.filter(id=rec.id).update(created_at=now - dt.timedelta(days=day))
    usage_rollups_rebuild()  # the records were written (and backdated) around usage_record

    vera = login("vera")
    vera.get_by_role("link", name="Runs", exact=True).click()
    expect(vera.locator("#runs-results tbody tr")).to_have_count(6)
    shot(vera, "runs")
    vera.get_by_label("Status", exact=True).select_option("failed")
    expect(vera).to_have_url(re.compile(r"status=failed"))
    expect(vera.locator("#runs-results tbody tr")).to_have_count(2)
    expect(vera.locator("#runs-results tbody")).not_to_contain_text("completed")
    vera.get_by_label("Workflow", exact=True).fill("summarize")
    vera.get_by_role("button", name="Apply").click()
    expect(vera.locator("#runs-results tbody tr")).to_have_count(1)
    shot(vera, "runs-filtered")

    vera.get_by_role("link", name="Usage & cost").click()
    vera.wait_for_function("() => window.tidebaseCharts && Object.keys(window.tidebaseCharts).length === 6")
    totals = vera.evaluate(
        """() => Object.fromEntries(Object.entries(window.tidebaseCharts).map(([id, c]) =>
             [id, c.data.datasets.reduce((s, d) => s + d.data.reduce((a, b) => a + b, 0), 0)]))"""
    )
    assert totals["chart-cost"] > 0
    assert totals["chart-tokens"] > 0
    assert totals["chart-workflows"] > 0
    assert totals["chart-runs"] > 0
    # Pixels, not just data: the cost canvas has drawn (non-transparent) pixels.
    painted = vera.evaluate(
        """() => { const c = document.getElementById('chart-cost');
                   const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
                   let n = 0; for (let i = 3; i < d.length; i += 4) if (d[i] > 0) n++; return n; }"""
    )
    assert painted > 500
    shot(vera, "usage")

    dark = login("root", color_scheme="dark")
    dark.goto("/dashboard/usage/")
    dark.wait_for_function("() => window.tidebaseCharts && Object.keys(window.tidebaseCharts).length === 6")
    shot(dark, "usage-dark")
    dark.goto("/dashboard/webhooks/")
    shot(dark, "webhooks-dark")
    dark.goto("/dashboard/keys/")
    dark.get_by_label("Name").fill("triage-bot")
    asked: list[str] = []

    def accept(dialog: Any) -> None:
        asked.append(dialog.message)
        dialog.accept()

    dark.once("dialog", accept)  # the first key closes the API: the page asks first (data-confirm)
    dark.get_by_role("button", name="Create key").click()
    expect(dark.locator("#new-key .secret")).to_contain_text("tb_")
    assert len(asked) == 1
    assert "closes the API" in asked[0]
    shot(dark, "keys-dark")


def test_pages_screenshots_and_keyboard(live_server_url: str, login: Any, browser: Any) -> None:
    from tidebase_core.models import ChannelDelivery, Run

    run = Run.objects.create(workflow_name="triage", status="failed", error={"message": "boom"})
    ChannelDelivery.objects.create(
        run=run,
        url="https://example.com/hook",
        event_type="run.failed",
        status="failed",
        attempts=8,
        error_text="HTTP 500",
    )
    root = login("root")
    root.goto("/dashboard/webhooks/")
    expect(root.locator("tbody")).to_contain_text("dead letter")
    shot(root, "webhooks")
    root.goto("/dashboard/keys/")
    shot(root, "keys")
    root.goto("/dashboard/")
    shot(root, "inbox-empty")
    # Keyboard: the skip link is the first stop and leads to the main content.
    root.keyboard.press("Tab")
    expect(root.get_by_role("link", name="Skip to content")).to_be_focused()
    anonymous = browser.new_context(base_url=live_server_url, viewport={"width": 420, "height": 800})
    page = anonymous.new_page()
    page.goto("/dashboard/runs/")
    expect(page).to_have_url(re.compile(r"/dashboard/login/\?next="))
    shot(page, "login-mobile")
    anonymous.close()
    mobile = login("vera")
    mobile.set_viewport_size({"width": 420, "height": 900})
    mobile.goto(f"/dashboard/runs/{run.id}/")
    shot(mobile, "run-mobile")
