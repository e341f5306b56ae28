"""What the whole system looks like: the actor catalogue, the task states, the status board."""

from __future__ import annotations

import dataclasses
import json
import uuid
from collections import Counter
from typing import Any

from aiohttp import web

from services.api.serialize import actor_json
from services.api.state import DB, KEYS, REDIS, SETTINGS
from shared.db import Db
from shared.queues import queue_lengths, unacked_count
from shared.registry import lapsed_workers, live_executions
from shared.states import TERMINAL, describe


async def list_actors(request: web.Request) -> web.Response:
    rows = await request.app[DB].list_actors()
    return web.json_response({"items": [actor_json(r) for r in rows]})


async def task_states(request: web.Request) -> web.Response:
    """The transition table and its named sets: clients read them here, never copy them."""
    return web.json_response(describe())


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
    registered = await live_executions(redis, keys, include_expired=True)
    live = {tid: e for tid, e in registered.items() if e.alive}
    async with redis.pipeline(transaction=False) as pipe:
        pipe.hgetall(keys.workers)
        pipe.get(keys.leader)
        pipe.hgetall(keys.reaper_status)
        announced, leader, reaper = await pipe.execute()
    # A worker whose main process stopped renewing its liveness is gone (kill -9, host lost).
    gone = await lapsed_workers(redis, keys)
    announced = {node: raw for node, raw in announced.items() if node not in gone}
    return web.json_response({
        "counts": counts,
        "queues": {q: {"ready": n} for q, n in (await queue_lengths(redis, keys, queues)).items()},
        "unacked": await unacked_count(redis, keys),
        "workers": _workers(announced, Counter(e.node for e in live.values())),
        "executions": [dataclasses.asdict(e) for e in live.values()],
        "expired_executions": len(registered) - len(live),
        "inconsistencies": await _inconsistencies(db, set(live)),
        "reaper": {"leader": leader,
                   "status": {k: _json_or_text(v) for k, v in reaper.items()} or None},
    })


def _workers(announced: dict[str, str], running: Counter[str]) -> list[dict[str, Any]]:
    """Announced worker main processes, plus any node seen only through its executions."""
    out = {}
    for node, raw in announced.items():
        info = _json_or_text(raw)
        out[node] = {**(info if isinstance(info, dict) else {}), "node": node}
    for node in running.keys() - out.keys():
        out[node] = {"node": node}
    return [{**out[n], "executions": running.get(n, 0)} for n in sorted(out)]


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
    stray = live - active
    # A live execution whose row is not running: finished a moment ago, or undead.
    rows = await db.active_by_ids(_uuids(stray)) if stray else []
    return {
        "running_without_execution": sorted(active - live),
        "execution_of_terminal_task": sorted(
            str(r["id"]) for r in rows if r["status"] in TERMINAL),
        "execution_without_task": sorted(stray - {str(r["id"]) for r in rows}),
    }
