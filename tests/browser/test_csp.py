"""Content-Security-Policy in a real browser: every dashboard page carries a strict policy (no
inline script or style, no eval) and works under it: its htmx polling, swaps and charts run
without a single violation. The detector itself is checked by provoking violations."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from typing import Any

import pytest
from django.utils import timezone
from playwright.sync_api import expect

from tests.browser.conftest import PASSWORD

RECORD_VIOLATIONS = """
  window.addEventListener('securitypolicyviolation', (e) => {
    console.error('CSP violation: ' + e.violatedDirective + ' blocked ' + (e.blockedURI || 'inline')
                  + ' at ' + e.sourceFile + ':' + e.lineNumber + ' ' + (e.sample || ''));
  }, true);
"""
WAIT_FOR_HTMX = """() => new Promise((resolve, reject) => {
  document.body.addEventListener('htmx:afterRequest', () => resolve(true), {once: true});
  setTimeout(() => reject(new Error('no htmx request within 20 s')), 20000);
})"""


class Violations:
    """CSP violations a page reports: Chromium's own console errors ("Refused to ...") and the
    ``securitypolicyviolation`` events the init script turns into console errors."""

    def __init__(self) -> None:
        self.seen: list[str] = []

    def watch(self, page: Any) -> Any:
        page.context.add_init_script(RECORD_VIOLATIONS)

        def on_console(msg: Any) -> None:
            text = msg.text
            if "Content Security Policy" in text or text.startswith(("Refused to", "CSP violation")):
                self.seen.append(f"{page.url}: {text}")

        page.on("console", on_console)
        return page


def assert_strict_policy(response: Any) -> None:
    policy = response.headers.get("content-security-policy", "")
    directives = {}
    for directive in filter(None, (d.strip() for d in policy.split(";"))):
        name, _, value = directive.partition(" ")
        directives[name] = value
    assert directives.get("script-src") == "'self'", policy
    assert directives.get("style-src") == "'self'", policy
    assert directives.get("object-src") == "'none'", policy
    assert "unsafe" not in policy, policy


def _data() -> dict[str, Any]:
    from tidebase_core.models import Gate, Run, UsageRecord
    from tidebase_core.services.usage import usage_rollups_rebuild

    now = timezone.now()
    running = Run.objects.create(workflow_name="triage", status="running", input={"ticket": 7})
    gate = Gate.objects.create(
        run=running,
        name="approve-csp",
        prompt="Ship it?",
        data={"diff": "+1 -1"},
        status="pending",
        timeout_at=now + dt.timedelta(hours=1),
    )
    for day in range(3):
        rec = UsageRecord.objects.create(
            run=running, provider="openai", model="gpt-4o", input_tokens=100, output_tokens=50, cost_usd=Decimal("0.5")
        )
        UsageRecord.objects.filter(id=rec.id).update(created_at=now - dt.timedelta(days=day))
    usage_rollups_rebuild()
    return {"run": running, "gate": gate}


@pytest.mark.django_db(transaction=True)
def test_every_dashboard_page__strict_csp__no_violations(live_server_url: str, login: Any, browser: Any) -> None:
    data = _data()
    violations = Violations()

    # The login page, before anyone is logged in.
    anonymous = browser.new_context(base_url=live_server_url)
    page = violations.watch(anonymous.new_page())
    assert_strict_policy(page.goto("/dashboard/login/"))
    expect(page.get_by_label("Username")).to_be_visible()
    # A wrong password: the form comes back with its error, still under the policy.
    page.get_by_label("Username").fill("root")
    page.get_by_label("Password").fill("wrong-" + PASSWORD)
    page.get_by_role("button", name="Log in").click()
    expect(page.locator(".alert-error")).to_be_visible()
    anonymous.close()

    root = violations.watch(login("root"))
    polled = {"/dashboard/", f"/dashboard/runs/{data['run'].id}/", "/dashboard/queues/", "/dashboard/webhooks/"}
    for url in [
        "/dashboard/",
        "/dashboard/runs/",
        f"/dashboard/runs/{data['run'].id}/",
        "/dashboard/queues/",
        "/dashboard/usage/",
        "/dashboard/webhooks/",
        "/dashboard/keys/",
        "/dashboard/storage/",
        "/dashboard/budgets/",
        "/dashboard/audit/",
        "/dashboard/password/",
    ]:
        response = root.goto(url)
        assert response.status == 200, url
        assert_strict_policy(response)
        if url in polled:
            assert root.evaluate(WAIT_FOR_HTMX), url  # a poll went out and its answer was swapped in
        if url == "/dashboard/usage/":
            root.wait_for_function("() => window.tidebaseCharts && Object.keys(window.tidebaseCharts).length === 6")

    # htmx swaps under the policy: filter the runs, decide the gate in the inbox.
    root.goto("/dashboard/runs/")
    root.get_by_label("Status", exact=True).select_option("running")
    expect(root.locator("#runs-results tbody tr")).to_have_count(1)
    root.goto("/dashboard/")
    card = root.locator("article.gate-card", has_text="approve-csp")
    card.get_by_role("button", name="Approve").click()
    expect(card).to_contain_text("Approved by root")
    # The decision is in the audit trail; Verify posts its form and shows the verdict under the policy.
    root.goto("/dashboard/audit/")
    root.get_by_role("button", name="Verify").click()
    expect(root.locator("#audit-verdict")).to_contain_text("audit chain intact")

    # Error pages: 404, and 403 for a viewer.
    assert_strict_policy(root.goto("/dashboard/runs/no-such-run/"))
    vera = violations.watch(login("vera"))
    response = vera.goto("/dashboard/keys/")
    assert response.status == 403
    assert_strict_policy(response)

    assert violations.seen == []

    # The detector works: inline style, inline script and eval are reported.
    root.evaluate("""() => {
        document.head.insertAdjacentHTML('beforeend', '<style>body { outline: 1px solid red; }</style>');
        const s = document.createElement('script'); s.textContent = 'window.__inline = 1'; document.body.appendChild(s);
        setTimeout('window.__evaled = 1', 0);  // a string timer is eval; not exempt like evaluate() itself
    }""")
    for _ in range(100):  # console messages arrive asynchronously: wait for them, up to 10 s
        joined = "\n".join(violations.seen)
        if "style-src" in joined and "script-src" in joined and "blocked eval" in joined:
            break
        root.wait_for_timeout(100)
    assert "style-src" in joined, joined
    assert "script-src" in joined, joined
    assert "blocked eval" in joined, joined
    assert root.evaluate("window.__inline") is None
    assert root.evaluate("window.__evaled") is None
