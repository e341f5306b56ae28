"""The OpenAPI 3.1 description of every endpoint, precise enough to generate requests from
(what access and the actor catalogue decide: openapi_access.complete)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from services.api import openapi_access, openapi_trees, pauses, workers
from services.api.dashboard import asset_names
from services.api.inputs import NAME_MAX, NAME_PATTERN, QUEUE_MAX, QUEUE_PATTERN, REASON_MAX
from services.api.serialize import CURSOR_PATTERN
from services.api.tasks import CHUNK_MAX, LIST_DEFAULT, LIST_MAX, MAX_COUNTDOWN
from shared.states import Event, TaskStatus

Schema = dict[str, Any]

_ERRORS = {
    400: "Malformed request: not JSON, not an object, wrong field types, unknown fields, "
         "bad id or query parameter",
    401: "Missing or malformed bearer token",
    403: "Unknown or revoked token or ticket (`forbidden`), or a role below the call's "
         "(`insufficient_role`)",
    404: "No such task",
    409: "The task's state, or its parent's in a job tree, does not allow this",
    413: "Request body larger than the configured limit",
    429: "Too many calls or event streams for this token or server; see Retry-After",
    422: "Schema-valid request the actor catalogue or the job tree refuses: unknown actor, "
         "invalid kwargs (`details` names each problem), or one of the tree's codes",
    503: "PostgreSQL, Redis or the broker is unavailable; retry later",
}
_NO_NUL = "^[^\\u0000]*$"


def _ref(name: str) -> Schema:
    return {"$ref": f"#/components/schemas/{name}"}


def _nullable(schema: Schema) -> Schema:
    """`schema` or null (3.1 has JSON Schema's types; `nullable` was 3.0's)."""
    if isinstance(schema.get("type"), str) and "enum" not in schema:
        return {**schema, "type": [schema["type"], "null"]}
    return {"anyOf": [schema, {"type": "null"}]}


def _json(schema: Schema, description: str) -> Schema:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _obj(properties: dict[str, Schema], required: list[str] | None = None) -> Schema:
    """A closed object: the API refuses fields it does not know."""
    schema: Schema = {"type": "object", "properties": properties, "additionalProperties": False}
    if required:
        schema["required"] = required
    return schema


def _op(summary: str, responses: dict[int, Schema], *, errors: tuple[int, ...] = (503,),
        body: Schema | None = None, body_required: bool = True, params: list[Schema] | None = None,
        secured: bool = False) -> Schema:
    op: Schema = {"summary": summary, "operationId": _op_id(summary),
                  "responses": {str(k): v for k, v in responses.items()}}
    for status in errors:
        op["responses"][str(status)] = {"$ref": f"#/components/responses/E{status}"}
    if params:
        op["parameters"] = params
    if body is not None:
        op["requestBody"] = {"required": body_required,
                             "content": {"application/json": {"schema": body}}}
    if secured:
        op["security"] = [{"bearer": []}]
    return op


def _op_id(summary: str) -> str:
    words = summary.lower().replace("-", " ").split()
    return words[0] + "".join(w.capitalize() for w in words[1:])


_TIME = {"type": "string", "format": "date-time"}
_NAME = {"type": "string", "minLength": 1, "maxLength": NAME_MAX, "pattern": NAME_PATTERN}
_QUEUE = {"type": "string", "minLength": 1, "maxLength": QUEUE_MAX, "pattern": QUEUE_PATTERN}
_REASON = {"type": "string", "maxLength": REASON_MAX, "pattern": _NO_NUL}
_STATE = {"type": "string", "enum": [s.value for s in TaskStatus]}
_ID_PARAM = {"name": "id", "in": "path", "required": True,
             "schema": {"type": "string", "format": "uuid"}}
_START_PARAM = {"name": "start", "in": "query", "description": "First chunk of the page",
                "schema": {"type": "integer", "minimum": 0, "maximum": CHUNK_MAX}}


def _schemas(batch_max_tasks: int | None) -> dict[str, Schema]:
    integer, number, string = {"type": "integer"}, {"type": "number"}, {"type": "string"}
    return {
        "Error": _obj({"error": _obj({
            "code": string, "message": string,
            "details": {"type": "object", "additionalProperties": True},
        }, ["code", "message"])}, ["error"]),
        "Progress": _obj({
            "done": integer, "failed": integer, "total": _nullable(integer),
            "percent": _nullable(number), "current_chunk": _nullable(integer),
            "eta_seconds": _nullable(number),
        }, ["done", "failed", "total", "percent", "current_chunk", "eta_seconds"]),
        "Task": _obj({
            "id": {"type": "string", "format": "uuid"}, "actor": string, "queue": string,
            "kwargs": {"type": "object", "additionalProperties": True},
            "status": _STATE,
            "attempt": integer, "progress": _ref("Progress"), "eta": _nullable(_TIME),
            "heartbeat_at": _nullable(_TIME), "created_at": _TIME,
            "started_at": _nullable(_TIME), "finished_at": _nullable(_TIME),
            "worker": _nullable(string), "outcome": _nullable(string),
            "error": _nullable(string), "resumes": integer,
            # Inline: OpenAPI 3.0 ignores `nullable` beside a $ref.
            "cancel": _nullable(_obj({
                "requested_at": _TIME, "reason": _nullable(string), "by": _nullable(string),
                "forced": {"type": "boolean"}, "deadline": _nullable(_TIME),
            }, ["requested_at", "reason", "by", "forced", "deadline"])),
            **pauses.task_fields(),
            **openapi_trees.task_fields(),
            "resources": _obj({"rss_bytes": _nullable(integer),
                               "cpu_percent": _nullable(number)}),
        }, ["id", "actor", "queue", "kwargs", "status", "attempt", "progress", "heartbeat_at",
            "created_at", "started_at", "finished_at", "worker", "outcome", "error", "cancel",
            "tree"]),
        "TaskPage": _obj({"items": {"type": "array", "items": _ref("TaskSummary")},
                          "next": _nullable(string)}, ["items", "next"]),
        "Results": _obj({"task_id": {"type": "string", "format": "uuid"}, "items": {
            "type": "array", "items": _obj({
                "chunk": integer, "attempt": integer, "ok": {"type": "boolean"},
                "result": {}, "created_at": _TIME,
            }, ["chunk", "attempt", "ok", "result", "created_at"])},
            "next": _nullable(integer)}, ["task_id", "items", "next"]),
        "CancelAllResult": _obj({
            "cancelled": integer, "cancelling": integer, "hastened": integer,
            "orphans": integer, "took_ms": number, "audit_id": _nullable(integer),
            "fence_id": _nullable(integer),
        }, ["cancelled", "cancelling", "hastened", "orphans", "took_ms"]),
        "Actor": _obj({
            "name": string, "queue": string,
            "params": {"type": "object", "additionalProperties": True},
            "options": {"type": "object", "additionalProperties": True},
            "updated_at": _TIME,
        }, ["name", "queue", "params", "options"]),
        "SubmitRequest": {**_obj({
            "actor": _NAME,
            "kwargs": {"type": "object", "additionalProperties": True,
                       "description": "Checked against the actor's parameters (422 if not)"},
            "queue": {**_QUEUE, "description": "Defaults to the actor's queue"},
            "countdown": {"type": "number", "minimum": 0, "maximum": MAX_COUNTDOWN,
                          "description": "Seconds to wait before running; excludes `eta`"},
            "eta": {**_TIME, "description": "When to run, with a UTC offset; excludes `countdown`"},
            **openapi_trees.submit_fields(),
        }, ["actor"]), "not": {"required": ["countdown", "eta"]}},
        **openapi_trees.schemas(batch_max_tasks),
        "CancelRequest": _obj({
            "reason": _REASON,
            "force": {"type": "boolean", "description": "Skip the grace period: kill now"},
        }),
        "CancelAllRequest": _obj({
            "reason": _REASON, "force": {"type": "boolean"},
            "actor": {**_NAME, "description": "Only tasks of this actor"},
            "queue": {**_QUEUE, "description": "Only tasks on this queue"},
        }),
        "Empty": _obj({}),
        **pauses.schemas(),
        "States": _states_schema(),
    }


def _states_schema() -> Schema:
    def states(description: str) -> Schema:
        return {"type": "array", "items": _STATE, "description": description}

    return _obj({
        "states": states("Every state"),
        "initial": {**_STATE, "description": "Where a submitted task starts"},
        "active": states("Not finished yet"),
        "terminal": states("Finished: only a resume leaves them"),
        "resumable": states("A resume queues them again, from the checkpoint"),
        "cancellable": states("A cancel acts on them"),
        "cancel_pending": states("A cancel is under way; only a forced one adds anything"),
        "executing": states("A live execution holds the task and sends heartbeats"),
        **{key: states(text) for key, text in pauses.STATE_SETS.items()},
        "attention": states("Every state, what needs attention first"),
        "transitions": {"type": "array", "items": _obj({
            "from": _STATE, "to": _STATE,
            "events": {"type": "array", "items": {"type": "string",
                                                  "enum": [e.value for e in Event]}},
        }, ["from", "to", "events"])},
    }, ["states", "initial", "active", "terminal", "resumable", "cancellable", "cancel_pending",
        "executing", *pauses.STATE_SETS, "attention", "transitions"])


def _asset_name() -> Schema:
    names = asset_names()
    return {"type": "string", "enum": list(names)} if names else {"type": "string"}


def document(actors: Sequence[Any] = (), *, public_reads: bool = False,
             batch_max_tasks: int | None = None) -> Schema:
    task, page = _ref("Task"), _ref("TaskPage")
    anything = {"type": "object", "additionalProperties": True}
    return openapi_access.complete({
        "openapi": "3.1.0",
        "info": {
            "title": "Taskreaper API", "version": "1.0.0",
            "description": "Submit, inspect and cancel long-running Celery tasks. Errors are "
                           "`{\"error\": {\"code\", \"message\"}}`; 400 means the request breaks "
                           "this schema, 422 that the actor catalogue or the job tree "
                           "refuses it.",
        },
        "paths": {
            "/api/v1/tasks": {
                "post": _op("Submit task", {202: _json(task, "Queued")},
                            errors=(400, 401, 403, 409, 413, 422, 503),
                            body=_ref("SubmitRequest"), secured=True),
                "get": _op("List tasks", {200: _json(page, "Newest first")}, errors=(400, 503),
                           params=[
                    {"name": "status", "in": "query", "schema": _STATE},
                    {"name": "actor", "in": "query", "schema": _NAME},
                    openapi_trees.ROOTS_PARAM,
                    {"name": "limit", "in": "query", "schema": {
                        "type": "integer", "minimum": 1, "maximum": LIST_MAX,
                        "default": LIST_DEFAULT}},
                    {"name": "cursor", "in": "query", "schema": {
                        "type": "string", "pattern": CURSOR_PATTERN},
                     "description": "`next` of the previous page"},
                ]),
            },
            "/api/v1/tasks/cancel-all": {
                "post": _op("Cancel all tasks", {202: _json(_ref("CancelAllResult"), "Done")},
                            errors=(400, 401, 403, 413, 503), body=_ref("CancelAllRequest"),
                            body_required=False, secured=True),
            },
            **pauses.paths(),
            **openapi_trees.paths(),
            "/api/v1/tasks/{id}": {"get": _op("Get task", {200: _json(task, "The task")},
                                              errors=(400, 404, 503), params=[_ID_PARAM])},
            "/api/v1/tasks/{id}/results": {
                "get": _op("Get task results", {200: _json(_ref("Results"), "Saved chunks")},
                           errors=(400, 404, 503), params=[_ID_PARAM, _START_PARAM]),
            },
            "/api/v1/tasks/{id}/cancel": {
                "post": _op("Cancel task", {
                    202: _json(task, "This call cancelled the task (or forced its cancel)"),
                    200: _json(task, "Already cancelling or cancelled: nothing changed"),
                }, errors=(400, 401, 403, 404, 409, 413, 503), params=[_ID_PARAM],
                    body=_ref("CancelRequest"), body_required=False, secured=True),
            },
            "/api/v1/tasks/{id}/resume": {
                "post": _op("Resume task", {202: _json(task, "Queued again from its checkpoint")},
                            errors=(400, 401, 403, 404, 409, 413, 503), params=[_ID_PARAM],
                            body=_ref("Empty"), body_required=False, secured=True),
            },
            "/api/v1/actors": {
                "get": _op("List actors", {200: _json(_obj(
                    {"items": {"type": "array", "items": _ref("Actor")}}, ["items"]),
                    "The actor catalogue")}),
            },
            "/api/v1/states": {
                "get": _op("Task states", {200: _json(_ref("States"), "The states, the moves "
                                                      "between them and their named sets")},
                           errors=()),
            },
            **workers.OPENAPI_PATHS,
            "/api/v1/system/status": {
                "get": _op("System status", {200: _json(anything, "Counts by state, queues, "
                                                        "live executions, reaper")}),
            },
            "/healthz": {"get": _op("Liveness", {200: _json(anything, "Process up")}, errors=())},
            "/readyz": {"get": _op("Readiness", {200: _json(anything, "Database and Redis "
                                                            "answer")})},
            "/metrics": {"get": _op("Metrics", {200: {
                "description": "Prometheus text format",
                "content": {"text/plain": {"schema": {"type": "string"}}}}}, errors=())},
            "/api/v1/openapi.json": {"get": _op("OpenAPI document", {200: _json(
                anything, "This document")}, errors=())},
            "/": {"get": _op("Dashboard", {
                200: {"description": "The operator dashboard, an HTML page",
                      "content": {"text/html": {"schema": {"type": "string"}}}},
                304: {"description": "Unchanged since the ETag in If-None-Match"},
                404: _json(_ref("Error"), "The dashboard is not installed"),
            }, errors=())},
            "/static/{name}": {"get": _op("Dashboard asset", {
                200: {"description": "A stylesheet, script module or icon of the dashboard",
                      "content": {t: {"schema": {"type": "string"}} for t in (
                          "text/css", "text/javascript", "image/svg+xml")}},
                304: {"description": "Unchanged since the ETag in If-None-Match"},
                404: _json(_ref("Error"), "No such file"),
            }, errors=(), params=[{"name": "name", "in": "path", "required": True,
                                   "schema": _asset_name()}])},
        },
        "components": {
            "schemas": _schemas(batch_max_tasks),
            "responses": {f"E{status}": _json(_ref("Error"), text)
                          for status, text in _ERRORS.items()},
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
    }, actors, public_reads=public_reads)
