"""``POST /slack/interactions``: Slack's interactive callback (the Request URL of the Slack app's
Interactivity settings). A plain Django view, not a ninja route: Slack authenticates by signing
the raw body (``services.slack_interactions``), not with an API key, and sends a form, not JSON.
Outside the protocol paths, so it passes the dashboard's middleware: CSRF is exempted here, as
the signature is what proves the request came from Slack."""

from __future__ import annotations

import logging

from django.http import HttpRequest, HttpResponse
from django.views.decorators.csrf import csrf_exempt

from tidebase_core.exceptions import DomainError, InvalidPayload, MethodNotAllowed
from tidebase_core.services.slack_interactions import MAX_BODY_BYTES, slack_interaction
from tidebase_core.wire import error_response, json_response

logger = logging.getLogger(__name__)


@csrf_exempt
def slack_interactions(request: HttpRequest) -> HttpResponse:
    """Answer one button click: 200 with a message for the clicker, or the error (401 for a bad
    signature, 409 for a replay, 400 for a body that is not a click, 503 when Slack is not set up)."""
    if request.method != "POST":
        response = error_response(MethodNotAllowed(f"method {request.method} not allowed"))
        response["Allow"] = "POST"
        return response
    length = request.META.get("CONTENT_LENGTH") or "0"
    if not length.isdigit() or int(length) > MAX_BODY_BYTES:  # refused before the body is read
        return error_response(InvalidPayload(f"the body must be at most {MAX_BODY_BYTES} bytes"))
    try:
        answer = slack_interaction(
            body=request.body,
            timestamp=request.headers.get("X-Slack-Request-Timestamp"),
            signature=request.headers.get("X-Slack-Signature"),
        )
    except DomainError as exc:
        if exc.status_code in (401, 409):  # forged, stale or replayed: worth an operator's look
            logger.warning("slack.callback.refused", extra={"code": exc.code})
        return error_response(exc)
    return json_response(answer)
