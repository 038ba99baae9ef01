"""Delivering outbox rows (``ChannelDelivery``, ``RecoveryAttempt``, ``Notification``): claim,
send, record.

The database holds the retry state; Celery messages only say "look at this row now".

1. **Claim** (``delivery_claim``): one short transaction locks the row with ``FOR UPDATE SKIP
   LOCKED`` and bumps ``attempts`` with a compare-and-set on the value the message carried, so each
   attempt number is sent by at most one worker. ``next_attempt_at`` moves to now +
   ``TIDEBASE_WEBHOOK_INFLIGHT_S``: if the worker dies mid-attempt, the sweep sends the next
   attempt after that horizon, with the same ``webhook-id``. The attempt is logged
   (``DeliveryAttempt``) before any network I/O.
2. **Send** (``delivery_send``): outside any transaction, through the SSRF guard, with a connect
   timeout and a total deadline, never following redirects. A notification is an email (Django's
   email framework) or a Slack message (an HTTP POST like any other), rendered at claim time.
3. **Record** (``delivery_record``): the attempt's outcome, then either ``delivered``, a retry at
   now + backoff, or dead-lettered ``failed``. Recovery rows append ``recovery.delivered`` /
   ``recovery.failed`` on their final outcome.

``delivery_sweep`` finds rows whose message was lost (due and unclaimed) and re-dispatches them;
``delivery_redeliver`` is the operator's "send it again".

Modules, one subject each: ``kinds`` (the three outbox tables), ``messages`` (what an attempt
sends), ``notify`` (approval emails and Slack messages), ``sending`` (the HTTP request or the
email), ``retries`` (when to try again), ``attempts`` (claim and record) and ``redelivery`` (the
sweep and the operator's redelivery). Nothing is re-exported here.
"""

from __future__ import annotations
