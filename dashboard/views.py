from __future__ import annotations

from django.conf import settings
from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render

from tidebase_core.models import Gate, Run


@login_required
def home(request: HttpRequest) -> HttpResponse:
    """Placeholder landing page until the operator dashboard lands: counts and links."""
    context = {
        "runs": Run.objects.count(),
        "pending_gates": Gate.objects.filter(status="pending").count(),
        "api_docs": "/api/docs",
        "public_url": settings.TIDEBASE_PUBLIC_URL,
    }
    return render(request, "dashboard/home.html", context)
