"""Login throttling (django-axes) against a real server: wrong passwords lock one username from
one address out, with a clear page and not a 500; other addresses and users are unaffected; the
count holds under a concurrent burst from many connections; the block lifts after the cool-off."""

from __future__ import annotations

import itertools
import re
import threading
import time
from collections.abc import Iterator

import httpx
import pytest

from tests.conftest import start_live_server

PASSWORD = "right-horse-battery-42"
LIMIT = 5
_names = itertools.count(1)


def make_operator() -> str:
    """A viewer whose password the live server can check: PBKDF2 (the server's hashers; the
    dashboard tests' MD5 shortcut is not among them), with few iterations to keep guesses cheap."""
    from django.contrib.auth.hashers import PBKDF2PasswordHasher
    from django.contrib.auth.models import User

    from dashboard.roles import ensure_roles

    name = f"op{next(_names)}-{time.monotonic_ns()}"
    hasher = PBKDF2PasswordHasher()
    user = User.objects.create(username=name, password=hasher.encode(PASSWORD, hasher.salt(), iterations=1000))
    user.groups.add(ensure_roles()["viewer"])
    return name


def attempt(base_url: str, username: str, password: str, *, forwarded_for: str | None = None) -> httpx.Response:
    """One login through the real form: fetch it (CSRF cookie and token), then post it."""
    headers = {"X-Forwarded-For": forwarded_for} if forwarded_for else {}
    with httpx.Client(base_url=base_url, timeout=30, headers=headers) as client:
        form = client.get("/dashboard/login/")
        assert form.status_code == 200
        token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', form.text)
        assert token
        return client.post(
            "/dashboard/login/",
            data={"csrfmiddlewaretoken": token.group(1), "username": username, "password": password, "next": ""},
        )


def assert_logged_in(response: httpx.Response) -> None:
    assert response.status_code == 302, (response.status_code, response.text[:500])
    assert response.headers["location"] == "/dashboard/"
    assert "sessionid=" in response.headers.get("set-cookie", "")


def assert_locked_out(response: httpx.Response) -> None:
    assert response.status_code == 429, (response.status_code, response.text[:500])
    assert "Too many failed logins" in response.text
    assert "sessionid=" not in response.headers.get("set-cookie", "")


@pytest.fixture(scope="module")
def throttled_server(test_database_url: str) -> Iterator[str]:
    """Behind one (simulated) proxy, so each test can come from addresses of its own."""
    server = start_live_server(
        test_database_url,
        TIDEBASE_PROXY_COUNT="1",
        TIDEBASE_LOGIN_FAILURE_LIMIT=str(LIMIT),
    )
    yield server.url
    server.stop()


@pytest.fixture
def server(throttled_server: str, test_database_url: str) -> str:
    return throttled_server


def test_default_settings__thirty_wrong_passwords_then_the_right_one_is_refused(live_server_url: str) -> None:
    """The issue's scenario against the default configuration."""
    name = make_operator()
    for i in range(30):
        response = attempt(live_server_url, name, f"guess-{i}")
        assert response.status_code in (200, 429), response.status_code
        if i >= 5:  # the default limit is 5
            assert_locked_out(response)
    locked = attempt(live_server_url, name, PASSWORD)
    assert_locked_out(locked)
    assert "15 minutes" in locked.text
    assert "<html" in locked.text  # the dashboard's page, not a bare string


def test_wrong_passwords__lock_out_that_username_from_that_address_only(server: str) -> None:
    alice, bob = make_operator(), make_operator()
    attacker, operator = "203.0.113.7", "198.51.100.20"
    for i in range(LIMIT - 1):
        response = attempt(server, alice, f"guess-{i}", forwarded_for=attacker)
        assert response.status_code == 200
        assert "alert-error" in response.text  # the ordinary "wrong password" form
    assert_locked_out(attempt(server, alice, "guess-last", forwarded_for=attacker))
    assert_locked_out(attempt(server, alice, PASSWORD, forwarded_for=attacker))
    # A client-written X-Forwarded-For entry left of the proxy's is not believed.
    assert_locked_out(attempt(server, alice, PASSWORD, forwarded_for=f"{operator}, {attacker}"))
    # The real operator, from elsewhere, and another user from the attacker's address, get in.
    assert_logged_in(attempt(server, alice, PASSWORD, forwarded_for=operator))
    assert_logged_in(attempt(server, bob, PASSWORD, forwarded_for=attacker))


def test_success_before_the_limit__resets_the_count(server: str) -> None:
    name, address = make_operator(), "203.0.113.30"
    for _ in range(3):
        for i in range(LIMIT - 1):
            assert attempt(server, name, f"typo-{i}", forwarded_for=address).status_code == 200
        assert_logged_in(attempt(server, name, PASSWORD, forwarded_for=address))


def test_concurrent_burst__every_failure_counts(server: str) -> None:
    """16 connections guess at once (each request its own server thread and DB connection):
    the failures are counted in Postgres under a row lock, none is lost, and the burst ends in
    a lockout. (Guesses that pass the lockout check before the limit is reached are the only
    ones checked against the password; the rest are refused unchecked.)"""
    from axes.models import AccessAttempt

    name, address = make_operator(), "203.0.113.50"
    threads_n, per_thread = 16, 2
    statuses: list[int] = []
    barrier = threading.Barrier(threads_n)

    def guess(t: int) -> None:
        barrier.wait()
        for i in range(per_thread):
            statuses.append(attempt(server, name, f"guess-{t}-{i}", forwarded_for=address).status_code)

    threads = [threading.Thread(target=guess, args=(t,)) for t in range(threads_n)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert len(statuses) == threads_n * per_thread
    assert set(statuses) <= {200, 429}, statuses  # never a 500
    failures = sum(a.failures_since_start for a in AccessAttempt.objects.filter(username=name, ip_address=address))
    assert failures == threads_n * per_thread
    assert_locked_out(attempt(server, name, PASSWORD, forwarded_for=address))


def test_block_lifts_after_the_cool_off(test_database_url: str) -> None:
    cooloff_s = 2
    server = start_live_server(
        test_database_url, TIDEBASE_LOGIN_FAILURE_LIMIT="2", TIDEBASE_LOGIN_COOLOFF_S=str(cooloff_s)
    )
    try:
        name = make_operator()
        attempt(server.url, name, "guess-1")
        locked = attempt(server.url, name, "guess-2")
        assert_locked_out(locked)
        assert "2 seconds" in locked.text
        assert_locked_out(attempt(server.url, name, PASSWORD))
        # Each attempt while blocked restarts the wait: let a full cool-off pass without one.
        time.sleep(cooloff_s + 1)
        assert_logged_in(attempt(server.url, name, PASSWORD))
    finally:
        server.stop()
