"""Our side of the job-tree cancel: one root and N children made in one transaction
(`shared.batch.submit_batch`), some of the children running on the pool processes of the
fleet's three simulated hosts (bench/fleet_stack.py: PgBouncer in transaction mode, a
reaper, a Redis of its own), with our API in front; then the root is cancelled.

The root is a row only: it waits in a queue no worker reads, so it never takes a pool
process, and cancelling it cancels its subtree. The children are cooperative `distill`s on
the workers' own queue (`chunk_seconds` 0.5: a running one stops at once, its finished
chunks saved). Each round makes a new tree, waits until every pool process runs a child,
then cancels the root: `POST /api/v1/tasks/{root}/cancel` in the measured rounds, and in a
last round `Canceller.cancel()` in this process with its steps timed (bench/trees_spans.py).
After the call the round watches (bench/trees_watch.py) until every child is terminal, no
execution is registered and the queue is empty."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import redis.asyncio as aioredis

from bench.api import Api
from bench.fleet_stack import Fleet, Unavailable, why_unavailable
from bench.plan import Plan
from bench.poll import until
from bench.procs import Child
from bench.trees_explain import subtree_statement, zadd_alone
from bench.trees_spans import Spans
from bench.trees_watch import Logs, Settle, children_after, logged, running_ends
from shared.batch import Item, submit_batch
from shared.broker import make_celery
from shared.cancellation import Canceller
from shared.db import Db
from shared.trees import ChildSpec
from tests.support import settings_env

KWARGS = {"chunks": 100_000, "chunk_seconds": 0.5}
# The root's queue: no worker reads it, so the root stays a queued row.
ROOT_QUEUE = "trees-root"
QUEUE = "default"  # the children's: `distill`'s own, which every worker reads
Say = Callable[[str], None]


async def run(servers: Any, out_dir: Path, plan: Plan, *, cancel_grace: float,
              say: Say = print) -> dict[str, Any]:
    sizes = plan.trees_concurrency
    result: dict[str, Any] = {
        "children": plan.trees_children, "concurrency": list(sizes), "hosts": len(sizes),
        "settings": {"cancel_grace_s": cancel_grace, "kwargs": KWARGS,
                     "root": f"a queued `distill` row in queue {ROOT_QUEUE!r}, read by no "
                             f"worker", "children_queue": QUEUE}, "rounds": []}
    if (why := why_unavailable()) is not None:
        say(f"  ours skipped: {why}")
        return {**result, "skipped": why}
    fleet = Fleet(servers, out_dir, sizes, cancel_grace)
    api: Child | None = None
    try:
        await fleet.open(say)
        api = await _start_api(fleet, out_dir)
        result["settings"].update(heartbeat_interval_s=fleet.s.heartbeat_interval,
                                  cancel_poll_interval_s=fleet.s.cancel_poll_interval,
                                  pgbouncer_pool_size=fleet.bouncer.pool_size)
        await _rounds(fleet, plan, result, say)
    except Unavailable as exc:
        result["skipped"] = str(exc)
    except Exception as exc:
        result["error"] = f"{type(exc).__name__}: {exc}"[:500]
        say(f"  ours failed: {result['error']}")
    finally:
        if api is not None:
            await asyncio.to_thread(api.stop)
        result["cleanup"] = {"left_behind": await fleet.close()}
    return result


async def _start_api(fleet: Fleet, out_dir: Path) -> Child:
    """Our API on the fleet's settings: through PgBouncer, as the workers reach the DB."""
    child = Child("trees-api", "services.api", [], settings_env(fleet.s),
                  out_dir / "api.out").start()
    base = f"http://{fleet.s.host}:{fleet.s.port}"
    async with aiohttp.ClientSession() as http:
        async def ready() -> bool:
            child.check()
            try:
                async with http.get(f"{base}/readyz") as resp:
                    return resp.status == 200
            except aiohttp.ClientError:
                return False

        await until(ready, 30, "API ready")
    return child


async def _rounds(fleet: Fleet, plan: Plan, result: dict[str, Any], say: Say) -> None:
    s = fleet.s
    pool = await fleet.direct()
    redis = aioredis.from_url(s.redis_url)
    db = await Db.connect(s.database_url, min_size=1, max_size=4)
    cancel_db = await Db.connect(s.database_url, min_size=1, max_size=2)
    celery = make_celery(s)
    canceller = Canceller(s, cancel_db, aioredis.from_url(s.redis_url), celery)
    spans = Spans()
    spans.instrument(canceller)
    logs = Logs(fleet.log_files())
    try:
        async with aiohttp.ClientSession() as http:
            api = Api(http, f"http://{s.host}:{s.port}", s.api_token)
            tree = Tree(fleet, plan, pool, redis, db, celery, logs)
            for i in range(plan.trees_rounds):
                r = await tree.round(lambda root: _http_cancel(api, root))
                result["rounds"].append(r)
                say(f"  round {i + 1}: {_line(r)}")
            r = await tree.round(lambda root: spans.cancel(canceller, root))
            result["breakdown"] = r
            say(f"  in-process round: {_line(r)}; "
                + ", ".join(f"{x['step'][:40]} {x['ms']:.1f}" for x in r["answer"]["spans"]
                            if not x["nested"]))
            root, _ = await tree.submit(children_queue=ROOT_QUEUE)
            st = result["statement"] = await subtree_statement(
                pool, db, root, s.cancel_grace, plan.trees_children)
            result["zadd"] = await zadd_alone(redis, s.key_prefix, r["queued"])
            say("  the subtree statement alone: " + ", ".join(
                f"{m} {v['client_ms']} ms (JIT {v['jit_ms']} ms)"
                for m, v in st["summary"].items()) + f"; ZADD of {r['queued']:,} ids "
                f"{result['zadd']['median_ms']} ms")
    finally:
        celery.close()
        await canceller.redis.aclose()
        await cancel_db.close()
        await db.close()
        await redis.aclose()
        await pool.close()


async def _http_cancel(api: Api, root: uuid.UUID) -> dict[str, Any]:
    async with api.http.post(f"{api.base}/tasks/{root}/cancel", headers=api.auth,
                             json={"reason": "bench"}) as resp:
        body = await resp.json(content_type=None)
        return {"via": "POST /api/v1/tasks/{root}/cancel", "http_status": resp.status,
                "root_status": body.get("status") if isinstance(body, dict) else None}


def _line(r: dict[str, Any]) -> str:
    t, ends = r["timeline"], r["running_ends"]
    return (f"{r['running']} running of {r['children']:,}: answered in {r['answer_ms']:.0f} ms, "
            f"every running child stopped after {ends['stopped_ms'].get('max')} ms, all "
            f"children terminal after {t['all_children_terminal_ms']} ms, queue empty after "
            f"{t['queue_empty_ms']} ms, {r['after']['started_after_answer']} started after "
            f"the answer")


class Tree:
    """Makes one tree a round, and measures its cancel."""

    def __init__(self, fleet: Fleet, plan: Plan, pool: Any, redis: aioredis.Redis, db: Db,
                 celery: Any, logs: Logs) -> None:
        self.fleet, self.plan, self.pool, self.redis = fleet, plan, pool, redis
        self.db, self.celery, self.logs = db, celery, logs
        self.target = sum(plan.trees_concurrency)

    async def submit(self, children_queue: str | None = None) -> tuple[uuid.UUID, float]:
        """A root in ROOT_QUEUE and its children, in the workers' queue unless told."""
        items = [Item(ChildSpec("distill", dict(KWARGS), queue=ROOT_QUEUE), ref="root")]
        items += [Item(ChildSpec("distill", dict(KWARGS), queue=children_queue),
                       parent_ref="root") for _ in range(self.plan.trees_children)]
        p = time.perf_counter()
        made = await submit_batch(self.db, self.celery, self.fleet.s, items)
        return made[0]["id"], (time.perf_counter() - p) * 1000

    async def _running(self, root: uuid.UUID) -> list[uuid.UUID]:
        return [r["id"] for r in await self.pool.fetch(
            "SELECT id FROM tasks WHERE parent_id = $1 AND status = 'running' "
            "AND heartbeat_at IS NOT NULL", root)]

    async def round(self, cancel: Callable[[uuid.UUID], Any]) -> dict[str, Any]:
        root, submit_ms = await self.submit()
        p = time.perf_counter()

        async def all_running() -> bool:
            return len(await self._running(root)) >= self.target

        await until(all_running, 180, f"{self.target} children running", interval=0.1)
        ramp_s = time.perf_counter() - p
        await asyncio.sleep(1.0)  # each past a chunk or two: there is work to save
        running = await self._running(root)
        queued = int(await self.pool.fetchval(
            "SELECT count(*) FROM tasks WHERE parent_id = $1 AND status = 'queued'", root))
        logged_before = self.logs.counts()
        s = self.fleet.s
        t0, p0 = time.time(), time.perf_counter()
        answer = await cancel(root)
        answer_ms = (time.perf_counter() - p0) * 1000
        answered_at = time.time()
        settle = Settle(t0, s.cancel_grace)
        await settle.run(self.pool, self.redis, self.fleet.keys, QUEUE, root, running,
                         limit_s=self.plan.trees_wait_s)
        ends = await running_ends(self.pool, self.logs, t0, running)
        after = await children_after(self.pool, root, t0, answered_at)
        after["worker_log"] = {k: v - logged_before[k] for k, v in self.logs.counts().items()}
        # Each worker's main process handling the reaper's revoke of the queued children.
        after["revoke_handling"] = self.logs.spans("Failed to mark task", t0)
        revoked = logged(s.log_path("reaper.log"), "reaper.revoked", t0, time.time())
        after["reaper_revoked"] = {"broadcasts": len(revoked),
                                   "ids": sum(int(r.get("count", 0)) for r in revoked)}
        return {"root": str(root), "t0_epoch": round(t0, 3), "children": self.plan.trees_children,
                "submit_ms": round(submit_ms, 1), "ramp_s": round(ramp_s, 1),
                "running": len(running), "queued": queued, "answer_ms": round(answer_ms, 1),
                "answer": answer, "answered_after_ms": round((answered_at - t0) * 1000, 1),
                "timeline": settle.timeline, "open_at_grace": settle.open_at_grace,
                "polls": settle.polls, "running_ends": ends, "after": after}
