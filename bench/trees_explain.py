"""The two costliest steps of a tree cancel's answer, each on its own, on a tree of the
section's size whose children wait in a queue no worker reads:

- the subtree statement (`tree_subtree_cancel`): run as the product runs it and with
  PostgreSQL's JIT compilation off (`SET LOCAL jit = off`), and explained by PostgreSQL
  (`EXPLAIN (ANALYZE, FORMAT JSON)`: execution, planning, JIT compilation, the planner's
  estimate), every run in a transaction rolled back, so the tree is left as it was;
- a ZADD of as many message ids as the tree has children, to a key of its own (deleted
  after): the cancelled set's share of the announce.
"""

from __future__ import annotations

import json
import statistics
import time
import uuid
from typing import Any

import redis.asyncio as aioredis

from shared.db import Db

MODES = ("JIT as configured", "JIT off")
_SETTINGS = ("jit", "jit_above_cost", "jit_inline_above_cost", "jit_optimize_above_cost")


def _median(values: list[float]) -> float | None:
    return round(statistics.median(values), 1) if values else None


async def _once(pool: Any, sql: str, args: tuple[Any, ...], mode: str, explain: bool
                ) -> Any:
    async with pool.acquire() as conn:
        tr = conn.transaction()
        await tr.start()
        try:
            if mode == "JIT off":
                await conn.execute("SET LOCAL jit = off")
            if explain:
                return await conn.fetchval("EXPLAIN (ANALYZE, FORMAT JSON) " + sql, *args)
            started = time.perf_counter()
            rows = await conn.fetch(sql, *args)
            return (time.perf_counter() - started) * 1000, len(rows)
        finally:
            await tr.rollback()


def _explained(raw: Any) -> dict[str, Any]:
    plan = (json.loads(raw) if isinstance(raw, str) else raw)[0]
    jit = (plan.get("JIT") or {}).get("Timing") or {}
    return {"execution_ms": plan["Execution Time"], "planning_ms": plan["Planning Time"],
            "jit_ms": jit.get("Total"), "jit_parts_ms": {k: v for k, v in jit.items()
                                                        if k != "Total"},
            "estimated_cost": plan["Plan"]["Total Cost"],
            "estimated_rows": plan["Plan"]["Plan Rows"],
            "triggers_ms": sum(t["Time"] for t in plan.get("Triggers") or [])}


async def subtree_statement(pool: Any, db: Db, root: uuid.UUID, grace: float, children: int,
                            repeats: int = 3) -> dict[str, Any]:
    sql = db.q["tree_subtree_cancel"]
    args = (root, "bench", "bench-trees", False, grace)
    settings = {k: await pool.fetchval(f"SHOW {k}") for k in _SETTINGS}
    runs: dict[str, list[dict[str, Any]]] = {m: [] for m in MODES}
    for _ in range(repeats):
        for mode in MODES:  # interleaved: the machine's load falls on both alike
            client_ms, rows = await _once(pool, sql, args, mode, explain=False)
            run = _explained(await _once(pool, sql, args, mode, explain=True))
            runs[mode].append({"client_ms": round(client_ms, 1), "rows": rows, **run})
    summary = {}
    for mode, found in runs.items():
        summary[mode] = {
            key: _median([r[key] for r in found if r[key] is not None])
            for key in ("client_ms", "execution_ms", "planning_ms", "jit_ms", "triggers_ms")}
        summary[mode]["estimated_cost"] = found[0]["estimated_cost"] if found else None
        summary[mode]["estimated_rows"] = found[0]["estimated_rows"] if found else None
        summary[mode]["rows"] = found[0]["rows"] if found else None
    return {"children": children, "repeats": repeats, "settings": settings,
            "summary": summary, "runs": runs}


async def zadd_alone(redis: aioredis.Redis, prefix: str, members: int, repeats: int = 3
                     ) -> dict[str, Any]:
    key = f"{prefix}:bench-trees-zadd"
    took: list[float] = []
    try:
        for _ in range(repeats):
            ids = {str(uuid.uuid4()): time.time() for _ in range(members)}
            started = time.perf_counter()
            await redis.zadd(key, ids)
            took.append((time.perf_counter() - started) * 1000)
            await redis.delete(key)
    finally:
        await redis.delete(key)
    return {"members": members, "ms": [round(t, 1) for t in took], "median_ms": _median(took)}
