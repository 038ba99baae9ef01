"""Issue #15 item 3: a usage record with tokens, provider and model but no ``costUsd`` is priced by
the server with genai-prices, and ``costSource`` says where its cost came from. The caller's cost
is never replaced, an unknown model leaves the cost null without failing the write, the rollups
count the computed cost, and the price is looked up before the write statement (no transaction
or lock held while genai-prices runs)."""

from __future__ import annotations

import datetime as dt
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

import genai_prices
import httpx
import psycopg
import pytest
from django.db import connection

from tests.api.test_hotpath import encoded
from tidebase_core.models import UsageDaily, UsageRecord, UsageRunTotal
from tidebase_core.services import runs, usage
from tidebase_core.services.usage import usage_rollups_check

pytestmark = pytest.mark.django_db(transaction=True, available_apps=["tidebase_core"])

AT = dt.datetime(2025, 6, 1, 12, tzinfo=dt.UTC)
SOURCE = f"genai-prices {genai_prices.__version__}"


def expected(model: str, provider: str, at: dt.datetime, **tokens: int) -> Decimal:
    """genai-prices' own price, at tb_usage.cost_usd's scale."""
    price = genai_prices.calc_price(
        genai_prices.Usage(**tokens), model, provider_id=provider, genai_request_timestamp=at
    ).total_price
    return Decimal(price).quantize(Decimal("1E-10"), rounding=ROUND_HALF_UP)


def test_a_record_without_a_cost_is_priced_by_genai_prices_and_the_rollups_count_it() -> None:
    run = runs.run_create(workflow_name="wf")
    cost = expected("gpt-4o", "openai", AT, input_tokens=12_345, output_tokens=678, cache_read_tokens=2_000)
    assert cost > 0

    record = usage.usage_record(
        run_id=run.id,
        kind="llm",
        provider="openai",
        model="gpt-4o",
        input_tokens=12_345,
        output_tokens=678,
        metadata={"cache_read_tokens": 2_000},
        at=AT,
    )

    stored = UsageRecord.objects.get(id=record.id)
    assert (stored.cost_usd, stored.cost_source) == (cost, SOURCE)
    assert (record.cost_usd, record.cost_source) == (cost, SOURCE)
    # the cached tokens count: they are cheaper than the same input uncached
    assert cost < expected("gpt-4o", "openai", AT, input_tokens=12_345, output_tokens=678)
    assert UsageRunTotal.objects.get(run_id=run.id).cost_usd == cost
    assert UsageDaily.objects.get(day=AT.date(), workflow="wf", model="gpt-4o").cost_usd == cost
    assert usage_rollups_check() == {"tb_usage_run": 0, "tb_usage_daily": 0}


def test_the_callers_cost_is_never_replaced_and_unpriceable_records_keep_a_null_cost() -> None:
    run = runs.run_create(workflow_name="wf")
    sent = usage.usage_record(
        run_id=run.id, provider="openai", model="gpt-4o", input_tokens=1000, output_tokens=10, cost_usd=Decimal("0")
    )
    unknown_model = usage.usage_record(run_id=run.id, provider="openai", model="no-such-model", input_tokens=5)
    unknown_provider = usage.usage_record(run_id=run.id, provider="no-such-provider", model="gpt-4o", input_tokens=5)
    no_provider = usage.usage_record(run_id=run.id, model="gpt-4o", input_tokens=5)
    no_tokens = usage.usage_record(run_id=run.id, provider="openai", model="gpt-4o", total_tokens=5)

    rows = {u.id: (u.cost_usd, u.cost_source) for u in UsageRecord.objects.filter(run_id=run.id)}
    assert rows[sent.id] == (Decimal("0"), "caller")
    for record in (unknown_model, unknown_provider, no_provider, no_tokens):
        assert rows[record.id] == (None, None)
    assert UsageRunTotal.objects.get(run_id=run.id).cost_usd == 0


def test_a_cost_too_large_for_the_ledger_is_left_null() -> None:
    run = runs.run_create(workflow_name="wf")
    record = usage.usage_record(run_id=run.id, provider="openai", model="gpt-4o", output_tokens=2**53, at=AT)
    assert (UsageRecord.objects.get(id=record.id).cost_usd, record.cost_source) == (None, None)


def test_the_price_is_looked_up_before_the_statement_with_no_transaction_open(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    run = runs.run_create(workflow_name="wf")
    connection.ensure_connection()
    order: list[str] = []
    calc, execute = genai_prices.calc_price, psycopg.Cursor.execute

    def spied_calc(*args: Any, **kwargs: Any) -> Any:
        assert not connection.in_atomic_block
        assert connection.connection.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
        order.append("price")
        return calc(*args, **kwargs)

    def spied_execute(self: Any, query: Any, *args: Any, **kwargs: Any) -> Any:
        order.append("sql")
        return execute(self, query, *args, **kwargs)

    monkeypatch.setattr(genai_prices, "calc_price", spied_calc)
    monkeypatch.setattr(psycopg.Cursor, "execute", spied_execute)
    record = usage.usage_record(run_id=run.id, provider="openai", model="gpt-4o", input_tokens=100, at=AT)

    assert order == ["price", "sql"]
    assert record.cost_source == SOURCE


def test_the_http_answer_carries_the_cost_and_its_source_on_both_paths(api: httpx.Client) -> None:
    for path in (lambda run_id: run_id, encoded):  # the WSGI hot path, then the framework's
        run_id = api.post("/runs/wf", json={}).json()["run"]["id"]
        body = {"kind": "llm", "provider": "openai", "model": "gpt-4o", "inputTokens": 1000, "outputTokens": 200}
        priced = api.post(f"/runs/{path(run_id)}/usage", json=body)
        unknown = api.post(f"/runs/{path(run_id)}/usage", json={**body, "model": "no-such-model"})
        sent = api.post(f"/runs/{path(run_id)}/usage", json={**body, "costUsd": 0.5})

        assert [r.status_code for r in (priced, unknown, sent)] == [200, 200, 200]
        record = UsageRecord.objects.get(id=priced.json()["usage"]["id"])
        cost = expected("gpt-4o", "openai", record.created_at, input_tokens=1000, output_tokens=200)
        assert (priced.json()["usage"]["costUsd"], priced.json()["usage"]["costSource"]) == (float(cost), SOURCE)
        assert (record.cost_usd, record.cost_source) == (cost, SOURCE)
        assert (unknown.json()["usage"]["costUsd"], unknown.json()["usage"]["costSource"]) == (None, None)
        assert (sent.json()["usage"]["costUsd"], sent.json()["usage"]["costSource"]) == (0.5, "caller")
        detail = api.get(f"/runs/{run_id}").json()
        assert [u["costSource"] for u in detail["usage"]] == [SOURCE, None, "caller"]
