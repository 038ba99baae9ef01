from __future__ import annotations

import datetime as dt
import json
import re
from typing import Any

from django import forms
from django.core.validators import URLValidator

from dashboard.selectors.policies import LABELS, format_seconds
from dashboard.selectors.runs import RunFilters
from dashboard.selectors.usage import default_range
from tidebase_core.jsonsafe import storable_problem
from tidebase_core.models import ApprovalPolicy, ExpiryAction, GateStatus, KeyScope, RejectMode
from tidebase_core.models.runs import RunStatus
from tidebase_core.services.policies import BODY_FIELDS, policy_body


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


MAX_SLA_S = 365 * 86400
"""The longest reminder, escalation or expiry delay a policy may set (a year)."""

_DURATION = re.compile(r"(\d+)\s*([dhms])")
_UNIT_S = {"d": 86400, "h": 3600, "m": 60, "s": 1}


class SecondsField(forms.Field):
    """A delay typed as ``90s``, ``15m``, ``1h 30m``, ``2d`` or a plain number of seconds; empty
    for none. Cleans to whole seconds (or None)."""

    widget = forms.TextInput

    def __init__(self, **kwargs: Any) -> None:
        kwargs.setdefault("required", False)
        kwargs.setdefault("help_text", "e.g. 15m, 1h 30m, 2d. Empty: never.")
        super().__init__(**kwargs)

    def widget_attrs(self, widget: forms.Widget) -> dict[str, Any]:
        return {**super().widget_attrs(widget), "maxlength": "40", "placeholder": "never"}

    def prepare_value(self, value: Any) -> Any:
        return format_seconds(value) if isinstance(value, int) else value

    def to_python(self, value: Any) -> int | None:
        text = str(value or "").strip().lower()
        if not text:
            return None
        if len(text) > 40:
            raise forms.ValidationError("Write a duration like 90s, 15m, 1h 30m or 2d.", code="invalid")
        if text.isdigit():
            seconds = int(text)
        else:
            compact = text.replace(" ", "")
            parts = _DURATION.findall(text)
            if not parts or "".join(n + u for n, u in parts) != compact:
                raise forms.ValidationError("Write a duration like 90s, 15m, 1h 30m or 2d.", code="invalid")
            seconds = sum(int(n) * _UNIT_S[u] for n, u in parts)
        if seconds <= 0:
            raise forms.ValidationError("A delay must be longer than zero (leave it empty for none).", code="min")
        if seconds > MAX_SLA_S:
            raise forms.ValidationError("A delay may be at most 365 days.", code="max")
        return seconds


SLACK_CHANNEL = re.compile(r"#?[A-Za-z0-9._-]{1,80}")


def _clean_slack(value: str) -> str:
    """A Slack incoming-webhook URL (http or https) or a channel id or name (sent with the bot
    token), or empty."""
    value = value.strip()
    if not value:
        return ""
    if "://" in value:
        URLValidator(schemes=["http", "https"], message="Enter a Slack webhook URL (https://hooks.slack.com/…).")(value)
        return value
    if not SLACK_CHANNEL.fullmatch(value):
        raise forms.ValidationError("Enter a Slack webhook URL or a channel id such as C0123ABCD.")
    return value


class PolicyForm(forms.Form):
    """An approval policy as an admin edits it; ``body()`` is what ``policy_save`` takes. The
    group and key pickers offer the existing Django groups and API keys, plus whatever the
    policy lists now (a deleted group stays visible so it can be removed)."""

    name = forms.CharField(max_length=100)
    enabled = forms.BooleanField(required=False, initial=True)
    position = forms.IntegerField(
        initial=100, min_value=-1_000_000, max_value=1_000_000, help_text="Lower first: a gate gets the first match."
    )
    workflow_pattern = forms.CharField(
        max_length=200, initial="*", help_text="Shell pattern on the run's workflow: * ? [abc]."
    )
    gate_pattern = forms.CharField(max_length=200, initial="*", help_text="Shell pattern on the gate's name.")
    approver_groups = forms.MultipleChoiceField(
        required=False,
        widget=forms.CheckboxSelectMultiple,
        help_text="None (and no key): anyone who may approve gates.",
    )
    approver_keys = forms.MultipleChoiceField(
        required=False,
        widget=forms.CheckboxSelectMultiple,
        help_text="API keys (by name, from the API keys page) that may decide through the API.",
    )
    quorum = forms.IntegerField(
        initial=1, min_value=1, max_value=100, help_text="Distinct approvers needed to approve."
    )
    reject_mode = forms.ChoiceField(choices=RejectMode.choices, initial=RejectMode.ANY)
    allow_self_approval = forms.BooleanField(required=False, help_text="Let whoever started the run approve its gates.")
    require_comment = forms.BooleanField(required=False)
    allow_token = forms.BooleanField(required=False, help_text="Let a gate's resolve-token link decide it.")
    email = forms.BooleanField(required=False, help_text="Email the approvers when a gate opens and at reminders.")
    email_links = forms.BooleanField(required=False, help_text="Signed, single-use Approve/Reject links.")
    slack = forms.CharField(required=False, max_length=500, help_text="Incoming-webhook URL or channel id.")
    remind_after_s = SecondsField()
    escalate_after_s = SecondsField()
    escalate_groups = forms.MultipleChoiceField(required=False, widget=forms.CheckboxSelectMultiple)
    escalate_slack = forms.CharField(required=False, max_length=500)
    expire_after_s = SecondsField()
    expiry_action = forms.ChoiceField(choices=ExpiryAction.choices, initial=ExpiryAction.NONE)

    def __init__(self, *args: Any, groups: list[str], keys: list[str], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        for name, field in self.fields.items():
            field.label = LABELS.get(name, field.label)
        current = self.initial
        for name, names in (("approver_groups", groups), ("escalate_groups", groups), ("approver_keys", keys)):
            field = self.fields[name]
            assert isinstance(field, forms.MultipleChoiceField)
            field.choices = [(n, n) for n in sorted({*names, *current.get(name, [])})]

    @classmethod
    def initial_for(cls, policy: ApprovalPolicy) -> dict[str, Any]:
        return policy_body(policy)

    def clean_slack(self) -> str:
        return _clean_slack(self.cleaned_data["slack"])

    def clean_escalate_slack(self) -> str:
        return _clean_slack(self.cleaned_data["escalate_slack"])

    def clean(self) -> dict[str, Any]:
        data = super().clean() or {}
        if data.get("email_links") and not data.get("email"):
            self.add_error("email_links", "One-click links go in the emails: turn on Email too.")
        return data

    def body(self) -> dict[str, Any]:
        return {name: self.cleaned_data[name] for name in BODY_FIELDS}


class ReasonForm(forms.Form):
    reason = forms.CharField(required=False, max_length=500)


def _day_start(day: dt.date) -> dt.datetime:
    return dt.datetime.combine(day, dt.time.min, tzinfo=dt.UTC)
