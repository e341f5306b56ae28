"""Server-side counts for the per-task cost section: PostgreSQL transactions and row writes of
the bench's own database (`pg_stat_database`, `pg_stat_user_tables`) and Redis commands by
name (`INFO commandstats`), as deltas over a window, less what the idle stack does in the
same time.

PostgreSQL counts every statement sent outside an explicit transaction as one transaction
(asyncpg runs in autocommit) and an explicit one as one, whatever it holds. A backend
reports its counts at most once a second while busy, and one that went idle with counts
not yet reported does so 10 s later (PostgreSQL 15's PGSTAT_IDLE_INTERVAL): a window ends
`SETTLE_S` after the work, and the idle rate over that time is taken off again.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass
from typing import Any

import asyncpg
import redis.asyncio as aioredis

# Long enough for every backend's counts to be reported (see above).
SETTLE_S = 11.0
# The bench's own commands in a window: the snapshots, and its reads of plain Celery's
# results (the worker never sends MGET). It subscribes to the events channel before any.
BENCH_COMMANDS = frozenset({"info", "mget"})

_PG_FIELDS = ("xact_commit", "xact_rollback", "tup_inserted", "tup_updated", "tup_deleted")
_PG = """
SELECT xact_commit, xact_rollback, tup_inserted, tup_updated, tup_deleted,
       (SELECT coalesce(json_object_agg(relname, json_build_array(n_tup_ins, n_tup_upd,
                                                                  n_tup_del)), '{}')
        FROM pg_stat_user_tables) AS tables
FROM pg_stat_database WHERE datname = current_database()
"""


@dataclass
class Snapshot:
    at: float
    pg: dict[str, int]
    tables: dict[str, list[int]]
    commands: dict[str, int]
    redis_cpu_s: float
    counted: bool = True


class Counters:
    """Reads both servers' counters over a connection of its own to the bench's database
    and a Redis client (each read is one statement and one INFO, left out of the deltas)."""

    def __init__(self, database_url: str | None, redis_url: str) -> None:
        self.database_url = database_url
        self.redis_url = redis_url
        self._conn: asyncpg.Connection | None = None
        self._redis: aioredis.Redis | None = None

    async def open(self) -> Counters:
        if self.database_url is not None:
            self._conn = await asyncpg.connect(self.database_url, statement_cache_size=0)
        self._redis = aioredis.from_url(self.redis_url)
        return self

    async def close(self) -> None:
        if self._conn is not None:
            await self._conn.close()
        if self._redis is not None:
            await self._redis.aclose()

    async def snapshot(self) -> Snapshot:
        assert self._redis is not None
        at = time.perf_counter()
        row: Any = (await self._conn.fetchrow(_PG) if self._conn is not None
                    else dict.fromkeys(_PG_FIELDS, 0) | {"tables": "{}"})
        stats = await self._redis.info("commandstats")
        cpu = await self._redis.info("cpu")
        return Snapshot(
            at=at,
            pg={k: int(row[k]) for k in _PG_FIELDS}, counted=self._conn is not None,
            tables={k: list(v) for k, v in json.loads(row["tables"]).items()},
            commands={k.removeprefix("cmdstat_"): int(v["calls"]) for k, v in stats.items()},
            redis_cpu_s=float(cpu["used_cpu_sys"]) + float(cpu["used_cpu_user"]))

    async def settled(self) -> Snapshot:
        """A snapshot once the work's counters have reached the statistics."""
        await asyncio.sleep(SETTLE_S)
        return await self.snapshot()


@dataclass
class Window:
    """What moved between two snapshots."""

    seconds: float
    pg: dict[str, int]
    tables: dict[str, list[int]]
    commands: dict[str, int]
    redis_cpu_s: float

    @classmethod
    def between(cls, a: Snapshot, b: Snapshot) -> Window:
        tables = {}
        for name, after in b.tables.items():
            before = a.tables.get(name, [0, 0, 0])
            moved = [x - y for x, y in zip(after, before, strict=True)]
            if any(moved):
                tables[name] = moved
        commands = {k: v - a.commands.get(k, 0) for k, v in b.commands.items()
                    if k not in BENCH_COMMANDS}
        pg = {k: v - a.pg[k] for k, v in b.pg.items()}
        if a.counted:
            pg["xact_commit"] -= 1  # the first snapshot's own statement, counted once it ended
        return cls(round(b.at - a.at, 3), pg, tables,
                   {k: v for k, v in commands.items() if v > 0}, round(b.redis_cpu_s -
                                                                   a.redis_cpu_s, 3))

    def plus(self, other: Window) -> Window:
        """Two windows as one (the rounds of one contender, between others' rounds)."""
        def add(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
            return {k: a.get(k, 0) + b.get(k, 0) for k in a.keys() | b.keys()}

        tables = {k: [x + y for x, y in zip(self.tables.get(k, [0, 0, 0]),
                                            other.tables.get(k, [0, 0, 0]), strict=True)]
                  for k in self.tables.keys() | other.tables.keys()}
        return Window(round(self.seconds + other.seconds, 3), add(self.pg, other.pg), tables,
                      add(self.commands, other.commands),
                      round(self.redis_cpu_s + other.redis_cpu_s, 3))

    def per(self, n: int, idle: Window | None = None) -> dict[str, Any]:
        """Per unit of work (`n` of them), less the idle stack's rate over this window."""
        scale = (self.seconds / idle.seconds) if idle is not None and idle.seconds else 0.0

        def less(value: float, key: str, table: dict[str, Any]) -> float:
            base = table.get(key, 0) if idle is not None else 0
            return round(max(0.0, value - base * scale) / n, 3)

        idle_pg = idle.pg if idle is not None else {}
        idle_cmd = idle.commands if idle is not None else {}
        commands = {k: less(v, k, idle_cmd) for k, v in self.commands.items()}
        commands = {k: v for k, v in sorted(commands.items(), key=lambda kv: -kv[1]) if v >= 0.005}
        idle_tables = idle.tables if idle is not None else {}
        tables = {name: [round(max(0.0, x - b * scale) / n, 3) for x, b in
                         zip(moved, idle_tables.get(name, [0, 0, 0]), strict=True)]
                  for name, moved in self.tables.items()}
        return {
            "n": n, "seconds": self.seconds,
            "xact_commit": less(self.pg["xact_commit"], "xact_commit", idle_pg),
            "xact_rollback": less(self.pg["xact_rollback"], "xact_rollback", idle_pg),
            "rows_written": {name: dict(zip(("ins", "upd", "del"), v, strict=True))
                             for name, v in tables.items() if any(v)},
            "redis_commands": round(sum(commands.values()), 2),
            "redis_by_command": commands,
            "redis_cpu_ms": round(max(0.0, self.redis_cpu_s - (idle.redis_cpu_s * scale
                                                                if idle else 0.0)) / n * 1000,
                                  4),
        }

    def to_json(self) -> dict[str, Any]:
        return {"seconds": self.seconds, "pg": self.pg, "tables": self.tables,
                "commands": self.commands, "redis_cpu_s": self.redis_cpu_s}


EMPTY = Window(0.0, dict.fromkeys(_PG_FIELDS, 0), {}, {}, 0.0)


def with_redis(pg: dict[str, Any], redis: dict[str, Any]) -> dict[str, Any]:
    """Per-task figures whose PostgreSQL part and Redis part were counted over different
    windows: the database's over all rounds (its own database), Redis's over this
    contender's rounds alone (one server for everyone)."""
    return {**redis, **{k: pg[k] for k in ("xact_commit", "xact_rollback", "rows_written")}}


async def idle_window(counters: Counters, seconds: float) -> Window:
    """What the stack does on its own for `seconds` (reaper loops, beats, Celery's polls)."""
    a = await counters.snapshot()
    await asyncio.sleep(seconds)
    return Window.between(a, await counters.snapshot())
