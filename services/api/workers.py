"""The worker endpoints: drain one worker (before maintenance of its host).

A drain is a request to the worker itself (shared/drain.py): the answer says it was
delivered, not that the worker is gone. Its tasks go back to `queued` one by one as they
stop (each a `task.preempted` event), and the worker leaves the status board when it exits,
within its DRAIN_GRACE.
"""

from __future__ import annotations

import re
from typing import Any

import structlog
from aiohttp import web

from services.api.auth import authenticate
from services.api.errors import ApiError
from services.api.inputs import Body, json_object
from services.api.state import KEYS, REDIS
from shared.drain import WorkerNotFound, request_drain

log = structlog.get_logger("api.workers")

# A Celery node name: `name@host`, as `celery worker -n` accepts it.
NODE_PATTERN = r"^[A-Za-z0-9_.%+:-]+(@[A-Za-z0-9_.%+:-]+)?$"
NODE_MAX = 255
NODE_RE = re.compile(NODE_PATTERN)


def node_name(request: web.Request) -> str:
    node = request.match_info["node"]
    if len(node) > NODE_MAX or not NODE_RE.match(node):
        raise ApiError(400, "invalid_node", f"not a worker node name: {node[:80]!r}")
    return node


async def drain_worker(request: web.Request) -> web.Response:
    by = authenticate(request)
    node = node_name(request)
    Body(await json_object(request, optional=True), set()).done()
    try:
        receivers = await request_drain(request.app[REDIS], request.app[KEYS], node, by=by)
    except WorkerNotFound as exc:
        raise ApiError(404, "not_found", str(exc)) from None
    log.info("worker.drain_requested", node=node, by=by)
    return web.json_response({"node": node, "draining": True, "receivers": receivers},
                             status=202)


def _error(status: int, text: str | None = None) -> dict[str, Any]:
    if text is None:
        return {"$ref": f"#/components/responses/E{status}"}
    return {"description": text,
            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}


# This endpoint's entry in the OpenAPI document (services/api/openapi.py).
OPENAPI_PATHS: dict[str, Any] = {"/api/v1/workers/{node}/drain": {"post": {
    "summary": "Drain worker", "operationId": "drainWorker",
    "description": "The worker takes no new message, hands each running task back to the "
                   "queue from its checkpoint and exits, within its DRAIN_GRACE.",
    "parameters": [{"name": "node", "in": "path", "required": True, "schema": {
        "type": "string", "minLength": 1, "maxLength": NODE_MAX, "pattern": NODE_PATTERN}}],
    "requestBody": {"required": False, "content": {"application/json": {
        "schema": {"$ref": "#/components/schemas/Empty"}}}},
    "responses": {
        "202": {"description": "The worker got the request and drains", "content": {
            "application/json": {"schema": {
                "type": "object", "additionalProperties": False,
                "required": ["node", "draining", "receivers"],
                "properties": {"node": {"type": "string"}, "draining": {"type": "boolean"},
                               "receivers": {"type": "integer", "description":
                                             "Its processes that got the request"}}}}}},
        **{str(s): _error(s) for s in (400, 401, 403, 413, 503)},
        "404": _error(404, "No running worker of that name"),
    },
    "security": [{"bearer": []}],
}}}
