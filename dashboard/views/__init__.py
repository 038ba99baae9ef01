"""Dashboard views: thin FBVs that authorize, call one selector or service, and render."""

from __future__ import annotations

from dashboard.views.inbox import gate_decide, inbox
from dashboard.views.keys import key_create, key_list, key_revoke
from dashboard.views.processes import process_list
from dashboard.views.queues import queue_list
from dashboard.views.runs import run_cancel_view, run_detail, run_list, run_recover_view
from dashboard.views.usage import usage
from dashboard.views.webhooks import webhook_list, webhook_redeliver

__all__ = [
    "gate_decide",
    "inbox",
    "key_create",
    "key_list",
    "key_revoke",
    "process_list",
    "queue_list",
    "run_cancel_view",
    "run_detail",
    "run_list",
    "run_recover_view",
    "usage",
    "webhook_list",
    "webhook_redeliver",
]
