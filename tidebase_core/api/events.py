"""``GET /runs/:id/events``: the run's event log as Server-Sent Events (§7.10).

Backlog first (``seq > after``, or ``Last-Event-ID`` when ``after`` is absent), then live
events as they commit, from any web process (see ``realtime``); each batch is sent only once it
is on disk (``db.flush_barrier``: step begins commit asynchronously). Each message is one compact
``data:`` line then ``id: <seq>``, with no ``event:`` line so browsers' ``onmessage`` fires.
A comment line every ``TIDEBASE_SSE_KEEPALIVE_S`` keeps proxies from closing an idle stream.
"""

from __future__ import annotations

from collections.abc import Callable

from django.db import close_old_connections
from django.http import HttpRequest, HttpResponseBase
from django.views.decorators.csrf import csrf_exempt

from tidebase_core import wire
from tidebase_core.api.common import seg
from tidebase_core.api.scopes import scoped
from tidebase_core.db import flush_barrier
from tidebase_core.exceptions import DomainError, InvalidRequest, MethodNotAllowed
from tidebase_core.selectors.runs import events_after
from tidebase_core.waiting import EventStream


def _start(request: HttpRequest) -> int:
    raw = request.GET.get("after")
    if raw is None:
        raw = request.headers.get("Last-Event-ID") or "0"
    try:
        after = int(raw)
    except ValueError:
        raise InvalidRequest("after must be an integer", field="after") from None
    if after < 0:
        raise InvalidRequest("after must be >= 0", field="after")
    return after


def _poll(run_id: str, after: int) -> Callable[[], bytes | None]:
    """The stream's next chunk: every event committed after the last one sent, or None."""
    cursor = after

    def poll() -> bytes | None:
        nonlocal cursor
        try:
            batch = events_after(run_id=run_id, after=cursor)
            if not batch:
                return None
            flush_barrier()  # never send an event a Postgres crash could still take back
        finally:
            close_old_connections()  # no connection held between polls
        chunk = []
        for event in batch:
            chunk.append(b"data: " + wire.dumps(wire.event_out(event)) + b"\nid: " + str(event.seq).encode() + b"\n\n")
            cursor = event.seq
        return b"".join(chunk)

    return poll


@csrf_exempt  # a protocol path: never demand CSRF tokens (§19.9), answer 405 JSON instead
@scoped("run_events")
def run_events(request: HttpRequest, run_id: str) -> HttpResponseBase:
    if request.method != "GET":
        return wire.error_response(MethodNotAllowed("method not allowed"))
    try:
        after = _start(request)
    except DomainError as exc:  # a plain Django view: render like the ninja error handler
        return wire.error_response(exc)
    rid = seg(run_id)
    return EventStream((rid,), _poll(rid, after))
