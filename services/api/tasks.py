"""The task endpoints: submit, list, inspect, results, cancel, cancel-all and resume.

The operations raise the domain's errors (shared.errors) and publish their own change
events; the error middleware gives each refusal its status.
"""

from __future__ import annotations

import structlog
from aiohttp import web

from services.api.auth import authenticate
from services.api.errors import ApiError
from services.api.events import publish_event
from services.api.inputs import (
    NAME_MAX,
    NAME_RE,
    QUEUE_MAX,
    QUEUE_RE,
    REASON_MAX,
    Body,
    json_object,
    query_int,
    query_name,
    task_id,
)
from services.api.paging import fit, page_response
from services.api.serialize import (
    decode_cursor,
    encode_cursor,
    result_json,
    task_json,
    task_summary,
)
from services.api.state import CANCELLER, CELERY, DB, METRICS, SETTINGS
from services.api.trees import parse_item, submit_child
from shared.db import Record
from shared.errors import TaskNotFound
from shared.states import TaskStatus
from shared.submit import submit

log = structlog.get_logger("api.tasks")

LIST_DEFAULT = 50
LIST_MAX = 500
# Chunk results per page (fewer when they are large: MAX_RESPONSE_BYTES), and the largest
# chunk number a page may start at.
RESULTS_PAGE = 1000
CHUNK_MAX = 2**31 - 1
# Far enough for any schedule, near enough that the arithmetic cannot overflow.
MAX_COUNTDOWN = 366 * 24 * 3600.0
_STATUSES = [s.value for s in TaskStatus]


def _task_response(row: Record, status: int) -> web.Response:
    headers = {"Location": f"/api/v1/tasks/{row['id']}"} if status == 202 else None
    return web.json_response(task_json(row), status=status, headers=headers)


async def submit_task(request: web.Request) -> web.Response:
    by = authenticate(request)
    body = Body(await json_object(request), {"actor", "kwargs", "queue", "countdown", "eta",
                                              "parent_id", "fail_fast"})
    item, actor = parse_item(body, batch=False)
    body.done()
    if item.parent_id is not None:
        row = await submit_child(request, item, by)
    else:
        row = await submit(request.app[DB], request.app[CELERY], actor=actor,
                           kwargs=item.spec.kwargs, queue=item.spec.queue, eta=item.spec.eta,
                           fail_fast=item.spec.fail_fast)
        log.info("task.submitted", task_id=str(row["id"]), actor=actor, queue=row["queue"],
                 by=by, eta=row["eta"].isoformat() if row["eta"] else None)
    request.app[METRICS].submitted.labels(actor).inc()
    await publish_event(request.app, "task.submitted", task_id=str(row["id"]), actor=actor,
                        status=row["status"])
    return _task_response(row, 202)


async def list_tasks(request: web.Request) -> web.Response:
    status = request.query.get("status")
    if status is not None and status not in _STATUSES:
        raise ApiError(400, "invalid_query", f"status must be one of {', '.join(_STATUSES)}")
    actor = query_name(request, "actor")
    roots = request.query.get("roots", "false")
    if roots not in ("true", "false"):
        raise ApiError(400, "invalid_query", "roots must be true or false")
    limit = query_int(request, "limit", default=LIST_DEFAULT, minimum=1, maximum=LIST_MAX)
    cursor = request.query.get("cursor")
    after = decode_cursor(cursor) if cursor is not None else None
    # One row more than asked tells whether another page exists.
    rows = await request.app[DB].list_task_summaries(status=status, actor=actor, after=after,
                                                     limit=limit + 1, roots=roots == "true")
    items, cut = fit(rows[:limit], task_summary, request.app[SETTINGS].max_response_bytes)
    following = encode_cursor(rows[len(items) - 1]) if cut or len(rows) > limit else None
    return page_response({"next": following}, items)


async def get_task(request: web.Request) -> web.Response:
    tid = task_id(request)
    row = await request.app[DB].get_task(tid)
    if row is None:
        raise TaskNotFound(tid)
    return _task_response(row, 200)


async def task_results(request: web.Request) -> web.Response:
    tid = task_id(request)
    db = request.app[DB]
    if await db.get_task(tid) is None:
        raise TaskNotFound(tid)
    start = query_int(request, "start", default=0, minimum=0, maximum=CHUNK_MAX)
    rows = await db.results_page(tid, after=start - 1, limit=RESULTS_PAGE + 1)
    items, cut = fit(rows[:RESULTS_PAGE], result_json, request.app[SETTINGS].max_response_bytes)
    following = rows[len(items)]["chunk"] if cut or len(rows) > RESULTS_PAGE else None
    return page_response({"task_id": str(tid), "next": following}, items)


async def cancel_task(request: web.Request) -> web.Response:
    by = authenticate(request)
    tid = task_id(request)
    body = Body(await json_object(request, optional=True), {"reason", "force"})
    reason = body.string("reason", max_length=REASON_MAX)
    force = bool(body.boolean("force"))
    body.done()
    outcome = await request.app[CANCELLER].cancel(tid, by=by, reason=reason, force=force)
    if not outcome.changed:
        # Repeating a cancel is harmless: it reports where the first one got to.
        return _task_response(outcome.row, 200)
    metrics = request.app[METRICS]
    metrics.cancels.labels("one", str(force).lower()).inc()
    metrics.cancelled_tasks.labels(outcome.row["status"]).inc()
    return _task_response(outcome.row, 202)


async def cancel_all(request: web.Request) -> web.Response:
    by = authenticate(request)
    body = Body(await json_object(request, optional=True), {"reason", "force", "actor", "queue"})
    reason = body.string("reason", max_length=REASON_MAX)
    force = bool(body.boolean("force"))
    actor = body.string("actor", max_length=NAME_MAX, pattern=NAME_RE)
    queue = body.string("queue", max_length=QUEUE_MAX, pattern=QUEUE_RE)
    body.done()
    out = await request.app[CANCELLER].cancel_all(by=by, reason=reason, force=force, actor=actor,
                                                  queue=queue)
    metrics = request.app[METRICS]
    metrics.cancels.labels("all", str(force).lower()).inc()
    summary = {"cancelled": out.cancelled, "cancelling": len(out.cancelling),
               "hastened": len(out.hastened)}
    for effect, n in summary.items():
        metrics.cancelled_tasks.labels(effect).inc(n)
    return web.json_response({**summary, "orphans": out.orphans, "took_ms": round(out.took_ms, 1),
                              "audit_id": out.audit_id, "fence_id": out.fence_id}, status=202)


async def resume_task(request: web.Request) -> web.Response:
    by = authenticate(request)
    tid = task_id(request)
    Body(await json_object(request, optional=True), set()).done()
    row = await request.app[CANCELLER].resume(tid, by=by)
    request.app[METRICS].resumed.inc()
    log.info("task.resume_requested", task_id=str(tid), by=by)
    return _task_response(row, 202)
