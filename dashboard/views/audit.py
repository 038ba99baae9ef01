"""The Audit page: recent entries of the audit trail, its export (CSV, JSONL) and a verify button.
Admin-only (``tidebase_core.view_audit``)."""

from __future__ import annotations

import datetime as dt

from django.core.exceptions import PermissionDenied
from django.http import Http404, HttpResponse, HttpResponseBase, StreamingHttpResponse
from django.shortcuts import render
from django.views.decorators.http import require_GET, require_POST

from dashboard.views._common import HtmxHttpRequest, permission
from tidebase_core.models import AuditEntry
from tidebase_core.services.audit import Verdict, audit_entries, audit_verify, export_lines

PERMISSION = "tidebase_core.view_audit"
TEMPLATE = "dashboard/audit/index.html"
RECENT = 100
FORMATS = {"csv": "text/csv; charset=utf-8", "jsonl": "application/x-ndjson; charset=utf-8"}


def _require(request: HtmxHttpRequest) -> None:
    if not request.user.has_perm(PERMISSION):
        raise PermissionDenied("you need the view audit permission")


def _page(request: HtmxHttpRequest, verdict: Verdict | None = None) -> HttpResponse:
    recent = list(AuditEntry.objects.order_by("-seq")[:RECENT])
    return render(request, TEMPLATE, {"entries": recent, "verdict": verdict, "recent": RECENT})


@require_GET
@permission("view_dashboard")
def audit_list(request: HtmxHttpRequest) -> HttpResponse:
    _require(request)
    return _page(request)


@require_POST
@permission("view_dashboard")
def audit_verify_view(request: HtmxHttpRequest) -> HttpResponse:
    _require(request)
    verdict = audit_verify()
    return _page(request, verdict)


@require_GET
@permission("view_dashboard")
def audit_export(request: HtmxHttpRequest, fmt: str) -> HttpResponseBase:
    _require(request)
    if fmt not in FORMATS:
        raise Http404("unknown export format: csv or jsonl")
    response = StreamingHttpResponse(export_lines(fmt, audit_entries()), content_type=FORMATS[fmt])
    name = f"tidebase-audit-{dt.datetime.now(dt.UTC):%Y%m%dT%H%M%SZ}.{fmt}"
    response["Content-Disposition"] = f'attachment; filename="{name}"'
    return response
