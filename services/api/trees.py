"""Job trees over HTTP: a child submitted under a parent, many submissions in one call, and a
tree's view (the node, its ancestors, its subtree's totals, a page of its children)."""

from __future__ import annotations

import time
import uuid
from datetime import UTC, datetime

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
    Body,
    json_object,
    query_int,
    task_id,
)
from services.api.paging import fit, page_response
from services.api.serialize import decode_cursor, encode_cursor, task_summary
from services.api.state import CELERY, DB, METRICS, SETTINGS
from shared.batch import Item, submit_batch
from shared.db import Record
from shared.errors import TaskNotFound
from shared.submit import start_time
from shared.tree_view import aggregate_json
from shared.trees import ChildSpec, add_children, prepare

log = structlog.get_logger("api.trees")

# Far enough for any schedule (as a single submit's countdown).
MAX_COUNTDOWN = 366 * 24 * 3600.0
REF_MAX = 200
CHILDREN_DEFAULT = 100
CHILDREN_MAX = 1000
_ITEM_FIELDS = {"actor", "kwargs", "queue", "countdown", "eta", "parent_id", "fail_fast", "ref",
                "parent_ref"}


def parse_item(body: Body, *, batch: bool) -> tuple[Item, str]:
    """One submission's fields (the body's problems collect what is wrong)."""
    actor = body.string("actor", max_length=NAME_MAX, pattern=NAME_RE, required=True)
    kwargs = body.object("kwargs")
    queue = body.string("queue", max_length=QUEUE_MAX, pattern=QUEUE_RE)
    countdown = body.number("countdown", minimum=0, maximum=MAX_COUNTDOWN)
    eta = body.timestamp("eta")
    if "countdown" in body.data and "eta" in body.data:
        body.problem("eta", "countdown and eta are mutually exclusive")
    parent = body.string("parent_id", max_length=36)
    parent_id = None
    if parent is not None:
        try:
            parent_id = uuid.UUID(parent)
        except ValueError:
            body.problem("parent_id", "must be a task id (a UUID)")
    fail_fast = body.boolean("fail_fast")
    ref = body.string("ref", max_length=REF_MAX) if batch else None
    parent_ref = body.string("parent_ref", max_length=REF_MAX) if batch else None
    if parent_id is not None and parent_ref is not None:
        body.problem("parent_ref", "parent_id and parent_ref are mutually exclusive")
    spec = ChildSpec(actor or "", kwargs or {}, queue=queue, eta=start_time(countdown, eta),
                     fail_fast=fail_fast)
    return Item(spec, parent_id=parent_id, ref=ref, parent_ref=parent_ref), actor or ""


async def submit_child(request: web.Request, item: Item, by: str) -> Record:
    """POST /api/v1/tasks with a `parent_id`: the task joins that parent's tree."""
    app = request.app
    assert item.parent_id is not None
    added = await add_children(app[DB], app[CELERY], app[SETTINGS], item.parent_id,
                               await prepare(app[DB], [item.spec]))
    row = added.made[0]
    log.info("task.submitted", task_id=str(row["id"]), actor=row["actor"], queue=row["queue"],
             by=by, parent_id=str(item.parent_id))
    return await app[DB].get_task(row["id"])


async def submit_many(request: web.Request) -> web.Response:
    """POST /api/v1/tasks:batch: `{"tasks": [...], "parent_id"?}`, each task as for
    POST /api/v1/tasks plus `ref` / `parent_ref` to nest new tasks under each other. All
    are made, in one transaction, or none."""
    by = authenticate(request)
    app = request.app
    top = Body(await json_object(request), {"tasks", "parent_id"})
    raw = top.data.get("tasks")
    limit = app[SETTINGS].batch_max_tasks
    if not isinstance(raw, list) or not raw:
        top.problem("tasks", "must be a non-empty list of tasks")
    elif len(raw) > limit:
        top.problem("tasks", f"at most {limit} tasks in one batch (BATCH_MAX_TASKS)")
    default_parent = top.string("parent_id", max_length=36)
    if default_parent is not None:
        try:
            uuid.UUID(default_parent)
        except ValueError:
            top.problem("parent_id", "must be a task id (a UUID)")
    top.done()
    assert isinstance(raw, list)
    items: list[Item] = []
    problems: dict[str, str] = {}
    for i, entry in enumerate(raw):
        if not isinstance(entry, dict):
            problems[f"tasks[{i}]"] = "must be an object"
            continue
        if default_parent is not None and "parent_id" not in entry and "parent_ref" not in entry:
            entry = {**entry, "parent_id": default_parent}
        body = Body(entry, _ITEM_FIELDS)
        item, _ = parse_item(body, batch=True)
        problems.update({f"tasks[{i}].{k}": v for k, v in body.problems.items()})
        items.append(item)
    if problems:
        raise ApiError(400, "invalid_body", "; ".join(f"{k}: {v}" for k, v in
                                                      list(problems.items())[:20]),
                       details=problems)
    started = time.perf_counter()
    made = await submit_batch(app[DB], app[CELERY], app[SETTINGS], items)
    took = (time.perf_counter() - started) * 1000
    for row in made:
        app[METRICS].submitted.labels(row["actor"]).inc()
    log.info("tasks.submitted", count=len(made), by=by, took_ms=round(took, 1))
    await publish_event(app, "tasks.submitted", count=len(made), by=by)
    return web.json_response({
        "count": len(made), "took_ms": round(took, 1),
        "tasks": [{"id": str(r["id"]), "actor": r["actor"], "queue": r["queue"],
                   "status": "queued", "ref": item.ref,
                   "parent_id": str(r["parent_id"]) if r.get("parent_id") else None}
                  for r, item in zip(made, items, strict=True)]}, status=202)


async def get_tree(request: web.Request) -> web.Response:
    """GET /api/v1/tasks/{id}/tree?limit=&cursor=: the node, its ancestors (nearest first),
    its subtree's totals and one page of its children (oldest first; `next` goes on)."""
    tid = task_id(request)
    db = request.app[DB]
    node = await db.get_task(tid)
    if node is None:
        raise TaskNotFound(tid)
    limit = query_int(request, "limit", default=CHILDREN_DEFAULT, minimum=1,
                      maximum=CHILDREN_MAX)
    cursor = request.query.get("cursor")
    after = decode_cursor(cursor) if cursor is not None else None
    rows = await db.children_page(tid, after, limit + 1)
    items, cut = fit(rows[:limit], task_summary, request.app[SETTINGS].max_response_bytes)
    following = encode_cursor(rows[len(items) - 1]) if cut or len(rows) > limit else None
    ancestors = [{"id": str(a["id"]), "actor": a["actor"], "status": a["status"]}
                 for a in await db.ancestors(tid)]
    totals = aggregate_json(await db.tree_aggregate(tid), datetime.now(UTC))
    return page_response({"task": task_summary(node), "ancestors": ancestors,
                          "aggregate": totals, "next": following}, items)


def add_routes(router: web.UrlDispatcher) -> None:
    router.add_post("/api/v1/tasks:batch", submit_many)
    router.add_get("/api/v1/tasks/{id}/tree", get_tree)
