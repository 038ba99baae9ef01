"""The OpenAPI document (``/api/openapi.json``): what ninja generates from the request schemas,
completed in one place with what the routes answer (issue #12, item 7).

Routes return ``wire`` dicts rather than ninja response schemas, so ninja alone declares a bare
``200`` for every operation. ``document`` adds, per operation id:

- the ``200`` body (the envelope of PROTOCOL.md §19.1 with the objects of §3, every listed key
  required; extra keys may appear, additions are additive);
- every error the operation can answer, each an ``Error`` (``{"error", "code", ...}``);
- the optional bodies of ``cancel`` and ``recover`` (read by the view, not by ninja);
- the bearer security scheme, and the lower bounds of query parameters the views check.

``tests/api/test_schemathesis.py`` runs schemathesis with every check against a live server, so
this document and the server cannot drift apart unnoticed.
"""

from __future__ import annotations

from typing import Any

from ninja import NinjaAPI
from ninja.openapi.schema import OpenAPISchema
from pydantic import BaseModel

from tidebase_core.api.schemas import RunCancelIn, RunRecoverIn

Schema = dict[str, Any]

REF = "#/components/schemas/"


def ref(name: str) -> Schema:
    return {"$ref": REF + name}


def nullable(schema: Schema) -> Schema:
    return {"anyOf": [schema, {"type": "null"}]}


def obj(properties: dict[str, Schema], *, optional: tuple[str, ...] = ()) -> Schema:
    """An object with these keys, all required but ``optional``; other keys may appear."""
    required = [k for k in properties if k not in optional]
    return {"type": "object", "properties": properties, "required": required}


def array(items: Schema) -> Schema:
    return {"type": "array", "items": items}


STR: Schema = {"type": "string"}
INT: Schema = {"type": "integer"}
NUM: Schema = {"type": "number"}
BOOL: Schema = {"type": "boolean"}
OBJECT: Schema = {"type": "object"}
JSON: Schema = {}  # any JSON value
TS: Schema = {"type": "string", "format": "date-time"}
N_STR, N_INT, N_NUM, N_TS = nullable(STR), nullable(INT), nullable(NUM), nullable(TS)

RUN_STATUS = ["pending", "queued", "running", "completed", "failed", "cancelled"]
STEP_STATUS = ["pending", "running", "completed", "failed", "failed_retryable", "manual_review"]
GATE_STATUS = ["pending", "approved", "rejected", "canceled"]

OBJECTS: dict[str, Schema] = {
    "Run": obj(
        {
            "id": STR,
            "workflowName": STR,
            "input": JSON,
            "metadata": OBJECT,
            "status": {"type": "string", "enum": RUN_STATUS},
            "result": JSON,
            "error": JSON,
            "recoveryWebhook": N_STR,
            "leaseOwner": N_STR,
            "leaseExpiresAt": N_TS,
            "attempt": INT,
            "queue": N_STR,
            "dedupeKey": N_STR,
            "priority": INT,
            "runAt": N_TS,
            "maxAttempts": INT,
            "deadlineAt": N_TS,
            "cancelRequestedAt": N_TS,
            "cancelledAt": N_TS,
            "cancelReason": N_STR,
            "cancelActor": N_STR,
            "failureClass": N_STR,
            "createdAt": TS,
            "updatedAt": TS,
            "completedAt": N_TS,
            "budgetUsd": N_NUM,
        }
    ),
    "Step": obj(
        {
            "id": STR,
            "runId": STR,
            "name": STR,
            "inputHash": STR,
            "input": JSON,
            "options": OBJECT,
            "resumeContract": OBJECT,
            "status": {"type": "string", "enum": STEP_STATUS},
            "output": JSON,
            "error": JSON,
            "leaseOwner": N_STR,
            "leaseExpiresAt": N_TS,
            "attempt": INT,
            "startedAt": N_TS,
            "completedAt": N_TS,
            "createdAt": TS,
            "updatedAt": TS,
        }
    ),
    "Gate": obj(
        {
            "id": STR,
            "runId": STR,
            "name": STR,
            "prompt": STR,
            "data": JSON,
            "status": {"type": "string", "enum": GATE_STATUS},
            "decision": nullable({"type": "string", "enum": GATE_STATUS[1:]}),
            "actor": N_STR,
            "decidedBy": N_STR,
            "decisionPayload": JSON,
            "capability": JSON,
            "channels": array(OBJECT),
            "resolveToken": {**N_STR, "description": "null unless the caller may resolve gates"},
            "resolveUrl": STR,
            "timeoutMs": N_INT,
            "timeoutAt": N_TS,
            "createdAt": TS,
            "updatedAt": TS,
            "resolvedAt": N_TS,
        }
    ),
    "Event": obj({"id": INT, "runId": STR, "seq": INT, "type": STR, "payload": JSON, "createdAt": TS}),
    "State": obj({"runId": STR, "value": JSON, "version": INT, "updatedAt": TS}),
    "StateStream": obj(
        {
            "id": STR,
            "runId": STR,
            "name": STR,
            "targetType": STR,
            "targetId": STR,
            "currentVersion": INT,
            "currentValue": JSON,
            "metadata": OBJECT,
            "createdAt": TS,
            "updatedAt": TS,
        }
    ),
    "StateVersion": obj(
        {
            "id": STR,
            "streamId": STR,
            "runId": STR,
            "stepId": N_STR,
            "version": INT,
            "value": JSON,
            "patch": JSON,
            "label": N_STR,
            "reason": N_STR,
            "importance": STR,
            "metadata": OBJECT,
            "createdBy": N_STR,
            "createdAt": TS,
        }
    ),
    "RunEdge": obj(
        {
            "id": STR,
            "parentRunId": STR,
            "childRunId": STR,
            "name": STR,
            "edgeType": STR,
            "metadata": OBJECT,
            "createdAt": TS,
        }
    ),
    "RecoveryAttempt": obj(
        {
            "id": STR,
            "runId": STR,
            "reason": STR,
            "webhookUrl": STR,
            "status": STR,
            "httpStatus": N_INT,
            "responseBody": N_STR,
            "errorText": N_STR,
            "attempts": INT,
            "createdAt": TS,
            "completedAt": N_TS,
        }
    ),
    "Channel": obj({"id": STR, "runId": STR, "type": STR, "config": OBJECT, "events": array(STR), "createdAt": TS}),
    "ChannelDelivery": obj(
        {
            "id": STR,
            "runId": STR,
            "channelId": N_STR,
            "gateId": N_STR,
            "eventType": STR,
            "payload": JSON,
            "status": STR,
            "httpStatus": N_INT,
            "responseBody": N_STR,
            "errorText": N_STR,
            "attempts": INT,
            "createdAt": TS,
            "completedAt": N_TS,
        }
    ),
    "UsageRecord": obj(
        {
            "id": STR,
            "runId": STR,
            "stepId": N_STR,
            "kind": STR,
            "provider": N_STR,
            "model": N_STR,
            "label": N_STR,
            "quantity": N_NUM,
            "unit": N_STR,
            "inputTokens": N_INT,
            "outputTokens": N_INT,
            "totalTokens": N_INT,
            "costUsd": N_NUM,
            "costSource": N_STR,
            "metadata": OBJECT,
            "createdAt": TS,
        }
    ),
    "QueueConfig": obj({"name": STR, "concurrency": N_INT, "ratePerMinute": N_INT, "invokeUrl": N_STR, "paused": BOOL}),
    "QueueStats": obj(
        {
            "name": STR,
            "queued": INT,
            "running": INT,
            "failed": INT,
            "completed": INT,
            "cancelled": INT,
            "config": nullable(ref("QueueConfig")),
        }
    ),
    "Schedule": obj(
        {
            "name": STR,
            "cron": STR,
            "workflowName": STR,
            "input": JSON,
            "queue": STR,
            "maxAttempts": INT,
            "enabled": BOOL,
            "nextRunAt": N_TS,
            "lastEnqueuedAt": N_TS,
            "createdAt": TS,
            "updatedAt": TS,
        }
    ),
    "BudgetStop": obj(
        {
            "scope": {"type": "string", "enum": ["run", "workflow_day", "workflow_month", "global_day"]},
            "workflow": N_STR,
            "period": N_STR,
            "spentUsd": NUM,
            "limitUsd": NUM,
            "askedUsd": NUM,
            "runSpentUsd": NUM,
            "projectedUsd": N_NUM,
            "step": N_STR,
        }
    ),
    "Budget": obj(
        {
            "scope": STR,
            "workflow": N_STR,
            "period": N_STR,
            "spentUsd": NUM,
            "limitUsd": NUM,
            "remainingUsd": NUM,
        }
    ),
    "SharedBudget": obj(
        {
            "scope": {"type": "string", "enum": ["workflow_day", "workflow_month", "global_day"]},
            "workflow": N_STR,
            "limitUsd": N_NUM,
            "version": INT,
            "updatedBy": STR,
            "updatedAt": TS,
            "period": N_STR,
            "spentUsd": N_NUM,
        }
    ),
    "BudgetVersion": obj(
        {
            "scope": STR,
            "workflow": N_STR,
            "version": INT,
            "limitUsd": N_NUM,
            "createdBy": STR,
            "note": STR,
            "createdAt": TS,
        }
    ),
    "Error": {
        **obj(
            {
                "error": {"type": "string", "description": "What went wrong, for a human."},
                "code": {"type": "string", "description": "What went wrong, for a program."},
                "field": {"type": "string", "description": "The request field at fault, when there is one."},
                "issues": array(obj({"code": N_STR, "path": array({"type": ["string", "integer"]}), "message": N_STR})),
            },
            optional=("field", "issues"),
        ),
        "description": "Every error answer. Some add context: `run` (409 `run_cancelled`, `lease_lost`, "
        "`run_completed`), `leaseOwner` (409 `run_leased`), `limit` (413), `scope` (403).",
    },
}

STEP_BEGIN: Schema = {
    "oneOf": [
        obj({"action": {"const": "execute"}, "step": ref("Step"), "leaseOwner": STR}),
        obj({"action": {"const": "return"}, "step": ref("Step"), "output": JSON}),
        obj({"action": {"const": "locked"}, "step": ref("Step")}),
        obj(
            {
                "action": {"const": "input_mismatch"},
                "step": ref("Step"),
                "expectedInputHash": STR,
                "actualInputHash": STR,
            }
        ),
        obj({"action": {"const": "cancelled"}}),
        obj({"action": {"const": "parked"}, "gate": ref("Gate"), "budget": ref("BudgetStop")}),
    ],
    "description": 'What the caller must do next (PROTOCOL.md §7.1). `parked` (only with `onBudget: "park"`): '
    "a budget of the run is reached; wait on `gate`, then begin the step again.",
}

RUN_DETAIL = obj(
    {
        "run": ref("Run"),
        "steps": array(ref("Step")),
        "state": nullable(ref("State")),
        "stateStreams": array(ref("StateStream")),
        "stateVersions": array(ref("StateVersion")),
        "runEdges": array(ref("RunEdge")),
        "childRuns": array(ref("Run")),
        "recoveryAttempts": array(ref("RecoveryAttempt")),
        "channels": array(ref("Channel")),
        "channelDeliveries": array(ref("ChannelDelivery")),
        "gates": array(ref("Gate")),
        "usage": array(ref("UsageRecord")),
        "events": array(ref("Event")),
    }
)

RUN = {"run": ref("Run")}
OK: dict[str, Schema] = {
    # operation id: the 200 body
    "health": obj({"ok": BOOL}),
    "ready": obj({"ready": BOOL, "checks": OBJECT}),
    "create_run": obj(RUN),
    "list_runs": obj({"runs": array(ref("Run"))}),
    "get_run": RUN_DETAIL,
    "begin_run": obj({**RUN, "leaseOwner": STR}),
    "heartbeat_run": obj(RUN),
    "complete_run": obj(RUN),
    "fail_run": obj({**RUN, "requeued": BOOL}),
    "cancel_run": obj(RUN),
    "recover_run": obj({"recoveryAttempt": ref("RecoveryAttempt")}),
    "create_child_run": obj({**RUN, "edge": ref("RunEdge"), "created": BOOL}),
    "begin_step": STEP_BEGIN,
    "list_steps": obj({"steps": array(ref("Step"))}),
    "complete_step": obj({"step": ref("Step")}),
    "fail_step": obj({"step": ref("Step")}),
    "begin_gate": obj({"action": {"type": "string", "enum": ["wait", "return"]}, "gate": ref("Gate")}),
    "get_gate": obj({"gate": ref("Gate"), "runStatus": {"type": "string", "enum": RUN_STATUS}}),
    "resolve_gate": obj({"gate": ref("Gate")}),
    "set_state": obj({"state": ref("State")}),
    "patch_state": obj({"state": ref("State")}),
    "save_state": obj({"stateVersion": ref("StateVersion")}),
    "list_state_versions": obj({"stateVersions": array(ref("StateVersion"))}),
    "create_snapshot": obj({"snapshot": ref("StateVersion")}),
    "list_snapshots": obj({"snapshots": array(ref("StateVersion"))}),
    "record_usage": obj({"usage": ref("UsageRecord")}),
    "claim_runs": obj({"runs": array(ref("Run")), "leaseOwner": STR}),
    "list_queues": obj({"queues": array(ref("QueueStats"))}),
    "enqueue_run": obj({**RUN, "deduplicated": BOOL}),
    "configure_queue": obj({"config": ref("QueueConfig")}),
    "list_schedules": obj({"schedules": array(ref("Schedule"))}),
    "set_schedule": obj({"schedule": ref("Schedule")}),
    "delete_schedule": obj({"deleted": STR}),
    "check_budget": {
        "oneOf": [
            obj(
                {
                    "action": {"const": "proceed"},
                    "budgets": array(ref("Budget")),
                    "remainingUsd": N_NUM,
                }
            ),
            obj({"action": {"const": "parked"}, "gate": ref("Gate"), "budget": ref("BudgetStop")}),
        ]
    },
    "list_budgets": obj({"budgets": array(ref("SharedBudget")), "versions": array(ref("BudgetVersion"))}),
}

ERRORS: dict[int, str] = {
    400: "Bad request: invalid JSON (`invalid_json`), no body (`missing_body`), a field of the wrong type or "
    "out of range (`invalid_request`, with `issues` or `field`), or a value Postgres cannot store "
    "(`unsupported_value`: a NUL character, a number beyond a double).",
    401: "No valid API key (`unauthorized`).",
    403: "The key's scope does not allow this (`forbidden`).",
    404: "The run, gate or schedule does not exist (`not_found`).",
    409: "Conflict with the resource's state: `run_cancelled`, `run_leased`, `lease_lost`, `run_completed`, "
    "`gate_already_resolved`, `invalid_token`, `budget_parked` (a budget of the run is reached: with `gate` and "
    "`budget`), `budget_exceeded` (the run was stopped at its budget).",
    413: "The body is larger than `TIDEBASE_MAX_BODY_BYTES` (`payload_too_large`).",
    422: "The run has no recovery webhook (`no_recovery_webhook`).",
    503: "Busy: a lock wait, statement or pooled connection timed out (`lock_timeout`, `statement_timeout`, "
    "`pool_timeout`), the database is restarting or unreachable (`database_unavailable`), or too many large "
    "bodies are in progress (`busy`); retry after `Retry-After` seconds. "
    "`GET /ready`: not ready (`not_ready`, with `checks` naming the failing parts).",
}

NOT_FOUND = {
    "get_run",
    "begin_run",
    "heartbeat_run",
    "complete_run",
    "fail_run",
    "cancel_run",
    "recover_run",
    "create_child_run",
    "begin_step",
    "complete_step",
    "fail_step",
    "begin_gate",
    "get_gate",
    "resolve_gate",
    "set_state",
    "patch_state",
    "save_state",
    "create_snapshot",
    "record_usage",
    "delete_schedule",
    "check_budget",
}
CONFLICT = {"begin_run", "heartbeat_run", "cancel_run", "begin_step", "complete_step", "fail_step", "begin_gate"}
CONFLICT |= {"resolve_gate", "check_budget"}
EXTRA: dict[str, set[int]] = {"recover_run": {422}, "ready": {503}}

OPTIONAL_BODIES: dict[str, type[BaseModel]] = {"cancel_run": RunCancelIn, "recover_run": RunRecoverIn}
"""Bodies the view reads itself (``common.optional_body``): no body means ``{}``."""

QUERY_MINIMUM = {("get_gate", "waitMs"): 0}

TOKEN_AUTH = {"resolve_gate"}
"""Operations a request with no ``Authorization`` header may call (the resolve token is the
capability, docs/decisions.md §18.6)."""

NO_NUL = "^[^\\x00]*$"
"""Postgres stores no NUL character (``jsonsafe``): every string the API takes says so."""

JSON_VALUE: Schema = {
    "description": "Any JSON value Postgres can store: no NUL character in strings or keys, numbers within a double.",
    "anyOf": [
        {"type": "null"},
        {"type": "boolean"},
        {"type": "number"},
        {"type": "string", "pattern": NO_NUL},
        {"type": "array", "items": ref("JsonValue")},
        {"type": "object", "propertyNames": {"pattern": NO_NUL}, "additionalProperties": ref("JsonValue")},
    ],
}
_ANNOTATIONS = {"title", "description", "default", "examples"}


def _min_scope(operation_id: str) -> str | None:
    from tidebase_core.api import scopes

    return scopes.ROUTE_SCOPES.get(operation_id, "admin")


def error_statuses(operation_id: str, method: str, operation: Schema) -> list[int]:
    """Every non-200 status this operation can answer."""
    scope = _min_scope(operation_id)
    statuses: set[int] = set()
    if scope is not None:
        statuses |= {401, 503}
        if scope != "agent":
            statuses.add(403)
    if operation.get("parameters") or "requestBody" in operation or operation_id in OPTIONAL_BODIES:
        statuses.add(400)
    if method in ("post", "put", "patch"):
        statuses.add(413)
    if operation_id in NOT_FOUND:
        statuses.add(404)
    if operation_id in CONFLICT:
        statuses.add(409)
    statuses |= EXTRA.get(operation_id, set())
    return sorted(statuses)


def _json(schema: Schema, description: str) -> Schema:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _drop_null_defaults(node: Any) -> None:
    """``"default": null`` on a field that refuses null (``schemas.Opt``) would invite clients
    (and schemathesis) to send the null the server answers with 400: absent is the default."""
    if isinstance(node, dict):
        if node.get("default", 0) is None and "anyOf" not in node and node.get("type") != "null":
            del node["default"]
        for value in node.values():
            _drop_null_defaults(value)
    elif isinstance(node, list):
        for value in node:
            _drop_null_defaults(value)


def _storable(node: Any) -> None:
    """Make a request schema say what ``jsonsafe`` enforces: strings without NUL, any-JSON
    fields and unknown keys (ignored, but parsed) holding storable JSON."""
    if isinstance(node, list):
        for item in node:
            _storable(item)
        return
    if not isinstance(node, dict):
        return
    kind = node.get("type")
    if kind == "string" and not {"pattern", "format", "enum", "const"} & node.keys():
        node["pattern"] = NO_NUL
    if kind == "object" or "properties" in node:
        node.setdefault("propertyNames", {"pattern": NO_NUL})
        if node.get("additionalProperties", True) is True:
            node["additionalProperties"] = ref("JsonValue")
    for key, value in node.get("properties", {}).items():
        if isinstance(value, dict) and not value.keys() - _ANNOTATIONS:  # any JSON
            node["properties"][key] = {**value, **ref("JsonValue")}
    for key, value in node.items():
        if key not in ("properties", "propertyNames"):
            _storable(value)
    for value in node.get("properties", {}).values():
        _storable(value)


def document(schema: dict[str, Any]) -> dict[str, Any]:
    """Complete ninja's document in place (see the module docstring) and return it."""
    components = schema.setdefault("components", {})
    schemas = components.setdefault("schemas", {})
    schemas.update(OBJECTS)
    for model in OPTIONAL_BODIES.values():
        schemas[model.__name__] = model.model_json_schema(ref_template=REF + "{model}")
    _drop_null_defaults(schemas)
    for name, component in schemas.items():
        if name not in OBJECTS:  # request bodies (ninja's); OBJECTS describe answers
            _storable(component)
    schemas["JsonValue"] = JSON_VALUE
    components["securitySchemes"] = {
        "bearer": {
            "type": "http",
            "scheme": "bearer",
            "description": "An API key (`TIDEBASE_API_KEY` or one made with `tidebase_key`). With no key "
            "configured the API is open. The SSE stream also takes `?token=<key>`.",
        }
    }
    schema["security"] = [{"bearer": []}]
    for path_item in schema.get("paths", {}).values():
        for method, operation in path_item.items():
            operation_id = operation.get("operationId", "")
            if _min_scope(operation_id) is None:
                operation["security"] = []
            elif operation_id in TOKEN_AUTH:
                operation["security"] = [{"bearer": []}, {}]
            if operation_id in OPTIONAL_BODIES:
                operation["requestBody"] = {
                    "required": False,
                    "description": "Optional: no body reads as `{}`.",
                    "content": {"application/json": {"schema": ref(OPTIONAL_BODIES[operation_id].__name__)}},
                }
            for parameter in operation.get("parameters", []):
                minimum = QUERY_MINIMUM.get((operation_id, parameter.get("name")))
                if minimum is not None:
                    parameter["schema"]["minimum"] = minimum
                _storable(parameter["schema"])
            responses = operation.setdefault("responses", {})
            responses[200] = _json(OK.get(operation_id, OBJECT), "OK")
            for status in error_statuses(operation_id, method, operation):
                responses[status] = _json(ref("Error"), ERRORS[status])
    return schema


class DocumentedAPI(NinjaAPI):
    """A NinjaAPI whose OpenAPI document is completed by ``document``."""

    def get_openapi_schema(
        self, *, path_prefix: str | None = None, path_params: dict[str, Any] | None = None
    ) -> OpenAPISchema:
        schema = super().get_openapi_schema(path_prefix=path_prefix, path_params=path_params)
        document(schema)
        return schema
