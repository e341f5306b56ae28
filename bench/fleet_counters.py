"""What the fleet costs the servers: connections by the process that holds them, and the
servers' own counters between two points (PgBouncer SHOW STATS, pg_stat_database and
pg_stat_user_tables, Redis INFO)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections import Counter
from typing import Any

import asyncpg
import psutil
import redis.asyncio as aioredis

from bench.fleet_stack import Fleet

_PG_DB = """
SELECT xact_commit, xact_rollback, numbackends, clock_timestamp() AS now
FROM pg_stat_database WHERE datname = current_database()
"""
_PG_TABLES = "SELECT relname, n_tup_ins, n_tup_upd, n_tup_del FROM pg_stat_user_tables"
_BACKENDS = ("SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
             "AND pid <> pg_backend_pid()")


def _ints(row: dict[str, str], *names: str) -> dict[str, int]:
    return {n: int(row[n]) for n in names if n in row and str(row[n]).lstrip("-").isdigit()}


# -- connections ---------------------------------------------------------------------------

def _tcp_owner(port: int) -> dict[int, int]:
    """Local port -> outer pid, for every TCP connection to `port` on this machine."""
    out: dict[int, int] = {}
    for c in psutil.net_connections(kind="tcp"):
        if c.raddr and c.raddr.port == port and c.pid:
            out[c.laddr.port] = c.pid
    return out


def _per_process(pids: list[int], port: int) -> list[int]:
    """How many established TCP connections each process has to `port`."""
    counts = []
    for pid in pids:
        try:
            conns = psutil.Process(pid).net_connections(kind="tcp")
        except psutil.NoSuchProcess:
            continue
        counts.append(sum(1 for c in conns if c.raddr and c.raddr.port == port
                          and c.status == psutil.CONN_ESTABLISHED))
    return counts


def _spread(counts: list[int]) -> dict[str, Any]:
    if not counts:
        return {"processes": 0}
    return {"processes": len(counts), "total": sum(counts), "min": min(counts),
            "max": max(counts), "mean": round(sum(counts) / len(counts), 2),
            "histogram": {str(k): v for k, v in sorted(Counter(counts).items())}}


async def census(fleet: Fleet, pool: asyncpg.Pool) -> dict[str, Any]:
    """Who holds which connection, with the fleet running."""
    roles = fleet.roles()
    pool_pids = [pid for pid, role in roles.items() if role == "pool"]
    worker_pids = [pid for pid, role in roles.items() if role == "worker"]
    bouncer_port = fleet.bouncer.port
    out: dict[str, Any] = {
        "pool_processes": len(pool_pids),
        "per_pool_process": {"redis": _spread(_per_process(pool_pids, fleet.redis_port)),
                             "pgbouncer": _spread(_per_process(pool_pids, bouncer_port))},
        "per_worker_main": {"redis": _spread(_per_process(worker_pids, fleet.redis_port)),
                            "pgbouncer": _spread(_per_process(worker_pids, bouncer_port))},
    }
    # Redis's own view: CLIENT LIST, each client traced to the process holding its socket.
    client = aioredis.from_url(fleet.s.redis_url)
    try:
        clients = await client.client_list()
        owner = _tcp_owner(fleet.redis_port)  # while this client's own socket is open
        info = await client.info("clients")
        maxclients = int((await client.config_get("maxclients"))["maxclients"])
    finally:
        await client.aclose()
    by_role: Counter[str] = Counter()
    subscribers: Counter[str] = Counter()
    unknown = []
    for c in clients:
        port = int(str(c.get("addr", ":0")).rsplit(":", 1)[1])
        role = roles.get(owner.get(port, -1), "other")
        by_role[role] += 1
        if role == "other" and len(unknown) < 5:
            unknown.append({k: c.get(k) for k in ("addr", "age", "idle", "flags", "cmd")})
        if int(c.get("sub", 0) or 0) or int(c.get("psub", 0) or 0):
            subscribers[role] += 1
    out["redis"] = {"clients": len(clients), "connected_clients": int(info["connected_clients"]),
                    "maxclients": maxclients, "by_process": dict(by_role),
                    "subscribed_by_process": dict(subscribers), "unattributed": unknown}
    # PgBouncer's view: its clients by process, and the server connections it opened.
    clients_pg = await asyncio.to_thread(fleet.bouncer.show, "CLIENTS")
    pg_owner = _tcp_owner(bouncer_port)
    pg_roles: Counter[str] = Counter()
    for c in clients_pg:
        if c.get("database") != fleet.db_name:
            continue
        pid = pg_owner.get(int(c.get("port") or 0), -1)
        pg_roles[roles.get(pid, "other")] += 1
    servers = [s for s in await asyncio.to_thread(fleet.bouncer.show, "SERVERS")
               if s.get("database") == fleet.db_name]
    out["pgbouncer"] = {"clients_by_process": dict(pg_roles),
                        "clients": sum(pg_roles.values()),
                        "server_connections": len(servers),
                        "servers_by_state": dict(Counter(s.get("state", "?") for s in servers)),
                        "pools": await pools(fleet),
                        "pool_size": fleet.bouncer.pool_size}
    out["postgres"] = {"backends_on_bench_db": int(await pool.fetchval(_BACKENDS)),
                       "max_connections": int(await pool.fetchval("SHOW max_connections")),
                       "backends_on_server": int(await pool.fetchval(
                           "SELECT count(*) FROM pg_stat_activity WHERE backend_type = "
                           "'client backend'"))}
    return out


async def pools(fleet: Fleet) -> dict[str, int]:
    rows = await asyncio.to_thread(fleet.bouncer.show, "POOLS")
    for row in rows:
        if row.get("database") == fleet.db_name:
            return _ints(row, "cl_active", "cl_waiting", "sv_active", "sv_idle", "sv_used",
                         "sv_tested", "sv_login", "maxwait", "maxwait_us")
    return {}


class BackendWatch:
    """The bench database's backends (PgBouncer's server connections plus the bench's own)
    every 100 ms, and the most seen."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool
        self.peak = 0
        self._task: asyncio.Task[None] | None = None

    async def _run(self) -> None:
        while True:
            with contextlib.suppress(Exception):
                self.peak = max(self.peak, int(await self.pool.fetchval(_BACKENDS)))
            await asyncio.sleep(0.1)

    def start(self) -> BackendWatch:
        self._task = asyncio.create_task(self._run())
        return self

    async def stop(self) -> int:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        return self.peak


class CpuUse:
    """CPU seconds the fleet's processes (and the servers' ones serving it) used between two
    points, by role: where two cores' time went while the fleet reacted."""

    def __init__(self, fleet: Fleet, backends: list[Any]) -> None:
        self.procs: dict[int, str] = dict(fleet.roles())
        self.procs.pop(os.getpid(), None)
        if fleet.redis_server is not None and fleet.redis_server.proc is not None:
            self.procs[fleet.redis_server.proc.pid] = "redis"
        for row in backends:
            self.procs[int(row["pid"])] = "postgres"
        self._before: dict[int, float] = {}
        self._at = 0.0

    def _sample(self) -> dict[int, float]:
        out = {}
        for pid in self.procs:
            with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied):
                t = psutil.Process(pid).cpu_times()
                out[pid] = t.user + t.system
        return out

    def begin(self) -> None:
        self._before = self._sample()
        self._at = time.perf_counter()

    def end(self) -> dict[str, Any]:
        after, wall = self._sample(), time.perf_counter() - self._at
        by_role: Counter[str] = Counter()
        for pid, used in after.items():
            by_role[self.procs[pid]] += used - self._before.get(pid, used)
        return {"wall_ms": round(wall * 1000, 1), "cores": os.cpu_count(),
                "cpu_ms": {k: round(v * 1000, 1) for k, v in by_role.most_common()},
                "total_cpu_ms": round(sum(by_role.values()) * 1000, 1)}


# -- counters between two points -----------------------------------------------------------

class Counters:
    """Snapshots of every server counter the section reads; `delta` of two of them."""

    def __init__(self, fleet: Fleet, pool: asyncpg.Pool, redis: aioredis.Redis) -> None:
        self.fleet = fleet
        self.pool = pool
        self.redis = redis

    async def snapshot(self) -> dict[str, Any]:
        at = time.perf_counter()
        stats = await asyncio.to_thread(self.fleet.bouncer.show, "STATS")
        bouncer = next((_ints(r, "total_xact_count", "total_query_count", "total_xact_time",
                              "total_query_time", "total_wait_time", "total_received",
                              "total_sent")
                        for r in stats if r.get("database") == self.fleet.db_name), {})
        db = await self.pool.fetchrow(_PG_DB)
        tables = {r["relname"]: {"ins": r["n_tup_ins"], "upd": r["n_tup_upd"],
                                 "del": r["n_tup_del"]}
                  for r in await self.pool.fetch(_PG_TABLES)}
        info = await self.redis.info("stats")
        cpu = await self.redis.info("cpu")
        commands = await self.redis.info("commandstats")
        return {
            "at": at, "db_now": db["now"], "bouncer": bouncer,
            "pg": {"xact_commit": int(db["xact_commit"]),
                   "xact_rollback": int(db["xact_rollback"])},
            "tables": tables,
            "redis": {"commands": int(info["total_commands_processed"]),
                      "net_out": int(info["total_net_output_bytes"]),
                      "net_in": int(info["total_net_input_bytes"]),
                      "cpu_s": float(cpu["used_cpu_sys"]) + float(cpu["used_cpu_user"])},
            "commandstats": {k.removeprefix("cmdstat_"): int(v["calls"])
                             for k, v in commands.items()},
        }


def delta(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    tables = {}
    for name, after in b["tables"].items():
        before = a["tables"].get(name, {"ins": 0, "upd": 0, "del": 0})
        moved = {k: int(after[k]) - int(before[k]) for k in after}
        if any(moved.values()):
            tables[name] = moved
    commands = {k: v - a["commandstats"].get(k, 0) for k, v in b["commandstats"].items()}
    return {
        "seconds": round(b["at"] - a["at"], 3),
        "bouncer": {k: v - a["bouncer"].get(k, 0) for k, v in b["bouncer"].items()},
        "pg": {k: v - a["pg"][k] for k, v in b["pg"].items()},
        "tables": tables,
        "redis": {k: round(v - a["redis"][k], 3) for k, v in b["redis"].items()},
        "commandstats": dict(sorted(((k, v) for k, v in commands.items() if v > 0),
                                    key=lambda kv: -kv[1])),
    }
