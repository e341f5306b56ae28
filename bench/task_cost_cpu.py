"""CPU time (user + system, from psutil) that each process of a stack spent over a window:
the services, each worker's pool processes together, the PostgreSQL backends serving the
bench's database, the section's own redis-server, and the bench process that drives the
load. On two shared cores, what one task costs in CPU is what bounds tasks/s."""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from typing import Any

import asyncpg
import psutil

_POOL = re.compile(r" pool \d+$")


def _cpu_ms(pid: int) -> float | None:
    try:
        t = psutil.Process(pid).cpu_times()
    except psutil.Error:
        return None
    return (t.user + t.system) * 1000


async def backend_pids(admin_url: str, db_name: str) -> list[int]:
    """The PostgreSQL backends connected to `db_name` (read from another database, so the
    bench database's counters do not see the question)."""
    conn = await asyncpg.connect(admin_url, statement_cache_size=0)
    try:
        rows = await conn.fetch("SELECT pid FROM pg_stat_activity WHERE datname = $1", db_name)
    finally:
        await conn.close()
    return [int(r["pid"]) for r in rows]


class CpuClock:
    """`start()` and `stop()` around a window; `stop()` returns milliseconds by group."""

    def __init__(self, processes: Callable[[], dict[str, int]], *, admin_url: str | None = None,
                 db_name: str | None = None, redis_pid: int | None = None) -> None:
        self._processes = processes
        self._admin_url = admin_url
        self._db_name = db_name
        self._redis_pid = redis_pid
        self._start: dict[str, tuple[int, float]] = {}

    async def _pids(self) -> dict[str, int]:
        pids = dict(self._processes())
        if self._redis_pid is not None:
            pids["redis-server"] = self._redis_pid
        if self._admin_url and self._db_name:
            for i, pid in enumerate(await backend_pids(self._admin_url, self._db_name)):
                pids[f"postgres backend {i}"] = pid
        pids["bench (load generator)"] = os.getpid()
        return pids

    async def start(self) -> None:
        self._start = {}
        for name, pid in (await self._pids()).items():
            if (ms := _cpu_ms(pid)) is not None:
                self._start[name] = (pid, ms)

    def stop(self) -> dict[str, float]:
        out: dict[str, float] = {}
        for name, (pid, before) in self._start.items():
            after = _cpu_ms(pid)
            if after is None:
                continue
            group = ("postgres backends" if name.startswith("postgres backend")
                     else _POOL.sub(" pool processes", name))
            out[group] = out.get(group, 0.0) + after - before
        return {k: round(v, 1) for k, v in sorted(out.items(), key=lambda kv: -kv[1])}


def per(cpu: dict[str, float], n: int) -> dict[str, Any]:
    """Milliseconds of CPU per unit of work, by group, and their total."""
    each = {k: round(v / max(n, 1), 3) for k, v in cpu.items()}
    return {"by_process": each, "total": round(sum(each.values()), 3)}
