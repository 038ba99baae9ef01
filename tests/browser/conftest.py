"""Browser tests: Playwright driving Debian's Chromium against the live server
(``live_server_url``), which serves the dashboard and the API. Never ``playwright install``."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

CHROMIUM = os.environ.get("TIDEBASE_CHROMIUM", "/usr/bin/chromium")
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
SCREENSHOTS = Path(__file__).resolve().parents[2] / "test-artifacts" / "screenshots"
PASSWORD = "browser-pass-123456"

# Playwright's sync API keeps an asyncio loop on this thread; the ORM calls the tests make
# between browser steps are plain synchronous code.
os.environ.setdefault("DJANGO_ALLOW_ASYNC_UNSAFE", "true")


def _chromium_available() -> bool:
    return Path(CHROMIUM).exists() or shutil.which("chromium") is not None


@pytest.fixture(scope="module")  # Playwright's sync API keeps an event loop running: stop it with the module
def browser() -> Iterator[Any]:
    if not _chromium_available():
        pytest.skip(f"Chromium not found at {CHROMIUM}: `apt-get install -y chromium` to run the browser tests")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip("the playwright package is not installed (pip install playwright; never `playwright install`)")
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        yield b
        b.close()


@pytest.fixture
def operators(live_server_url: str) -> dict[str, Any]:
    """Users in the (transactional) test database the live server reads: alice and bob
    approve, vera only views, root administers."""
    from django.contrib.auth.models import User

    from dashboard.roles import ensure_roles

    groups = ensure_roles()
    made = {}
    for name, group in [("alice", "approver"), ("bob", "approver"), ("vera", "viewer"), ("root", "admin")]:
        user = User.objects.create_user(username=name, password=PASSWORD)
        user.groups.add(groups[group])
        made[name] = user
    return made


@pytest.fixture
def login(browser: Any, live_server_url: str, operators: dict[str, Any]) -> Iterator[Callable[..., Any]]:
    """``login("alice")`` → a logged-in page in its own browser context (own cookies)."""
    contexts = []

    def make(username: str, *, color_scheme: str = "light") -> Any:
        context = browser.new_context(
            base_url=live_server_url, viewport={"width": 1280, "height": 900}, color_scheme=color_scheme
        )
        context.set_default_timeout(15_000)
        contexts.append(context)
        page = context.new_page()
        page.goto("/dashboard/")
        assert "/dashboard/login/" in page.url
        page.get_by_label("Username").fill(username)
        page.get_by_label("Password").fill(PASSWORD)
        page.get_by_role("button", name="Log in").click()
        page.wait_for_url("**/dashboard/")
        return page

    yield make
    for context in contexts:
        context.close()


def shot(page: Any, name: str) -> Path:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    path = SCREENSHOTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    return path
