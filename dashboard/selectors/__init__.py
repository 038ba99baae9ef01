"""Dashboard-only reads, one module per subject: ``approvals`` (the inbox), ``runs``, ``usage``,
``webhooks`` (the delivery log), ``keys`` and ``queues`` (with schedules). Every function issues a
fixed number of queries, whatever the number of rows (no N+1); lists are bounded and runs page by
keyset on ``(created_at, id)``. Import the subject module; nothing is re-exported here."""

from __future__ import annotations
