"""The Storage page's policy form: a workflow (or pattern) and the fields it overrides."""

from __future__ import annotations

from typing import Any

from django import forms

from retention.conf import MAX_VALUE
from retention.policy import FIELDS, Policy, rule_problems

LABELS = {
    "completed_days": "Completed runs (days)",
    "failed_days": "Failed runs (days)",
    "cancelled_days": "Cancelled runs (days)",
    "usage_days": "Raw usage records (days)",
    "rollup_days": "Daily usage rollups (days)",
    "delivery_days": "Webhook deliveries (days)",
    "state_days": "State versions (days)",
    "state_versions": "State versions to keep (newest)",
}


class PolicyForm(forms.Form):
    workflow = forms.CharField(
        max_length=200,
        help_text="A workflow name, or a pattern: * any characters, ? one character; * alone is every workflow.",
    )

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        for name in FIELDS:
            self.fields[name] = forms.IntegerField(
                label=LABELS[name],
                required=False,
                min_value=0,
                max_value=MAX_VALUE,
                help_text="Empty: inherit. 0: keep forever.",
            )

    def clean_workflow(self) -> str:
        value = str(self.cleaned_data["workflow"]).strip()
        if not value:
            raise forms.ValidationError("Name a workflow, or * for every workflow.")
        if any(ord(c) < 32 for c in value):
            raise forms.ValidationError("The name cannot contain control characters.")
        return value

    def clean(self) -> dict[str, Any]:
        data = super().clean() or {}
        if self.errors:
            return data
        values = {name: data.get(name) for name in FIELDS}
        for name, message in rule_problems(values, data["workflow"], Policy.load()).items():
            self.add_error(name, message)
        return data

    def values(self) -> dict[str, int | None]:
        return {name: self.cleaned_data.get(name) for name in FIELDS}
