"""6. A backlog of N queued tasks (1,000,000 in the full run): what it costs to hold, to scan
and to cancel.

One stack of its own (database, key prefix, worker, reaper, API), in this order:

1. Load: N `queued` rows (`INSERT ... SELECT generate_series`, in batches) whose Celery
   messages wait in a queue no worker reads (`bulk`), `VACUUM ANALYZE`; the rows entered
   `queued` two hours ago. Redis `used_memory` before and after says what N messages cost.
2. Reaper passes, in-process, before any service starts: `Reconciler.tick()` and
   `BrokerScan.tick()` on a `ReaperContext` built as the daemon builds it, with the default
   LOST_MESSAGE_AFTER (60 s), so every one of the N rows is "stranded" to the scan. Each
   pass is timed, with what Redis did meanwhile (`watch.RedisCost`); the broker scan's time
   is split into Celery's broadcast reply waits (a fixed timeout, the same at any backlog)
   and the rest.
3. cancel-all: the worker, the reaper and the API start (the reaper with
   LOST_MESSAGE_AFTER of a day, so that its own broker scan leaves the backlog alone and
   only the cancel is measured), a cooperative `distill` and an uncooperative `stubborn`
   start running, then `POST /api/v1/tasks/cancel-all` (HTTP, as an operator would).
   Watched meanwhile: whether any row is still active and the queue length every 100 ms
   (the active-row count every second), the sessions holding locks on `tasks` every 20 ms,
   and a probe that inserts, claims and finishes one row of another queue every 50 ms.

Everything is removed afterwards: the big Redis keys by UNLINK (freed in the background,
so the shared server is not blocked), then the database and every key of the prefix.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import resource
import statistics
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import redis.asyncio as aioredis
import structlog

from bench import bulk
from bench.ours import Ours
from bench.parked import PARKED_QUEUE
from bench.plan import Plan
from bench.procs import rss_mib
from bench.stack import Servers, Stack
from bench.stats import Dist
from bench.watch import ClaimProbe, LockWatch, Loop, Progress, RedisCost
from shared.db import Db
from shared.keys import Keys
from shared.queues import queue_lists
from shared.redis_client import connect
from shared.settings import Settings

PROBE_QUEUE = "bench-scale-probe"
# The backlog entered `queued` this long ago: older than the default LOST_MESSAGE_AFTER
# (so the in-process broker scan counts it as stranded), younger than the stack's.
BACKLOG_AGE_S = 2 * 3600.0
STACK_LOST_MESSAGE_AFTER = 24 * 3600.0
CALL_TIMEOUT_S = 180.0
# After the answer: stop watching once nothing has moved for this long.
STALL_S = 10.0


def count(value: Any) -> int | None:
    """A count from a cancel-all result field: an int, or a list of ids."""
    if value is None:
        return None
    return value if isinstance(value, int) else len(value)


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """The in-process reaper's warnings (one line per finding) stay out of the bench's output;
    what it found is in the figures."""
    before = structlog.get_config()
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.CRITICAL))
    try:
        yield
    finally:
        structlog.configure(**before)


def _peak_rss_mib() -> float:
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


# -- 2. reaper passes, in-process ------------------------------------------------------------

class _Timed:
    """Times calls of named async methods or functions while active, and restores them."""

    def __init__(self) -> None:
        self.calls: dict[str, list[tuple[float, int | None]]] = {}
        self._undo: list[Callable[[], None]] = []

    def wrap(self, owner: Any, name: str, label: str) -> None:
        original = getattr(owner, name, None)
        if original is None:
            return
        had_own = isinstance(owner, type) or name in getattr(owner, "__dict__", {})

        async def timed(*args: Any, **kwargs: Any) -> Any:
            started = time.perf_counter()
            result = await original(*args, **kwargs)
            size = len(result) if isinstance(result, list | set | frozenset | dict) else None
            self.calls.setdefault(label, []).append(
                ((time.perf_counter() - started) * 1000, size))
            return result

        setattr(owner, name, timed)
        if had_own or inspect.ismodule(owner):
            self._undo.append(lambda: setattr(owner, name, original))
        else:
            self._undo.append(lambda: delattr(owner, name))

    def take(self) -> dict[str, dict[str, Any]]:
        out = {label: {"calls": len(v), "ms": round(sum(ms for ms, _ in v), 1),
                       "items": sum(n or 0 for _, n in v)} for label, v in self.calls.items()}
        self.calls = {}
        return out

    def restore(self) -> None:
        for undo in reversed(self._undo):
            undo()
        self._undo = []


def _context(settings: Settings, db: Db, redis: aioredis.Redis, celery_ops: Any,
             keys: Keys) -> Any:
    """A ReaperContext as `services.reaper.daemon` builds one, from the fields it declares."""
    from services.reaper.context import ReaperContext
    from services.reaper.leader import LeaderLock
    from services.reaper.metrics import ReaperMetrics

    known = {"settings": settings, "db": db, "redis": redis, "celery": celery_ops, "keys": keys,
             "metrics": ReaperMetrics(),
             "leader": LeaderLock(redis, keys.leader, settings.leader_ttl, "bench-scale")}
    wanted = inspect.signature(ReaperContext).parameters
    return ReaperContext(**{k: v for k, v in known.items() if k in wanted})


async def _timed_passes(label: str, passes: int, tick: Callable[[], Any], cost: RedisCost,
                        timed: _Timed, before: Callable[[], Any] | None = None
                        ) -> dict[str, Any]:
    took = Dist()
    runs: list[dict[str, Any]] = []
    errors: list[str] = []
    for _ in range(passes):
        if before is not None:
            await before()
        timed.take()
        await cost.begin()
        started = time.perf_counter()
        try:
            result = await tick()
        except Exception as exc:
            errors.append(f"{type(exc).__name__}: {exc}"[:300])
            result = None
        ms = (time.perf_counter() - started) * 1000
        took.add(ms)
        runs.append({"ms": round(ms, 1), "parts": timed.take(), "redis": await cost.end(),
                     **({"findings": result} if isinstance(result, dict) else {})})
    return {"pass": label, "pass_ms": took.to_json(),
            "median_ms": round(statistics.median(took.samples), 1) if took.samples else None,
            "runs": runs, "errors": errors}


async def reaper_passes(settings: Settings, *, reconcile_passes: int, scan_passes: int
                        ) -> dict[str, Any]:
    from services.reaper import broker_scan as broker_scan_module
    from services.reaper.broker_scan import BrokerScan
    from services.reaper.celery_ops import CeleryOps
    from services.reaper.reconcile import Reconciler
    from shared.broker import make_celery

    keys = Keys(settings.key_prefix)
    db = await Db.connect(settings.database_url, min_size=1, max_size=4)
    redis = connect(settings.redis_url)
    admin = aioredis.from_url(settings.redis_url)
    ops = CeleryOps(make_celery(settings, "bench-scale-reaper"))
    timed = _Timed()
    try:
        with _quiet():
            ctx = _context(settings, db, redis, ops, keys)
            if not await ctx.leader.acquire_or_renew():
                raise RuntimeError("another reaper leads this key prefix")
            # Celery's broadcasts wait their full timeout for replies; the rest is what the
            # backlog costs: every Db call and every shared helper the scan calls, by name.
            for name in ("active", "reserved_and_scheduled", "kill", "revoke"):
                timed.wrap(ops, name, "celery_broadcasts")
            for name, _ in inspect.getmembers(Db, inspect.iscoroutinefunction):
                if not name.startswith("_"):
                    timed.wrap(db, name, f"db.{name}")
            for name, fn in vars(broker_scan_module).copy().items():
                if inspect.iscoroutinefunction(fn) and fn.__module__.startswith("shared."):
                    timed.wrap(broker_scan_module, name, name)
            cost = RedisCost(admin, settings.key_prefix)
            reconciler, scan = Reconciler(ctx), BrokerScan(ctx)
            await reconciler.tick()  # warm-up
            reconcile = await _timed_passes("reconcile", reconcile_passes, reconciler.tick, cost,
                                            timed)
            rss_before = _peak_rss_mib()

            async def ask_for_scan() -> None:
                # What cancel-all does to have the scan run now rather than on its schedule.
                await redis.set(keys.scan_request, "1", ex=60)

            scan_out = await _timed_passes("broker_scan", scan_passes, scan.tick, cost, timed,
                                           before=ask_for_scan)
            for run in scan_out["runs"]:
                waited = run["parts"].get("celery_broadcasts", {}).get("ms", 0.0)
                run["without_broadcasts_ms"] = round(run["ms"] - waited, 1)
            rest = [r["without_broadcasts_ms"] for r in scan_out["runs"]]
            scan_out["without_broadcasts_median_ms"] = (round(statistics.median(rest), 1)
                                                        if rest else None)
            status = await redis.hgetall(keys.reaper_status)
            scan_out["reported"] = {k.decode(): v.decode() for k, v in status.items()
                                    if k.startswith(b"found:")}
            scan_out["bench_peak_rss_mib"] = {"before": rss_before, "after": _peak_rss_mib()}
            with contextlib.suppress(Exception):
                await ctx.leader.release()
            return {"reconcile": reconcile, "broker_scan": scan_out,
                    "lost_message_after_s": settings.lost_message_after}
    finally:
        timed.restore()
        ops.close()
        await admin.aclose()
        await redis.aclose()
        await db.close()


# -- 3. cancel-all with the backlog ----------------------------------------------------------

class RssWatch(Loop):
    """Peak RSS of the API, the reaper and the worker's main process, twice a second."""

    every = 0.5

    def __init__(self, stack: Stack) -> None:
        super().__init__()
        self.stack = stack
        self.peak: dict[str, float] = {}

    async def step(self) -> None:
        for name in ("api", "reaper", "worker"):
            child = self.stack.children.get(name)
            if child is not None and (mib := rss_mib(child.pid)) is not None:
                self.peak[name] = round(max(self.peak.get(name, 0.0), mib), 1)


async def _ends(ours: Ours, tasks: dict[str, dict[str, Any]], t0: float) -> dict[str, Any]:
    out = {}
    for name, task in tasks.items():
        row = await ours.rows.get(task["id"])
        end: dict[str, Any] = {"status": row["status"] if row else None,
                               "outcome": row["outcome"] if row else None, "ms": None}
        if row is not None and row["finished_at"] is not None:
            end["ms"] = round((row["finished_at"].timestamp() - t0) * 1000, 1)
        seen = ours.worker_log.find("task.cancel_observed", task["id"])
        if seen is not None:
            end["observed_ms"] = round((seen["epoch"] - t0) * 1000, 1)
            end["observed_via"] = seen.get("via")
        out[name] = end
    return out


async def _audit(pool: Any) -> dict[str, Any] | None:
    try:
        row = await pool.fetchrow("SELECT * FROM cancel_audit ORDER BY id DESC LIMIT 1")
    except Exception:
        return None
    if row is None:
        return None
    out = {k: row[k] for k in ("id", "cancelled", "cancelling") if k in row.keys()}
    if "task_ids" in row.keys():
        out["task_ids"] = count(row["task_ids"])
        out["row_bytes"] = int(await pool.fetchval(
            "SELECT pg_column_size(c.*) FROM cancel_audit c WHERE id = $1", row["id"]))
    return out


async def cancel_all(ours: Ours, size: int, *, wait_s: float) -> dict[str, Any]:
    stack, settings, rows = ours.stack, ours.stack.settings, ours.rows
    keys = stack.keys
    lists = queue_lists(keys, PARKED_QUEUE)
    await stack.worker_pool_full()
    running = {"distill": await ours.api.submit("distill", {"chunks": 100_000,
                                                            "chunk_seconds": 0.2}),
               "stubborn": await ours.api.submit("stubborn", {"seconds": 600,
                                                              "mode": "sleep"})}
    for task in running.values():
        await rows.wait_running(task["id"])

    redis = aioredis.from_url(settings.redis_url)
    probe_db = await Db.connect(settings.database_url, min_size=2, max_size=2)
    locks = await LockWatch(settings.database_url).open()
    probe = ClaimProbe(probe_db, PROBE_QUEUE,
                       claim_timeout=float(getattr(settings, "claim_timeout", 10.0)))
    progress = Progress(rows.pool, redis, lists, PROBE_QUEUE)
    rss = RssWatch(stack)
    cost = RedisCost(redis, settings.key_prefix)
    out: dict[str, Any] = {"via": "HTTP POST /api/v1/tasks/cancel-all (no scope, not forced)",
                           "queued": size}
    try:
        out["active_before"], out["messages_before"] = await progress.read()
        out["redis_used_memory_before_mib"] = round(
            int((await redis.info("memory"))["used_memory"]) / 2**20, 1)
        for loop in (locks, probe, rss):
            loop.start()
        await asyncio.sleep(2.0)  # the probe's figures before the cancel, for comparison

        await cost.begin()
        t0, p0 = time.time(), time.perf_counter()
        probe.phase = "during"
        locks.mark()
        progress.mark()
        progress.start()
        try:
            answer = await asyncio.wait_for(ours.api.cancel_all(), CALL_TIMEOUT_S)
            out["answer"] = {k: (count(v) if k in ("cancelled", "cancelling", "hastened") else v)
                             for k, v in answer.items()}
            out["ok"] = True
        except Exception as exc:
            out["ok"] = False
            out["error"] = f"{type(exc).__name__}: {exc}"[:500]
        answered = time.perf_counter() - p0
        out["response_ms"] = round(answered * 1000, 1)
        out["server_took_ms"] = (out.get("answer") or {}).get("took_ms")

        # Until every row is terminal and the queue is empty, or nothing moves any more.
        last, moved = None, time.perf_counter()
        while True:
            now = time.perf_counter()
            state = (progress.active, progress.length)
            if state != last:
                last, moved = state, now
            if progress.all_terminal_ms is not None and progress.messages_gone_ms is not None:
                break
            if now - p0 - answered > wait_s or now - moved > STALL_S:
                break
            await asyncio.sleep(0.1)
        out["watched_ms"] = round((time.perf_counter() - p0) * 1000, 1)
    finally:
        for loop in (progress, probe, rss):
            await loop.stop()
        await locks.close()
        with contextlib.suppress(Exception):
            out["redis"] = await cost.end()
        await probe_db.close()

    try:
        out.update({
            "first_row_terminal_ms": progress.first_drop_ms,
            "all_terminal_ms": progress.all_terminal_ms,
            "messages_gone_ms": progress.messages_gone_ms,
            "active_left": progress.active, "messages_left": progress.length,
            "timeline": progress.coarse_timeline(),
            "count_query_ms": progress.count_ms.to_json(with_samples=False),
            "exists_query_ms": progress.exists_ms.to_json(with_samples=False),
            "progress_errors": progress.errors,
            "locks": locks.to_json(), "probe": probe.to_json(), "peak_rss_mib": rss.peak,
            "running": await _ends(ours, running, t0),
            # No covered task may have started: a claim bumps `attempt`.
            "covered_started": int(await rows.pool.fetchval(
                "SELECT count(*) FROM tasks WHERE queue = $1 AND attempt > 0", PARKED_QUEUE)),
            "covered_by_status": {r["status"]: r["n"] for r in await rows.pool.fetch(
                "SELECT status, count(*) AS n FROM tasks WHERE queue = $1 GROUP BY status",
                PARKED_QUEUE)},
            "probe_rows_left_active": int(await rows.pool.fetchval(
                "SELECT count(*) FROM tasks WHERE queue = $1 AND status IN "
                "('queued', 'running', 'cancelling')", PROBE_QUEUE)),
            "audit": await _audit(rows.pool),
            "cancelled_set_size": int(await redis.zcard(keys.cancelled)),
            "redis_used_memory_after_mib": round(
                int((await redis.info("memory"))["used_memory"]) / 2**20, 1),
        })
    finally:
        await redis.aclose()
    return out


# -- the section -----------------------------------------------------------------------------

async def run(servers: Servers, out_dir: Path, plan: Plan, *, cancel_grace: float,
              say: Callable[[str], None] = print) -> dict[str, Any]:
    stack = await Stack.create(servers, out_dir, cancel_grace=cancel_grace,
                               lost_message_after=STACK_LOST_MESSAGE_AFTER)
    settings = stack.settings
    big_keys = [*queue_lists(stack.keys, PARKED_QUEUE), stack.keys.cancelled,
                *([stack.keys.pending] if hasattr(stack.keys, "pending") else [])]
    result: dict[str, Any] = {"size": plan.scale, "queue": PARKED_QUEUE,
                              "settings": {"cancel_grace_s": settings.cancel_grace,
                                           "lost_message_after_s": settings.lost_message_after,
                                           "backlog_age_s": BACKLOG_AGE_S}}
    try:
        await _measure(stack, plan, result, say)
    except Exception as exc:
        # The rest of the suite's figures are worth keeping: the failure is recorded.
        result["error"] = f"{type(exc).__name__}: {exc}"[:500]
        say(f"  scale section failed: {result['error']}")
    finally:
        await asyncio.to_thread(stack.stop)
        with contextlib.suppress(Exception):
            await bulk.unlink(servers.redis_url, big_keys)
        await stack.destroy()
    return result


async def _measure(stack: Stack, plan: Plan, result: dict[str, Any],
                   say: Callable[[str], None]) -> None:
    size, settings = plan.scale, stack.settings
    db = await Db.connect(settings.database_url, min_size=1, max_size=2)
    try:
        step = max(size // 5, 1)
        result["load"] = await bulk.load(
            db.pool, settings, size, age_s=BACKLOG_AGE_S,
            progress=lambda n: say(f"  loaded {n:,} of {size:,}") if n % step == 0 else None)
    finally:
        await db.close()
    say(f"  rows {result['load']['rows_s']:.1f} s, messages "
        f"{result['load']['messages_s']:.1f} s, Redis +{result['load']['redis_delta_mib']:,} MiB")

    scan_settings = settings.with_(lost_message_after=Settings().lost_message_after)
    try:
        result["passes"] = await reaper_passes(
            scan_settings, reconcile_passes=plan.scale_reconcile_passes,
            scan_passes=plan.scale_scan_passes)
        p = result["passes"]
        say(f"  reconcile median {p['reconcile']['median_ms']} ms, broker scan median "
            f"{p['broker_scan']['median_ms']} ms")
    except Exception as exc:
        result["passes"] = {"error": f"{type(exc).__name__}: {exc}"[:500]}
        say(f"  reaper passes failed: {result['passes']['error']}")

    await stack.start_worker()
    await stack.start_reaper()
    await stack.start_api()
    async with Ours.open(stack) as ours:
        try:
            result["cancel_all"] = await cancel_all(ours, size, wait_s=plan.scale_wait_s)
            c = result["cancel_all"]
            say(f"  cancel-all answered in {c['response_ms']:,.0f} ms"
                + ("" if c["ok"] else f" ({c.get('error')})")
                + f", all terminal: {c['all_terminal_ms']}, messages gone: "
                  f"{c['messages_gone_ms']}")
        except Exception as exc:
            result["cancel_all"] = {"error": f"{type(exc).__name__}: {exc}"[:500],
                                    "ok": False}
            say(f"  cancel-all scenario failed: {result['cancel_all']['error']}")
