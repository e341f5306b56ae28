"""The pause endpoints: pause one task, pause-all and resume-all (a paused task's own resume
is `POST /api/v1/tasks/{id}/resume`), and how the OpenAPI document describes them.

The operation (shared.pausing) owns its effects: the audit row, the stop event, the change
event. Bodies and answers are shaped like cancel's and cancel-all's.
"""

from __future__ import annotations

from typing import Any

import structlog
from aiohttp import web

from services.api.auth import authenticate
from services.api.inputs import (
    NAME_MAX,
    NAME_RE,
    QUEUE_MAX,
    QUEUE_RE,
    REASON_MAX,
    Body,
    json_object,
    task_id,
)
from services.api.serialize import task_json
from services.api.state import CELERY, DB, REDIS, SETTINGS
from shared.pausing import Pauser

log = structlog.get_logger("api.pauses")

PAUSER = web.AppKey("pauser", Pauser)


def add_pauser(app: web.Application) -> None:
    """Once the resources it uses are there (after the app's canceller)."""
    app[PAUSER] = Pauser(app[SETTINGS], app[DB], app[REDIS], app[CELERY])


def _scope(body: Body) -> tuple[str | None, str | None]:
    return (body.string("actor", max_length=NAME_MAX, pattern=NAME_RE),
            body.string("queue", max_length=QUEUE_MAX, pattern=QUEUE_RE))


async def pause_task(request: web.Request) -> web.Response:
    by = authenticate(request)
    tid = task_id(request)
    body = Body(await json_object(request, optional=True), {"reason"})
    reason = body.string("reason", max_length=REASON_MAX)
    body.done()
    out = await request.app[PAUSER].pause(tid, by=by, reason=reason)
    # Repeating a pause is harmless: it reports where the first one got to.
    status = 202 if out.changed else 200
    headers = {"Location": f"/api/v1/tasks/{tid}"} if out.changed else None
    return web.json_response(task_json(out.row), status=status, headers=headers)


async def pause_all(request: web.Request) -> web.Response:
    by = authenticate(request)
    body = Body(await json_object(request, optional=True), {"reason", "actor", "queue"})
    reason = body.string("reason", max_length=REASON_MAX)
    actor, queue = _scope(body)
    body.done()
    out = await request.app[PAUSER].pause_all(by=by, reason=reason, actor=actor, queue=queue)
    return web.json_response({"paused": out.paused, "pausing": len(out.pausing),
                              "took_ms": round(out.took_ms, 1), "audit_id": out.audit_id},
                             status=202)


async def resume_all(request: web.Request) -> web.Response:
    by = authenticate(request)
    body = Body(await json_object(request, optional=True), {"actor", "queue"})
    actor, queue = _scope(body)
    body.done()
    out = await request.app[PAUSER].resume_all(by=by, actor=actor, queue=queue)
    return web.json_response({"resumed": out.resumed, "resuming": out.resuming,
                              "took_ms": round(out.took_ms, 1), "audit_id": out.audit_id},
                             status=202)


def add_routes(router: web.UrlDispatcher) -> None:
    # The literal paths before any `{id}` route, so they are never read as a task id.
    router.add_post("/api/v1/tasks/pause-all", pause_all)
    router.add_post("/api/v1/tasks/resume-all", resume_all)
    router.add_post("/api/v1/tasks/{id}/pause", pause_task)


# -- the OpenAPI document's part ----------------------------------------------------------

# The named sets of GET /api/v1/states that pausing adds.
STATE_SETS = {
    "held": "Neither finished nor active: only an operator's resume or cancel moves them on",
    "pausable": "A pause acts on them",
    "pause_pending": "A pause is under way: the task saves its work and stops",
}


def task_fields() -> dict[str, Any]:
    from services.api.openapi import _TIME, _nullable, _obj

    string = {"type": "string"}
    return {"pause": _nullable(_obj({
        "requested_at": _TIME, "reason": _nullable(string), "by": _nullable(string),
    }, ["requested_at", "reason", "by"]))}


def schemas() -> dict[str, Any]:
    from services.api.openapi import _NAME, _QUEUE, _REASON, _nullable, _obj

    integer, number = {"type": "integer"}, {"type": "number"}
    scope = {"actor": {**_NAME, "description": "Only tasks of this actor"},
             "queue": {**_QUEUE, "description": "Only tasks on this queue"}}
    return {
        "PauseRequest": _obj({"reason": _REASON}),
        "PauseAllRequest": _obj({"reason": _REASON, **scope}),
        "ResumeAllRequest": _obj(scope),
        "PauseAllResult": _obj({
            "paused": {**integer, "description": "Queued tasks paused at once"},
            "pausing": {**integer, "description": "Running tasks asked to save and stop"},
            "took_ms": number, "audit_id": _nullable(integer),
        }, ["paused", "pausing", "took_ms"]),
        "ResumeAllResult": _obj({
            "resumed": {**integer, "description": "Paused tasks queued again"},
            "resuming": {**integer, "description":
                         "Tasks still stopping for a pause: each is queued again once stopped"},
            "took_ms": number, "audit_id": _nullable(integer),
        }, ["resumed", "took_ms"]),
    }


def paths() -> dict[str, Any]:
    from services.api.openapi import _ID_PARAM, _json, _op, _ref

    task = _ref("Task")
    errors = (400, 401, 403, 413, 503)
    return {
        "/api/v1/tasks/pause-all": {
            "post": _op("Pause all tasks", {202: _json(_ref("PauseAllResult"), "Done")},
                        errors=errors, body=_ref("PauseAllRequest"), body_required=False,
                        secured=True),
        },
        "/api/v1/tasks/resume-all": {
            "post": _op("Resume all tasks", {202: _json(_ref("ResumeAllResult"), "Done")},
                        errors=errors, body=_ref("ResumeAllRequest"), body_required=False,
                        secured=True),
        },
        "/api/v1/tasks/{id}/pause": {
            "post": _op("Pause task", {
                202: _json(task, "Paused (it was queued) or pausing (it was running)"),
                200: _json(task, "Already pausing or paused: nothing changed"),
            }, errors=(400, 401, 403, 404, 409, 413, 503), params=[_ID_PARAM],
                body=_ref("PauseRequest"), body_required=False, secured=True),
        },
    }
