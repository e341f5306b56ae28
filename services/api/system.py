"""What the whole system looks like right now: the actor catalogue and the status board."""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

from aiohttp import web

from services.api.serialize import actor_json
from services.api.state import DB, KEYS, REDIS, SETTINGS
from shared.db import Db


async def list_actors(request: web.Request) -> web.Response:
    rows = await request.app[DB].list_actors()
    return web.json_response({"items": [actor_json(r) for r in rows]})


def _json_or_text(value: str) -> Any:
    try:
        return json.loads(value)
    except ValueError:
        return value


async def system_status(request: web.Request) -> web.Response:
    app = request.app
    db, redis, keys = app[DB], app[REDIS], app[KEYS]
    counts = await db.counts()
    queues = sorted({app[SETTINGS].default_queue, *(a["queue"] for a in await db.list_actors())})
    now = time.time()
    async with redis.pipeline(transaction=False) as pipe:
        pipe.zrangebyscore(keys.executions, now, "+inf", withscores=True)
        pipe.zcount(keys.executions, "-inf", f"({now}")
        for queue in queues:
            pipe.llen(keys.celery_key(queue))
        pipe.hlen(keys.celery_key("unacked"))
        pipe.get(keys.leader)
        pipe.hgetall(keys.reaper_status)
        live, expired, *lengths, unacked, leader, reaper = await pipe.execute()
    expiries = dict(live)
    infos = await redis.hmget(keys.execution_info, list(expiries)) if expiries else []
    executions = []
    workers: dict[str, int] = {}
    for tid, raw in zip(expiries, infos, strict=True):
        info = _json_or_text(raw) if raw else {}
        info = info if isinstance(info, dict) else {}
        executions.append({**info, "task_id": tid, "expires_at": expiries[tid]})
        node = str(info.get("node") or info.get("host") or "unknown")
        workers[node] = workers.get(node, 0) + 1
    return web.json_response({
        "counts": counts,
        "queues": {q: {"ready": n} for q, n in zip(queues, lengths, strict=True)},
        "unacked": unacked,
        "executions": executions,
        "expired_executions": expired,
        "workers": [{"node": n, "executions": c} for n, c in sorted(workers.items())],
        "inconsistencies": await _inconsistencies(db, set(expiries)),
        "reaper": {"leader": leader,
                   "status": {k: _json_or_text(v) for k, v in reaper.items()} or None},
    })


def _uuids(values: set[str]) -> list[uuid.UUID]:
    out = []
    for value in values:
        try:
            out.append(uuid.UUID(value))
        except ValueError:
            continue
    return out


async def _inconsistencies(db: Db, live: set[str]) -> dict[str, list[str]]:
    """Rows and executions that disagree; the reaper's reconciler settles them. O(active)."""
    active = {str(r["id"]) for r in await db.active_rows()}
    unregistered = sorted(active - live)
    stray = live - active
    # A live execution whose row is not running: finished a moment ago, or undead.
    rows = await db.active_by_ids(_uuids(stray)) if stray else []
    undead = sorted(str(r["id"]) for r in rows if r["status"] not in ("running", "cancelling"))
    unknown = sorted(stray - {str(r["id"]) for r in rows})
    return {"running_without_execution": unregistered, "execution_of_terminal_task": undead,
            "execution_without_task": unknown}
