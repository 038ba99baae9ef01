"""The deployment artifacts agree with each other and with the settings (docs/deploy.md).

scripts/deploy_smoke.sh runs the image's scripts for real (CI); these tests keep the files that
cannot run here (Dockerfile, compose.yaml) pointing at those scripts and roles, and check the
production environment file and the broker TLS check with ``manage.py check --deploy``."""

from __future__ import annotations

import re
import secrets
import subprocess
import sys

import pytest
import yaml

from tests.conftest import ROOT
from tests.core.test_deploy_settings import check_deploy, clean_env, documented_production_env
from tidebase_core.checks import unverified_tls_brokers

ENV_EXAMPLE = ROOT / "deploy" / "tidebase.env.example"
COMPOSE_ONLY = {"POSTGRES_PASSWORD", "TIDEBASE_DOMAIN"}


def entrypoint_roles() -> set[str]:
    script = (ROOT / "deploy" / "entrypoint.sh").read_text()
    return set(re.findall(r"^\s+(\w+)\)", script, re.M))


def env_example() -> dict[str, str]:
    """deploy/tidebase.env.example without the compose-only lines, with fresh secrets for '...'."""
    env = {}
    for line in ENV_EXAMPLE.read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, _, value = line.partition("=")
            assert " #" not in value, f"{name}: env files take no inline comments"
            if name not in COMPOSE_ONLY:
                env[name] = secrets.token_urlsafe(50) if value == "..." else value
    return env


def test_entrypoint__has_the_roles_the_docs_name() -> None:
    assert entrypoint_roles() == {"web", "worker", "beat", "migrate", "check", "manage"}


def test_dockerfile__runs_only_the_scripts_ci_runs() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    runs = re.findall(r"^RUN (.+)$", dockerfile, re.M)
    assert runs == ["PIP_NO_CACHE_DIR=1 bash /src/deploy/build.sh /src /opt/tidebase"], runs
    assert 'ENTRYPOINT ["/opt/tidebase/bin/tidebase-entrypoint"]' in dockerfile
    assert re.search(r"^USER \d+", dockerfile, re.M), "the image must not run as root"
    smoke = (ROOT / "scripts" / "deploy_smoke.sh").read_text()
    assert 'bash deploy/build.sh "$repo" "$prefix"' in smoke
    assert '"$prefix/bin/tidebase-entrypoint"' in smoke
    assert "tidebase-entrypoint" in (ROOT / "deploy" / "build.sh").read_text()
    assert "bash scripts/deploy_smoke.sh" in (ROOT / ".ci" / "run").read_text()


def test_compose__services_roles_and_order() -> None:
    compose = yaml.safe_load((ROOT / "compose.yaml").read_text())
    services = compose["services"]
    assert {"postgres", "redis", "migrate", "web", "worker", "beat"} <= set(services)
    roles = entrypoint_roles()
    for name in ("migrate", "web", "worker", "beat"):
        service = services[name]
        assert service["build"] == ".", name
        assert service["command"][0] in roles, name
        assert service["command"] == [name]
        assert service["environment"]["DATABASE_URL"].startswith("postgres://tidebase:${POSTGRES_PASSWORD")
        assert service["environment"]["CELERY_BROKER_URL"] == "redis://redis:6379/0"
        assert service["env_file"] == ".env"
    assert services["migrate"]["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert services["migrate"]["restart"] == "no"
    for name in ("web", "worker", "beat"):
        assert services[name]["depends_on"]["migrate"]["condition"] == "service_completed_successfully", name
    assert services["web"]["ports"] == ["127.0.0.1:7373:7373"]


def test_env_example__holds_the_readme_production_settings() -> None:
    readme = documented_production_env()
    example = env_example()
    for name, value in readme.items():
        assert name in example, name
        if name != "DJANGO_SECRET_KEY":
            assert example[name] == value, name


def test_env_example__is_what_docs_deploy_shows() -> None:
    docs = (ROOT / "docs" / "deploy.md").read_text()
    block = docs.split("\n## Production settings\n", 1)[1].split("```sh\n", 1)[1].split("```", 1)[0]
    lines = [line for line in ENV_EXAMPLE.read_text().splitlines() if line.strip() and not line.startswith("#")]
    assert block.splitlines() == lines


def test_env_example__check_deploy_is_clean() -> None:
    result = check_deploy(clean_env(**env_example()))
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize(
    ("url", "unverified"),
    [
        ("redis://redis:6379/0", []),
        ("amqps://user:pw@mq.example.com:5671//", []),
        ("rediss://:pw@cache.example.com:6380/0", ["rediss://cache.example.com"]),
        ("rediss://cache.example.com:6380/0?ssl_cert_reqs=none", ["rediss://cache.example.com"]),
        ("rediss://cache.example.com:6380/0?ssl_cert_reqs=optional", ["rediss://cache.example.com"]),
        ("rediss://cache.example.com:6380/0?ssl_cert_reqs=required", []),
        ("rediss://cache.example.com/0?ssl_cert_reqs=CERT_REQUIRED&ssl_ca_certs=/ca.pem", []),
        ("rediss://a.example.com/0?ssl_cert_reqs=required;rediss://b.example.com/0", ["rediss://b.example.com"]),
    ],
)
def test_unverified_tls_brokers(url: str, unverified: list[str]) -> None:
    assert unverified_tls_brokers(url) == unverified


def test_check_deploy__warns_about_an_unverified_rediss_broker() -> None:
    env = env_example()
    bad = check_deploy(clean_env(**env, CELERY_BROKER_URL="rediss://:secret-pw@cache.example.com:6380/0"))
    assert bad.returncode != 0
    assert "tidebase.W003" in bad.stderr
    assert "secret-pw" not in bad.stderr  # the message names the host, never the password
    good = check_deploy(
        clean_env(**env, CELERY_BROKER_URL="rediss://:pw@cache.example.com:6380/0?ssl_cert_reqs=required")
    )
    assert good.returncode == 0, good.stderr


def test_cli__is_manage_py_for_an_installed_wheel() -> None:
    """``tidebase-server`` (config.cli) runs management commands like manage.py."""
    result = subprocess.run(
        [sys.executable, "-m", "config.cli", "check", "--deploy", "--fail-level", "WARNING"],
        cwd=ROOT,
        env=clean_env(**env_example()),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert "System check identified no issues" in result.stdout
