"""What the OpenAPI document says about access: which operations need a token, read from
the role table (services/api/auth.py) so that every route is described as it is guarded;
the token and stream-ticket endpoints; the event stream, each event a JSON object; 429s."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import structlog
from aiohttp import web

from services.api import openapi_trees
from services.api.auth import MUTATING, TICKET_ROUTES, Access, need_of, route_key
from services.api.errors import UNAVAILABLE
from services.api.openapi_catalogue import json_value, submit_request
from services.api.state import DB, SETTINGS
from services.api.tickets import TICKET_PATTERN, TICKET_TTL
from shared.db import Record
from shared.tokens import BOOTSTRAP_NAME, NAME_PATTERN, Role

log = structlog.get_logger("api.openapi")

Schema = dict[str, Any]

_ROLE = {"type": "string", "enum": [r.value for r in Role]}
_TOKEN_NAME = {"type": "string", "pattern": NAME_PATTERN}
_TIME = {"type": "string", "format": "date-time"}
# One event as the stream sends it: `event:` names the change, `data:` carries it as JSON.
_EVENT = {
    "type": "object", "required": ["data"],
    "properties": {
        "event": {"type": "string", "description": "The change, e.g. task.cancel_requested"},
        "data": {"type": "string", "contentMediaType": "application/json", "contentSchema": {
            "type": "object", "required": ["type", "at"], "additionalProperties": True,
            "properties": {"type": {"type": "string"}, "at": {"type": "number"},
                           "task_id": {"type": "string"}}}},
        "id": {"type": "string"}, "retry": {"type": "integer"},
    },
}


def _ref(name: str) -> Schema:
    return {"$ref": f"#/components/schemas/{name}"}


def _error(status: int) -> Schema:
    return {"$ref": f"#/components/responses/E{status}"}


def _json(schema: Schema, description: str) -> Schema:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _closed(properties: dict[str, Schema], required: list[str]) -> Schema:
    return {"type": "object", "properties": properties, "additionalProperties": False,
            "required": required}


def token_schemas() -> dict[str, Schema]:
    token: dict[str, Schema] = {"name": {"type": "string"}, "role": _ROLE, "created_at": _TIME,
             "created_by": {"type": "string"}}
    return {
        "Token": _closed(token, list(token)),
        "NewToken": _closed({**token, "secret": {
            "type": "string", "description": "Shown here once; only its hash is kept"}},
            [*token, "secret"]),
        "TokenRequest": _closed({
            "name": {**_TOKEN_NAME, "not": {"enum": [BOOTSTRAP_NAME]},
                     "description": f"Who the audit trail names; {BOOTSTRAP_NAME!r} is "
                                    "the API_TOKEN's"},
            "role": _ROLE}, ["name", "role"]),
        "RevokedToken": _closed({"name": {"type": "string"}, "role": _ROLE,
                                 "revoked_at": _TIME}, ["name", "role", "revoked_at"]),
        "StreamTicket": _closed({
            "ticket": {"type": "string", "pattern": TICKET_PATTERN},
            "expires_in": {"type": "integer", "description": "Seconds; good for one stream"},
        }, ["ticket", "expires_in"]),
    }


def _op(op_id: str, summary: str, responses: dict[int, Schema], errors: tuple[int, ...],
        **extra: Any) -> Schema:
    out = {"summary": summary, "operationId": op_id,
           "responses": {str(k): v for k, v in responses.items()}, **extra}
    out["responses"].update({str(s): _error(s) for s in errors})
    return out


def paths() -> dict[str, Schema]:
    name_param = {"name": "name", "in": "path", "required": True, "schema": _TOKEN_NAME}
    tokens = {"type": "object", "additionalProperties": False, "required": ["items"],
              "properties": {"items": {"type": "array", "items": _ref("Token")}}}
    body = {"required": True, "content": {"application/json": {"schema": _ref("TokenRequest")}}}
    return {
        "/api/v1/events": {"get": _op(
            "taskEvents", "Task events",
            {200: {"description": "Server-sent events, each a JSON object in `data`; comment "
                                  "lines keep the stream alive",
                   "content": {"text/event-stream": {"schema": _EVENT}}}},
            (503,))},
        "/api/v1/events/ticket": {"post": _op(
            "streamTicket", "Stream ticket",
            {201: _json(_ref("StreamTicket"), f"Opens one event stream within {TICKET_TTL} s")},
            (503,))},
        "/api/v1/tokens": {
            "get": _op("listTokens", "List tokens", {200: _json(tokens, "The live tokens")},
                       (503,)),
            "post": _op("createToken", "Create token",
                        {201: _json(_ref("NewToken"), "The token, with its secret")},
                        (400, 409, 413, 503), requestBody=body),
        },
        "/api/v1/tokens/{name}": {"delete": _op(
            "revokeToken", "Revoke token", {200: _json(_ref("RevokedToken"), "Revoked")},
            (400, 404, 503), parameters=[name_param])},
    }


def secure(document: Schema, *, public_reads: bool) -> None:
    """Marks each operation as the role table guards it: a token, and the 401 and 403 it may
    get; a mutation may also get 429 (the rate limit), and so may the event stream (caps)."""
    for path, operations in document["paths"].items():
        for method, op in operations.items():
            need = need_of(method.upper(), path)
            limited = method.upper() in MUTATING or path == "/api/v1/events"
            if limited:
                op["responses"].setdefault("429", _error(429))
            if need is Access.PUBLIC or (need is Access.READ and public_reads):
                op.pop("security", None)
                continue
            op["security"] = [{"bearer": []}]
            if route_key(method.upper(), path) in TICKET_ROUTES:
                op["security"].append({"ticket": []})
            for status in (401, 403):
                op["responses"].setdefault(str(status), _error(status))


def _summary(task: Schema) -> Schema:
    """A task as the list has it: the Task schema without kwargs."""
    properties = {k: v for k, v in task["properties"].items() if k != "kwargs"}
    return {**task, "properties": properties,
            "required": [k for k in task.get("required", []) if k != "kwargs"]}


def complete(document: Schema, actors: Sequence[Record], *, public_reads: bool) -> Schema:
    """The parts of the document that access and the catalogue decide: the submit request
    and a batch's entry per actor, the list's summaries, the token and stream endpoints, each
    operation's security. Returns the document, changed in place."""
    schemas = document["components"]["schemas"]
    schemas["BatchItem"] = submit_request(openapi_trees.batch_item(schemas["SubmitRequest"]),
                                          actors)
    schemas["SubmitRequest"] = submit_request(schemas["SubmitRequest"], actors)
    schemas["JsonValue"] = json_value()
    schemas["TaskSummary"] = _summary(schemas["Task"])
    schemas.update(token_schemas())
    document["components"]["securitySchemes"]["ticket"] = {
        "type": "apiKey", "in": "query", "name": "ticket",
        "description": "From POST /api/v1/events/ticket: opens one event stream, for clients "
                       "that cannot send an Authorization header (EventSource)"}
    document["paths"].update(paths())
    secure(document, public_reads=public_reads)
    return document


async def catalogue(request: web.Request) -> list[Record]:
    """The actors the document describes; none while the database is away, so the document
    is still served (with any actor name allowed)."""
    try:
        return await request.app[DB].list_actors()
    except UNAVAILABLE as exc:
        log.warning("api.openapi_without_catalogue", error=f"{type(exc).__name__}: {exc}")
        return []


async def openapi_json(request: web.Request) -> web.Response:
    from services.api.openapi import document  # it builds on this module

    actors = await catalogue(request)
    settings = request.app[SETTINGS]
    return web.json_response(document(actors, public_reads=settings.public_reads,
                                      batch_max_tasks=settings.batch_max_tasks))
