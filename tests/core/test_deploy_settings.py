"""Production settings: ``check --deploy`` is clean for exactly the environment README documents
(and is not without it), the server sends what those settings promise, and ``tidebase_serve``
refuses the development SECRET_KEY beyond localhost."""

from __future__ import annotations

import os
import re
import secrets
import subprocess
import sys
import time
from collections.abc import Callable, Iterator

import httpx
import pytest

from tests.conftest import ROOT, free_port, start_live_server
from tidebase_core.checks import is_loopback

Serve = Callable[..., tuple["subprocess.Popen[str]", int]]
PLACEHOLDER_DB = "postgres://unused@127.0.0.1/unused"  # settings parse it; `check` never connects


def documented_production_env() -> dict[str, str]:
    """The ``sh`` block of README's "Production settings", with a fresh secret key."""
    readme = (ROOT / "README.md").read_text()
    section = readme.split("\n## Production settings\n", 1)[1].split("\n## ", 1)[0]
    block = re.search(r"```sh\n(.*?)```", section, re.S)
    assert block, "README's Production settings section has no ```sh block"
    env = {}
    for line in block.group(1).splitlines():
        line = line.split(" #", 1)[0].strip()
        if line:
            name, _, value = line.partition("=")
            env[name] = value
    assert env["DJANGO_SECRET_KEY"] == "...", "the README must not show a usable key"
    env["DJANGO_SECRET_KEY"] = secrets.token_urlsafe(50)
    return env


def clean_env(**extra: str) -> dict[str, str]:
    """This process's environment without any Django/Tidebase setting a developer may have set."""
    base = {k: v for k, v in os.environ.items() if not k.startswith(("DJANGO_", "TIDEBASE_"))}
    return {**base, "DJANGO_SETTINGS_MODULE": "config.settings", "DATABASE_URL": PLACEHOLDER_DB, **extra}


def check_deploy(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "manage.py", "check", "--deploy", "--fail-level", "WARNING"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_check_deploy__clean_with_the_documented_production_settings() -> None:
    result = check_deploy(clean_env(**documented_production_env()))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "System check identified no issues" in result.stdout


def test_check_deploy__not_clean_without_them() -> None:
    result = check_deploy(clean_env())
    assert result.returncode != 0
    for code in (
        "security.W004",  # HSTS
        "security.W008",  # SSL redirect
        "security.W012",  # session cookie
        "security.W016",  # CSRF cookie
        "tidebase.W001",  # the development SECRET_KEY
        "tidebase.W002",  # ALLOWED_HOSTS = *
    ):
        assert code in result.stderr, (code, result.stderr)


@pytest.mark.parametrize("dropped", ["DJANGO_SECRET_KEY", "TIDEBASE_HTTPS", "DJANGO_ALLOWED_HOSTS"])
def test_check_deploy__each_documented_setting_is_needed(dropped: str) -> None:
    """Django's own security.W009 does not catch the development key (it is long and varied):
    without DJANGO_SECRET_KEY only tidebase.W001 says so."""
    env = documented_production_env()
    del env[dropped]
    result = check_deploy(clean_env(**env))
    assert result.returncode != 0
    expected = {"DJANGO_SECRET_KEY": "tidebase.W001", "TIDEBASE_HTTPS": "security.W004", "DJANGO_ALLOWED_HOSTS": "W002"}
    assert expected[dropped] in result.stderr, result.stderr


def test_proxy_ssl_header__parsed_from_its_documented_form() -> None:
    script = "import django; django.setup(); from django.conf import settings; print(settings.SECURE_PROXY_SSL_HEADER)"
    for raw in ("X-Forwarded-Proto:https", "X-Forwarded-Proto: https", "HTTP_X_FORWARDED_PROTO=https"):
        out = subprocess.run(
            [sys.executable, "-c", script],
            cwd=ROOT,
            env=clean_env(DJANGO_SECURE_PROXY_SSL_HEADER=raw),
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        ).stdout
        assert out.strip().splitlines()[-1] == "('HTTP_X_FORWARDED_PROTO', 'https')", raw
    bad = subprocess.run(
        [sys.executable, "-c", script],
        cwd=ROOT,
        env=clean_env(DJANGO_SECURE_PROXY_SSL_HEADER="https"),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert bad.returncode != 0
    assert "DJANGO_SECURE_PROXY_SSL_HEADER must look like" in bad.stderr


def test_documented_settings__the_server_sends_hsts_secure_cookies_and_redirects(test_database_url: str) -> None:
    """A real server with the documented environment, behind a (simulated) TLS proxy."""
    env = documented_production_env()
    env.pop("TIDEBASE_PUBLIC_URL")  # the live server sets its own
    server = start_live_server(test_database_url, **env)
    host = {"Host": env["DJANGO_ALLOWED_HOSTS"]}
    try:
        with httpx.Client(base_url=server.url, timeout=30) as client:
            plain = client.get("/dashboard/login/", headers=host)
            assert plain.status_code == 301
            assert plain.headers["location"] == f"https://{env['DJANGO_ALLOWED_HOSTS']}/dashboard/login/"
            proxied = client.get("/dashboard/login/", headers={**host, "X-Forwarded-Proto": "https"})
            assert proxied.status_code == 200
            assert proxied.headers["strict-transport-security"] == "max-age=31536000; includeSubDomains; preload"
            cookie = proxied.headers["set-cookie"]
            assert cookie.startswith("csrftoken=")
            assert "; Secure" in cookie
            assert "script-src 'self'" in proxied.headers["content-security-policy"]
            # The protocol routes are not redirected (SDKs call the URL they are given).
            assert client.get("/health", headers=host).status_code == 200
    finally:
        server.stop()


# ---- tidebase_serve and the development key ---------------------------------------------------


def test_is_loopback() -> None:
    for host in ("127.0.0.1", "127.8.9.10", "::1", "[::1]", "localhost", "LOCALHOST"):
        assert is_loopback(host), host
    for host in ("0.0.0.0", "::", "", "10.0.0.5", "192.168.1.2", "example.com", "tidebase.internal"):
        assert not is_loopback(host), host


@pytest.fixture
def serve(test_database_url: str) -> Iterator[Serve]:
    """``serve(host, **env)`` runs ``manage.py tidebase_serve`` on a free port; stopped afterwards."""
    procs: list[subprocess.Popen[str]] = []

    def run(host: str, **env: str) -> tuple[subprocess.Popen[str], int]:
        port = free_port()
        proc = subprocess.Popen(
            [sys.executable, "manage.py", "tidebase_serve", "--host", host, "--port", str(port), "--workers", "1"],
            cwd=ROOT,
            env=clean_env(DATABASE_URL=test_database_url, **env),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        procs.append(proc)
        return proc, port

    yield run
    for proc in procs:
        if proc.poll() is None:
            os.killpg(proc.pid, 15)
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, 9)
                proc.wait()


def wait_healthy(proc: subprocess.Popen[str], port: int) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            time.sleep(0.2)
    raise AssertionError("tidebase_serve did not come up")


def test_serve__refuses_the_development_key_beyond_localhost(serve: Serve) -> None:
    proc, port = serve("0.0.0.0")
    _, err = proc.communicate(timeout=120)
    assert proc.returncode != 0
    assert "refusing to listen on '0.0.0.0' with the development SECRET_KEY" in err
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"http://127.0.0.1:{port}/health", timeout=2)


def test_serve__development_key_on_loopback__starts_with_a_warning(serve: Serve) -> None:
    proc, port = serve("127.0.0.1")
    wait_healthy(proc, port)
    os.killpg(proc.pid, 15)
    _, err = proc.communicate(timeout=30)
    assert "tidebase.W001" in err


def test_serve__real_key_beyond_localhost__starts(serve: Serve) -> None:
    proc, port = serve("0.0.0.0", DJANGO_SECRET_KEY=secrets.token_urlsafe(50))
    wait_healthy(proc, port)


def test_serve__debug_on__is_not_refused(serve: Serve) -> None:
    proc, port = serve("0.0.0.0", DJANGO_DEBUG="1")
    wait_healthy(proc, port)
