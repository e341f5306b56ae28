"""7. A fleet: 100 pool processes over three simulated hosts, every DB connection through
PgBouncer in transaction mode (100 and more processes would exceed PostgreSQL's
max_connections on their own), a reaper, and a Redis server of its own.

With 100 cooperative `distill` tasks running (and some queued behind them), in order:

1. Connections: per pool process, its TCP connections to PgBouncer and to Redis (psutil);
   Redis's CLIENT LIST and PgBouncer's SHOW CLIENTS, each client traced to the process
   holding its socket; the server connections PgBouncer opened (SHOW SERVERS, and the
   database's backends in pg_stat_activity).
2. Steady state: the servers' counters over a window (PgBouncer SHOW STATS,
   pg_stat_database, pg_stat_user_tables, Redis INFO), per running task and second.
3. Deliveries: PUBSUB NUMSUB of the channels one cancel uses, then a burst of no-op events
   shaped as single cancels, once on the task and node channels and once on the fleet-wide
   channel (what every single cancel used before), with the receivers Redis reports and
   the bytes it sent.
4. Single cancels (`Canceller.cancel`, in-process) with the receivers of each PUBLISH and
   the time to the worker's `task.cancel_observed`.
5. cancel-all (`Canceller.cancel_all`, in-process): per running task, the time from the
   call to its worker's `task.cancel_observed` line, and until no row is active.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import redis.asyncio as aioredis

from bench.fleet_cancel import Published, cancel_all, deliveries, singles
from bench.fleet_counters import Counters, CpuUse, census, delta
from bench.fleet_stack import Fleet, Unavailable, why_unavailable
from bench.plan import Plan
from bench.poll import until
from bench.stack import Servers
from shared.broker import make_celery
from shared.cancellation import Canceller
from shared.db import Db
from shared.submit import submit

# Cooperative and long: a chunk is a 0.5 s wait that a cancel wakes at once.
KWARGS = {"chunks": 100_000, "chunk_seconds": 0.5}
# Commands the bench itself sends to read the counters.
_OWN_COMMANDS = ("info", "client|list", "config|get", "pubsub|numsub", "client", "config",
                 "pubsub")
SAMPLE = 10_000  # processes and running tasks the figures are extrapolated to


async def run(servers: Servers, out_dir: Path, plan: Plan, *, cancel_grace: float,
              say: Callable[[str], None] = print) -> dict[str, Any]:
    result: dict[str, Any] = {"concurrency": list(plan.fleet_concurrency),
                              "settings": {"cancel_grace_s": cancel_grace, "kwargs": KWARGS}}
    if (why := why_unavailable()) is not None:
        say(f"  skipped: {why}")
        return {**result, "skipped": why}
    fleet = Fleet(servers, out_dir, plan.fleet_concurrency, cancel_grace)
    try:
        await fleet.open(say)
        result["settings"].update(
            heartbeat_interval_s=fleet.s.heartbeat_interval,
            cancel_poll_interval_s=fleet.s.cancel_poll_interval,
            pgbouncer_pool_size=fleet.bouncer.pool_size, pgbouncer_mode="transaction")
        await _measure(fleet, plan, result, say)
    except Unavailable as exc:
        result["skipped"] = str(exc)
    except Exception as exc:
        result["error"] = f"{type(exc).__name__}: {exc}"[:500]
        say(f"  fleet section failed: {result['error']}")
    finally:
        left = await fleet.close()
        result["cleanup"] = {"left_behind": left}
    return result


async def _measure(fleet: Fleet, plan: Plan, result: dict[str, Any],
                   say: Callable[[str], None]) -> None:
    pool = await fleet.direct()
    redis = aioredis.from_url(fleet.s.redis_url)
    db = await Db.connect(fleet.s.database_url, min_size=1, max_size=2)
    celery = make_celery(fleet.s)
    canceller = Canceller(fleet.s, db, Published(aioredis.from_url(fleet.s.redis_url)), celery)
    try:
        n = sum(plan.fleet_concurrency)
        started = time.perf_counter()
        for _ in range(n + plan.fleet_queued):
            await submit(db, celery, actor="distill", kwargs=KWARGS)

        async def all_running() -> bool:
            return await _running(pool) >= n

        await until(all_running, 180, f"{n} tasks running", interval=0.2)
        result["ramp_s"] = round(time.perf_counter() - started, 1)
        say(f"  {n} tasks running and {plan.fleet_queued} queued after {result['ramp_s']} s")
        await asyncio.sleep(2.0)  # every sidecar past its first beat

        result["connections"] = await census(fleet, pool)
        result["connections"]["at_10k"] = _connections_at(result["connections"],
                                                          plan.fleet_concurrency)
        counters = Counters(fleet, pool, redis)
        result["steady"] = await steady(fleet, counters, pool, plan.fleet_steady_s)
        st = result["steady"]
        say(f"  steady state: {st['db']['statements_per_task_s']} DB statements and "
            f"{st['redis']['commands_per_task_s']} Redis commands per task-second")
        result["deliveries"] = await deliveries(fleet, pool, redis, plan.fleet_burst,
                                                st["redis"]["net_out_per_s"])
        result["singles"] = await singles(fleet, pool, canceller, plan.fleet_singles)
        await until(all_running, 60, f"{n} tasks running again", interval=0.2)
        result["cancel_all"] = await cancel_all(fleet, pool, canceller, counters)
        c = result["cancel_all"]
        say(f"  cancel-all: observed p50 {c['latency']['from_call_ms']['p50']} / p99 "
            f"{c['latency']['from_call_ms']['p99']} ms over {c['running']} tasks; every row "
            f"terminal after {c['all_terminal_ms']} ms")
    finally:
        celery.close()
        await canceller.redis.aclose()
        await db.close()
        await redis.aclose()
        await pool.close()


async def _running(pool: Any) -> int:
    return int(await pool.fetchval(
        "SELECT count(*) FROM tasks WHERE status = 'running' AND heartbeat_at IS NOT NULL"))


# -- 2. steady state -----------------------------------------------------------------------

async def steady(fleet: Fleet, counters: Counters, pool: Any, seconds: float) -> dict[str, Any]:
    running = [await _running(pool)]
    load = os.getloadavg()[0]
    cpu = CpuUse(fleet, await pool.fetch(
        "SELECT pid FROM pg_stat_activity WHERE datname = current_database()"))
    a = await counters.snapshot()
    cpu.begin()
    beat_xacts = await _beat_transactions(pool, seconds)
    used = cpu.end()
    b = await counters.snapshot()
    running.append(await _running(pool))
    d = delta(a, b)
    tasks = sum(running) / 2
    task_s = tasks * d["seconds"]

    def per(value: float) -> float:
        return round(value / task_s, 3) if task_s else 0.0

    bouncer, tables = d["bouncer"], d["tables"]
    # The bench's own reads (two per snapshot) go straight to PostgreSQL.
    xacts = d["pg"]["xact_commit"] + d["pg"]["xact_rollback"] - 2
    statements = bouncer.get("total_xact_count", xacts)
    # PostgreSQL's table counters are flushed by each backend at its own pace (up to 10 s
    # late); the checkpoints are counted exactly from the rows' own times.
    beat_rows = tables.get("tasks", {}).get("upd", 0)
    checkpoints = int(await pool.fetchval(
        "SELECT count(*) FROM task_results WHERE created_at >= $1 AND created_at < $2",
        a["db_now"], b["db_now"]))
    own = sum(v for k, v in d["commandstats"].items() if k in _OWN_COMMANDS)
    commands = d["redis"]["commands"] - own
    by_command = {k: v for k, v in d["commandstats"].items() if k not in _OWN_COMMANDS}
    xact_us = (bouncer["total_xact_time"] / bouncer["total_xact_count"]
               if bouncer.get("total_xact_count") else None)
    return {
        "seconds": d["seconds"], "running": running, "task_seconds": round(task_s, 1),
        "load_average_1m": [round(load, 2), round(os.getloadavg()[0], 2)],
        # CPU per second of the window, by role (ms of CPU per wall second).
        "cpu_ms_per_s": {k: round(v / used["wall_ms"] * 1000, 1)
                         for k, v in used["cpu_ms"].items()},
        "db": {
            "statements": statements, "statements_per_task_s": per(statements),
            "pg_xacts": xacts, "pg_xacts_per_task_s": per(xacts),
            "pgbouncer_queries": bouncer.get("total_query_count"),
            "heartbeat_statements": beat_xacts,
            "heartbeat_statements_per_task_s": per(beat_xacts),
            "heartbeat_updates_per_task_s": per(beat_rows),
            "checkpoint_writes_per_task_s": per(checkpoints),
            "runtime_per_task_s": per(max(statements - checkpoints, 0)),
            "other_per_task_s": per(max(statements - beat_xacts - checkpoints, 0)),
            "mean_xact_us": round(xact_us, 1) if xact_us is not None else None,
            "client_wait_ms": round(bouncer.get("total_wait_time", 0) / 1000, 1),
            "tables": tables,
        },
        "redis": {
            "commands": commands, "commands_per_task_s": per(commands),
            "by_command_per_task_s": {k: per(v) for k, v in list(by_command.items())[:10]},
            "net_out_per_s": round(d["redis"]["net_out"] / d["seconds"]),
            "net_in_per_s": round(d["redis"]["net_in"] / d["seconds"]),
            "cpu_s_per_s": round(d["redis"]["cpu_s"] / d["seconds"], 4),
        },
        "at_10k": _extrapolate(per(statements), per(commands), xact_us,
                               d["redis"]["cpu_s"] / task_s if task_s else None),
    }


async def _beat_transactions(pool: Any, seconds: float, every: float = 0.2) -> int:
    """Transactions that wrote a running row during the next `seconds`: the heartbeats (in
    the steady state nothing else updates a running row; checkpoints go to task_results).
    One node heartbeat writes all its worker's rows in one transaction, so its rows share
    one xmin; a sample every `every` seconds sees each (a row keeps it until the next beat)."""
    seen: set[str] = set()
    before: set[str] | None = None
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        xmins = {r["x"] for r in await pool.fetch(
            "SELECT xmin::text AS x FROM tasks WHERE status = 'running'")}
        if before is None:
            before = xmins
        seen |= xmins
        await asyncio.sleep(every)
    return len(seen - (before or set()))


def _extrapolate(statements: float, commands: float, xact_us: float | None,
                 redis_cpu_per_task_s: float | None) -> dict[str, Any]:
    """Per-task rates times 10,000 running tasks: a linear extrapolation, not a measurement."""
    out: dict[str, Any] = {"running_tasks": SAMPLE,
                           "db_statements_per_s": round(statements * SAMPLE),
                           "redis_commands_per_s": round(commands * SAMPLE)}
    if xact_us is not None:
        # Little's law: transactions in flight = arrival rate x time each holds a server.
        out["pg_server_connections_busy"] = round(statements * SAMPLE * xact_us / 1e6, 1)
    if redis_cpu_per_task_s is not None:
        out["redis_cpu_cores"] = round(redis_cpu_per_task_s * SAMPLE, 2)
    return out


def _connections_at(found: dict[str, Any], concurrency: tuple[int, ...]) -> dict[str, Any]:
    """The measured connections per process times a fleet of 10,000 pool processes in
    workers of the same size: arithmetic on this run's counts, not a measurement."""
    per_worker = sum(concurrency) / len(concurrency)
    workers = -(-SAMPLE // round(per_worker))
    pool_p, main_p = found["per_pool_process"], found["per_worker_main"]
    redis_by, pg_by = found["redis"]["by_process"], found["pgbouncer"]["clients_by_process"]

    def total(kind: str, reaper: int) -> int:
        return round(pool_p[kind].get("mean", 0) * SAMPLE
                     + main_p[kind].get("mean", 0) * workers + reaper)

    redis_total = total("redis", redis_by.get("reaper", 0))
    return {"pool_processes": SAMPLE, "workers": workers,
            "redis_clients": redis_total, "redis_maxclients": found["redis"]["maxclients"],
            "redis_subscribers": SAMPLE + workers,
            "pgbouncer_clients": total("pgbouncer", pg_by.get("reaper", 0))}
