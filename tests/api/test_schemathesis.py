"""The OpenAPI document (``/api/openapi.json``) and the server agree (issue #12, item 7).

Schemathesis reads the document and runs every check it has (``--checks all``: no 5xx, only
documented statuses, content types and headers, bodies that match the declared schemas, invalid
requests refused and valid ones accepted, auth enforced, links between operations) against a live
server with an API key, in all its phases (examples, coverage, fuzzing, stateful). Any
failure fails the test, and CI with it. The run is seeded, so a failure reproduces; set
``TIDEBASE_SCHEMATHESIS_SEED`` to explore with another seed.

The fast tests below pin what the document must say.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from config.api import api
from tests.conftest import start_live_server
from tidebase_core.api import openapi, scopes

pytestmark = pytest.mark.django_db(transaction=True, available_apps=["tidebase_core"])

KEY = "schemathesis-key"
CONFIG = Path(__file__).with_name("schemathesis.toml")
SEED = os.environ.get("TIDEBASE_SCHEMATHESIS_SEED", "12")
MAX_EXAMPLES = "20"  # per operation and phase: about a minute on an idle 2-core machine


@pytest.fixture(scope="module")
def keyed_server(test_database_url: str) -> Iterator[str]:
    """A server with an API key (so the auth checks mean something) whose long-polls end fast."""
    # No worker, beat or broker runs beside it (the embedded broker's folder exists only once
    # some other test made it: order-dependent): /ready is judged on the database alone, since a
    # 503 not_ready would count as a server error. tests/webhooks/test_supervision covers the rest.
    server = start_live_server(
        test_database_url,
        TIDEBASE_API_KEY=KEY,
        TIDEBASE_GATE_WAIT_MAX_MS="200",
        TIDEBASE_READY_CHECKS="database,migrations",
    )
    yield server.url
    server.stop()


def test_schemathesis__every_check_passes_against_a_live_server(
    keyed_server: str, tmp_path: Path, document: dict[str, Any]
) -> None:
    command = [
        sys.executable,
        "-m",
        "schemathesis.cli",
        "--config-file",
        str(CONFIG),
        "run",
        f"{keyed_server}/api/openapi.json",
        "--url",
        keyed_server,
        "--header",
        f"Authorization: Bearer {KEY}",
        "--checks",
        "all",
        "--max-examples",
        MAX_EXAMPLES,
        "--seed",
        SEED,
        "--workers",
        "1",  # the CLI's worker threads trip a CPython 3.11 AST bug inside schemathesis
        "--request-timeout",
        "60",
    ]
    env = {**os.environ, "NO_COLOR": "1", "COLUMNS": "160"}

    result = subprocess.run(command, capture_output=True, text=True, cwd=tmp_path, env=env, timeout=900, check=False)

    assert result.returncode == 0, result.stdout[-30000:] + result.stderr[-5000:]
    assert f"Tested: {len(operations(document))}" in result.stdout  # every operation, none skipped


# --- what the document says ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def document() -> dict[str, Any]:
    schema: dict[str, Any] = api.get_openapi_schema()
    return schema


def operations(document: dict[str, Any]) -> dict[str, tuple[str, dict[str, Any]]]:
    return {
        operation["operationId"]: (method, operation)
        for item in document["paths"].values()
        for method, operation in item.items()
    }


def test_openapi__heartbeat_requires_a_lease_owner_as_the_server_does(document: dict[str, Any]) -> None:
    heartbeat = document["components"]["schemas"]["HeartbeatIn"]

    assert heartbeat["required"] == ["leaseOwner"]
    assert heartbeat["properties"]["leaseOwner"]["type"] == "string"
    assert heartbeat["properties"]["leaseOwner"]["minLength"] == 1


def test_openapi__every_operation_declares_its_answer_and_its_errors(document: dict[str, Any]) -> None:
    problems = []
    for operation_id, (_method, operation) in operations(document).items():
        responses = operation["responses"]
        if operation_id not in openapi.OK:
            problems.append(f"{operation_id}: no 200 body in openapi.OK")
        ok = responses[200]["content"]["application/json"]["schema"]
        if not ok:
            problems.append(f"{operation_id}: empty 200 schema")
        errors = [status for status in responses if status != 200]
        if operation_id not in ("health", "ready") and not {400, 401} & set(errors):
            problems.append(f"{operation_id}: no 4xx declared")
        for status in errors:
            if responses[status]["content"]["application/json"]["schema"] != {"$ref": "#/components/schemas/Error"}:
                problems.append(f"{operation_id} {status}: not an Error")

    assert problems == []


def test_openapi__documents_every_protocol_route(document: dict[str, Any]) -> None:
    """Every route in the scope table but the two that answer in other formats: the SSE stream
    (text/event-stream) and /metrics (Prometheus text, docs/observability.md)."""
    documented = set(operations(document))

    assert documented == set(scopes.ROUTE_SCOPES) - {"run_events", "metrics"}


def test_openapi__null_is_documented_only_where_the_server_takes_it(document: dict[str, Any]) -> None:
    schemas = document["components"]["schemas"]

    assert "anyOf" not in schemas["StepBeginIn"]["properties"]["leaseOwner"]  # a string, never null
    assert schemas["StepFailIn"]["properties"]["retryable"] == {
        "default": False,
        "title": "Retryable",
        "type": "boolean",
    }
    assert {"type": "null"} in schemas["QueueConfigIn"]["properties"]["concurrency"]["anyOf"]  # null keeps
    assert schemas["StepBeginIn"]["properties"]["input"]["$ref"] == "#/components/schemas/JsonValue"
