from __future__ import annotations

import datetime as dt
import json
from typing import Any

from django import forms

from dashboard.selectors.runs import RunFilters
from dashboard.selectors.usage import default_range
from tidebase_core.jsonsafe import storable_problem
from tidebase_core.models import GateStatus, KeyScope
from tidebase_core.models.runs import RunStatus


class GateDecisionForm(forms.Form):
    decision = forms.ChoiceField(choices=[(GateStatus.APPROVED, "Approve"), (GateStatus.REJECTED, "Reject")])
    comment = forms.CharField(required=False, max_length=2000, widget=forms.Textarea(attrs={"rows": 2}))
    payload = forms.CharField(
        required=False,
        max_length=100_000,
        widget=forms.Textarea(attrs={"rows": 3, "spellcheck": "false"}),
        help_text='Optional JSON object returned to the agent, e.g. {"budget": 200}.',
    )

    def clean_payload(self) -> dict[str, Any]:
        raw = self.cleaned_data["payload"].strip()
        if not raw:
            return {}
        try:
            value = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise forms.ValidationError(f"Not valid JSON: {exc.msg} (line {exc.lineno}, column {exc.colno}).") from exc
        if not isinstance(value, dict):
            raise forms.ValidationError('The payload must be a JSON object, like {"key": "value"}.')
        problem = storable_problem(value)  # e.g. "\u0000" or 1e400: Postgres cannot store it
        if problem is not None:
            raise forms.ValidationError(f"The payload cannot be stored: {problem}.")
        return value

    def decision_payload(self) -> dict[str, Any]:
        """What the agent receives: the JSON payload plus the comment, when given."""
        payload = dict(self.cleaned_data["payload"])
        comment = self.cleaned_data["comment"].strip()
        if comment:
            payload["comment"] = comment
        return payload


class RunFilterForm(forms.Form):
    q = forms.CharField(required=False, max_length=64, label="Run id")
    status = forms.ChoiceField(required=False, choices=[("", "Any status"), *RunStatus.choices])
    workflow = forms.CharField(required=False, max_length=200)
    queue = forms.CharField(required=False, max_length=200)
    since = forms.DateField(required=False, label="From", widget=forms.DateInput(attrs={"type": "date"}))
    until = forms.DateField(required=False, label="To", widget=forms.DateInput(attrs={"type": "date"}))
    cursor = forms.CharField(required=False, max_length=200, widget=forms.HiddenInput)

    def filters(self) -> RunFilters:
        data = self.cleaned_data if self.is_valid() else {}
        since: dt.date | None = data.get("since")
        until: dt.date | None = data.get("until")
        return RunFilters(
            status=data.get("status") or "",
            workflow=(data.get("workflow") or "").strip(),
            queue=(data.get("queue") or "").strip(),
            since=_day_start(since) if since else None,
            # "To" is inclusive: runs created on that day are shown.
            until=_day_start(until) + dt.timedelta(days=1) if until else None,
            run_id=(data.get("q") or "").strip(),
        )


class UsageRangeForm(forms.Form):
    PRESETS = [("7", "Last 7 days"), ("30", "Last 30 days"), ("90", "Last 90 days")]
    days = forms.ChoiceField(required=False, choices=[*PRESETS, ("", "Custom (dates)")])
    since = forms.DateField(required=False, label="From", widget=forms.DateInput(attrs={"type": "date"}))
    until = forms.DateField(required=False, label="To", widget=forms.DateInput(attrs={"type": "date"}))

    def range(self) -> tuple[dt.datetime, dt.datetime]:
        data = self.cleaned_data if self.is_valid() else {}
        since: dt.date | None = data.get("since")
        until: dt.date | None = data.get("until")
        if since and until and since <= until:  # explicit dates win over the preset
            # At most a year per view: the daily series has one point per day.
            since = max(since, until - dt.timedelta(days=366))
            return _day_start(since), _day_start(until) + dt.timedelta(days=1)
        return default_range(int(data.get("days") or 30))


class ApiKeyForm(forms.Form):
    name = forms.CharField(max_length=200, help_text="Unique, e.g. the agent or service that will use it.")
    scope = forms.ChoiceField(choices=KeyScope.choices, initial=KeyScope.AGENT)


class ReasonForm(forms.Form):
    reason = forms.CharField(required=False, max_length=500)


def _day_start(day: dt.date) -> dt.datetime:
    return dt.datetime.combine(day, dt.time.min, tzinfo=dt.UTC)
