"""Usage and cost: charts, tables and CSV over a range of UTC days, read from the usage rollups."""

from __future__ import annotations

import csv
import datetime as dt
from collections.abc import Iterator
from decimal import Decimal

from django.http import HttpResponseBase, StreamingHttpResponse
from django.shortcuts import render
from django.utils import timezone
from django.views.decorators.http import require_GET

from dashboard.forms import UsageRangeForm
from dashboard.selectors import usage as selectors
from dashboard.views._common import HtmxHttpRequest, permission
from tidebase_core.selectors import cost_figures

FORMULA_PREFIXES = ("=", "+", "-", "@", "\t", "\r")
"""What makes a spreadsheet read a cell as a formula (OWASP, "CSV Injection")."""


def csv_cell(value: object) -> object:
    """One CSV cell. Text that a spreadsheet would run as a formula (a workflow named
    ``=HYPERLINK(...)``) gets a leading ``'``, so it is shown as text; a Decimal is written in
    plain fixed-point (``0``, ``0.0125``), never in exponent form (``0E-10``)."""
    if value is None:
        return ""
    if isinstance(value, Decimal):
        return format(value.normalize(), "f") if value.is_finite() else str(value)
    if isinstance(value, str) and value.startswith(FORMULA_PREFIXES):
        return "'" + value
    return value


class _Echo:
    def write(self, value: str) -> str:
        return value


@require_GET
@permission("view_dashboard")
def usage(request: HtmxHttpRequest) -> HttpResponseBase:
    form = UsageRangeForm(request.GET or {"days": "30"})
    since, until = form.range()
    if request.GET.get("format") == "csv":
        return _csv(since, until)
    report = selectors.usage_report(since=since, until=until)
    days = [d["day"].date() for d in report.days]  # the range's UTC days, every one present
    today = timezone.now().astimezone(dt.UTC).date()
    first, end = (days[0], days[-1] + dt.timedelta(days=1)) if days else (today, today)
    figures = cost_figures.usage_figures(first=first, end=end, today=today)
    series = {**report.series(), **figures.series([d.isoformat() for d in days])}
    context = {
        "form": form,
        "report": report,
        "figures": figures,
        "series": series,
        "csv_query": request.GET.urlencode(),
    }
    return render(request, "dashboard/usage/index.html", context)


def _csv(since: object, until: object) -> StreamingHttpResponse:
    rows = selectors.usage_csv_rows(since=since, until=until)  # type: ignore[arg-type]
    columns = [
        "day",
        "workflow",
        "provider",
        "model",
        "records",
        "input_tokens",
        "output_tokens",
        "total_tokens",
        "cost_usd",
    ]
    keys = ["day", "workflow", "provider", "model", "records", "sum_input", "sum_output", "sum_tokens", "sum_cost"]

    def lines() -> Iterator[str]:
        writer = csv.writer(_Echo())
        yield writer.writerow(columns)
        for row in rows.iterator(chunk_size=2000):
            values = {**row, "day": row["day"].isoformat()}
            yield writer.writerow([csv_cell(values[k]) for k in keys])

    name = f"tidebase-usage-{since:%Y%m%d}-{until:%Y%m%d}.csv"
    response = StreamingHttpResponse(lines(), content_type="text/csv; charset=utf-8")
    response["Content-Disposition"] = f'attachment; filename="{name}"'
    return response
