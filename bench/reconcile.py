"""4. One reconcile pass (`Reconciler.tick()`) as history grows, in-process.

A database of its own holds N terminal rows (spread over the last month, as retention
would keep them) and 1,000 running ones with fresh heartbeats and live registry entries:
healthy executions, so every rule runs its queries and finds nothing to repair. Each
pass is timed, and so is each rule inside it. For comparison: the cancel executor's
tick, and the full count by status that the status endpoint makes; and, to see where
the undead rule's time goes, its two reads on their own: the registry (Redis) and the
rows of the registered tasks (PostgreSQL).
"""

from __future__ import annotations

import json
import socket
import statistics
import time
import uuid
from typing import Any

from bench.stack import Servers, scratch
from bench.stats import Dist, timed
from services.reaper.celery_ops import CeleryOps
from services.reaper.context import ReaperContext
from services.reaper.executor import CancelExecutor
from services.reaper.leader import LeaderLock
from services.reaper.metrics import ReaperMetrics
from services.reaper.reconcile import Pass, Reconciler, Rule, default_rules
from shared.broker import make_celery
from shared.db import Db
from shared.keys import Keys
from shared.redis_client import connect
from shared.registry import live_executions
from shared.settings import Settings

_BATCH = 100_000

_HISTORY = """
INSERT INTO tasks (id, actor, queue, kwargs, status, attempt, message_id, created_at,
                   enqueued_at, started_at, finished_at, heartbeat_at, done, total, outcome)
SELECT gen_random_uuid(), 'distill', 'default', '{"chunks": 10}'::jsonb,
       (ARRAY['succeeded', 'succeeded', 'cancelled', 'failed', 'lost'])[1 + g % 5], 1,
       gen_random_uuid(), t.at, t.at, t.at + interval '1 second',
       t.at + interval '1 minute', t.at + interval '1 minute', 10, 10,
       CASE g % 5 WHEN 2 THEN 'cooperative' WHEN 3 THEN 'error' WHEN 4 THEN 'gone' END
FROM generate_series($1::int, $2::int) AS g,
     LATERAL (SELECT now() - g * interval '2.5 seconds' AS at) AS t
"""

_ACTIVE = """
INSERT INTO tasks (id, actor, queue, kwargs, status, attempt, message_id, started_at,
                   heartbeat_at, worker, pid, total)
SELECT gen_random_uuid(), 'distill', 'default', '{"chunks": 10}'::jsonb, 'running', 1,
       gen_random_uuid(), now(), now(), $1, 100000 + g, 10
FROM generate_series(1, $2::int) AS g
RETURNING id, message_id, pid
"""


class TimedRule:
    """Wraps a rule and keeps how long each of its runs took."""

    def __init__(self, rule: Rule) -> None:
        self.rule = rule
        self.name = rule.name
        self.ms: list[float] = []

    async def run(self, ctx: ReaperContext, p: Pass) -> int:
        started = time.perf_counter()
        try:
            return await self.rule.run(ctx, p)
        finally:
            self.ms.append((time.perf_counter() - started) * 1000)


async def _median_ms(fn: Any, times: int) -> float:
    return round(statistics.median((await timed(fn, times)).samples), 2)


async def _add_active(ctx: ReaperContext, n: int) -> list[uuid.UUID]:
    node = f"bench@{socket.gethostname()}"
    rows = await ctx.db.pool.fetch(_ACTIVE, node, n)
    now = time.time()
    infos = {str(r["id"]): json.dumps({
        "task_id": str(r["id"]), "attempt": 1, "message_id": str(r["message_id"]),
        "node": node, "host": socket.gethostname(), "pid": r["pid"], "pid_started": now,
        "started_at": now}) for r in rows}
    async with ctx.redis.pipeline(transaction=False) as pipe:
        pipe.zadd(ctx.keys.executions, {tid: now + 3600 for tid in infos})
        pipe.hset(ctx.keys.execution_info, mapping=infos)
        await pipe.execute()
    return [r["id"] for r in rows]


async def _add_history(db: Db, first: int, last: int) -> float:
    started = time.perf_counter()
    for low in range(first, last + 1, _BATCH):
        await db.pool.execute(_HISTORY, low, min(last, low + _BATCH - 1))
    await db.pool.execute("VACUUM ANALYZE tasks")
    return time.perf_counter() - started


async def run(servers: Servers, sizes: list[int], *, active: int, passes: int
              ) -> list[dict[str, Any]]:
    async with scratch(servers, "reconcile", reaper_metrics_port=0) as settings:
        return await _measure(settings, sizes, active=active, passes=passes)


async def _measure(settings: Settings, sizes: list[int], *, active: int, passes: int
                   ) -> list[dict[str, Any]]:
    keys = Keys(settings.key_prefix)
    db = await Db.connect(settings.database_url, min_size=1, max_size=4)
    redis = connect(settings.redis_url)
    celery = make_celery(settings, "bench-reaper")
    try:
        ctx = ReaperContext(settings=settings, db=db, redis=redis, celery=CeleryOps(celery),
                            keys=keys, metrics=ReaperMetrics(),
                            leader=LeaderLock(redis, keys.leader, settings.leader_ttl, "bench"))
        await ctx.leader.acquire_or_renew()
        rules = [TimedRule(r) for r in default_rules()]
        reconciler, executor = Reconciler(ctx, rules=tuple(rules)), CancelExecutor(ctx)
        ids = await _add_active(ctx, active)
        out, have = [], 0
        for size in sizes:
            load_s = await _add_history(db, have + 1, size)
            have = size
            await db.pool.execute("UPDATE tasks SET heartbeat_at = now() WHERE status = 'running'")
            await reconciler.tick()  # warm-up
            for r in rules:
                r.ms.clear()
            took = Dist()
            for _ in range(passes):
                with took.timing():
                    findings = await reconciler.tick()
            out.append({
                "history_rows": size, "active_rows": active, "insert_s": round(load_s, 1),
                "table_mib": round(await db.pool.fetchval(
                    "SELECT pg_total_relation_size('tasks')") / 2**20, 1),
                "pass_ms": took.to_json(), "pass_median_ms": round(statistics.median(
                    took.samples), 2),
                "rules_median_ms": {r.name: round(statistics.median(r.ms), 2) for r in rules},
                "findings": findings,
                "executor_tick_median_ms": await _median_ms(executor.tick, passes),
                "status_counts_median_ms": await _median_ms(lambda: db.counts(history=True), 3),
                "registry_read_median_ms": await _median_ms(
                    lambda: live_executions(redis, keys), passes),
                "active_by_ids_median_ms": await _median_ms(
                    lambda: db.active_by_ids(ids), passes),
            })
        return out
    finally:
        celery.close()
        await redis.aclose()
        await db.close()
