"""What the bench watches while something large happens: who holds locks on `tasks` and
for how long, whether other work still gets claimed, and what Redis was made to do."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import os
import socket
import time
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import redis.asyncio as aioredis

from bench.stats import Dist
from shared.db import Db
from shared.states import TaskStatus

# Every session of the bench database that is inside a transaction, whether it holds a
# RowExclusiveLock on `tasks` (any INSERT, UPDATE or DELETE on it takes one and keeps it
# until its transaction ends), and whether it waits for a lock.
_SESSIONS = """
SELECT a.pid, a.xact_start,
       left(regexp_replace(regexp_replace(a.query, '^(\\s*--[^\\n]*\\n)+', ''), '\\s+', ' ', 'g'),
            160) AS query,
       a.wait_event_type = 'Lock' AS waiting, a.wait_event,
       extract(epoch FROM clock_timestamp() - a.xact_start)::float8 AS xact_s,
       extract(epoch FROM clock_timestamp() - a.query_start)::float8 AS query_s,
       EXISTS (SELECT 1 FROM pg_locks l
               WHERE l.pid = a.pid AND l.locktype = 'relation' AND l.relation = $1
                 AND l.database = $2 AND l.mode = 'RowExclusiveLock' AND l.granted) AS holds
FROM pg_stat_activity a
WHERE a.datname = current_database() AND a.pid <> pg_backend_pid()
  AND a.xact_start IS NOT NULL
"""


class Loop:
    """A coroutine run every `every` seconds until stopped."""

    every = 0.1

    def __init__(self) -> None:
        self._task: asyncio.Task[None] | None = None
        self._stop = asyncio.Event()
        self.errors: list[str] = []

    async def step(self) -> None:
        raise NotImplementedError

    async def _run(self) -> None:
        while not self._stop.is_set():
            started = time.perf_counter()
            try:
                await self.step()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if len(self.errors) < 20:
                    self.errors.append(f"{type(exc).__name__}: {exc}"[:300])
            left = self.every - (time.perf_counter() - started)
            if left > 0:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stop.wait(), left)

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def stop(self, timeout: float = 35.0) -> None:
        self._stop.set()
        if self._task is not None:
            try:
                await asyncio.wait_for(self._task, timeout)
            except TimeoutError:
                if len(self.errors) < 20:
                    self.errors.append(f"still busy {timeout:g} s after being stopped")


class LockWatch(Loop):
    """Samples the bench database's sessions every 20 ms: the oldest transaction that holds
    a RowExclusiveLock on `tasks` (its age is how long it has held what it locked, at most),
    and the sessions waiting for a lock, with how long their statement has waited. A
    transaction is told apart by its session and start, and named by the statements it was
    seen running."""

    every = 0.02

    def __init__(self, database_url: str) -> None:
        super().__init__()
        self.url = database_url
        self.conn: asyncpg.Connection | None = None
        self.samples = 0
        self.t0: float | None = None
        self.holders: dict[tuple[int, Any], dict[str, Any]] = {}
        self.longest_wait: dict[str, Any] = {"s": 0.0}
        self.max_waiting = 0
        self.samples_with_waiters = 0

    async def open(self) -> LockWatch:
        self.conn = await asyncpg.connect(self.url)
        self._args = (await self.conn.fetchval("SELECT 'tasks'::regclass::oid"),
                      await self.conn.fetchval(
                          "SELECT oid FROM pg_database WHERE datname = current_database()"))
        return self

    def mark(self) -> None:
        """Times of the longest lock and wait are reported from here."""
        self.t0 = time.perf_counter()

    async def step(self) -> None:
        assert self.conn is not None
        rows = await self.conn.fetch(_SESSIONS, *self._args)
        at = None if self.t0 is None else round((time.perf_counter() - self.t0) * 1000)
        self.samples += 1
        waiting = 0
        for r in rows:
            if r["holds"] and r["xact_s"] is not None:
                seen = self.holders.setdefault((r["pid"], r["xact_start"]),
                                               {"s": 0.0, "queries": [], "first_seen_ms": at})
                seen["s"] = max(seen["s"], r["xact_s"])
                query = r["query"] or ""
                if query not in seen["queries"] and len(seen["queries"]) < 4:
                    seen["queries"].append(query)
            if r["waiting"]:
                waiting += 1
                if (r["query_s"] or 0) > self.longest_wait["s"]:
                    self.longest_wait = {"s": r["query_s"], "query": r["query"], "at_ms": at,
                                         "event": r["wait_event"]}
        self.max_waiting = max(self.max_waiting, waiting)
        self.samples_with_waiters += bool(waiting)

    async def close(self) -> None:
        await self.stop()
        if self.conn is not None:
            await self.conn.close()

    def to_json(self) -> dict[str, Any]:
        top = sorted(self.holders.values(), key=lambda h: -h["s"])[:5]
        return {
            "samples": self.samples, "every_ms": self.every * 1000,
            "transactions_seen": len(self.holders),
            "longest_holder_ms": round(top[0]["s"] * 1000, 1) if top else 0.0,
            "longest_holders": [{"ms": round(h["s"] * 1000, 1), "queries": h["queries"],
                                 "first_seen_ms": h["first_seen_ms"]} for h in top],
            "longest_lock_wait_ms": round(self.longest_wait["s"] * 1000, 1),
            "longest_lock_wait_query": self.longest_wait.get("query"),
            "longest_lock_wait_event": self.longest_wait.get("event"),
            "longest_lock_wait_at_ms": self.longest_wait.get("at_ms"),
            "max_sessions_waiting": self.max_waiting,
            "samples_with_waiters": self.samples_with_waiters, "errors": self.errors,
        }


def claim_arguments(task_id: uuid.UUID, message_id: uuid.UUID, *, worker: str, pid: int,
                    lease_seconds: float, claim_timeout: float) -> dict[str, Any]:
    """Arguments for `Db.claim_task` as its current signature names them. A deadline or
    timeout it may require is the `claim_timeout` setting: an instant that far ahead when
    the parameter is a point in time, else that many seconds."""
    known: dict[str, Any] = {"task_id": task_id, "message_id": message_id, "worker": worker,
                             "pid": pid, "lease_seconds": lease_seconds, "lease": lease_seconds}
    out: dict[str, Any] = {}
    for name, param in list(inspect.signature(Db.claim_task).parameters.items())[1:]:
        if name in known:
            out[name] = known[name]
        elif param.default is not inspect.Parameter.empty:
            continue
        elif "datetime" in str(param.annotation) or name.endswith("_at"):
            out[name] = datetime.now(UTC) + timedelta(seconds=claim_timeout)
        elif "deadline" in name:
            out[name] = time.time() + claim_timeout
        elif "timeout" in name or "seconds" in name:
            out[name] = claim_timeout
        else:
            raise TypeError(f"Db.claim_task takes {name!r}, which the bench cannot fill")
    return out


class ClaimProbe(Loop):
    """Other work during the sweep: every 50 ms, one new row in a queue of its own
    (an INSERT), claimed through `Db.claim_task` (the worker's claim) and finished at once.
    Each step is timed on its own; the three run one after the other, so a step that waits
    holds the next ones back and shows as one long sample, not as many."""

    every = 0.05

    def __init__(self, db: Db, queue: str, *, actor: str = "distill",
                 claim_timeout: float = 10.0) -> None:
        super().__init__()
        self.db = db
        self.queue = queue
        self.actor = actor
        self.claim_timeout = claim_timeout
        self.worker = f"bench-probe@{socket.gethostname()}"
        self.phase = "before"
        self.dists: dict[str, dict[str, Dist]] = {}
        self.refused = {"before": 0, "during": 0}
        self.failed: dict[str, int] = {"before": 0, "during": 0}
        self.signature = str(inspect.signature(Db.claim_task))

    def _add(self, phase: str, step: str, seconds: float) -> None:
        self.dists.setdefault(phase, {}).setdefault(step, Dist()).add(seconds * 1000)

    async def step(self) -> None:
        phase = self.phase
        tid, mid = uuid.uuid4(), uuid.uuid4()
        started = time.perf_counter()
        try:
            await self.db.pool.execute(
                "INSERT INTO tasks (id, actor, queue, kwargs, status, message_id) "
                "VALUES ($1, $2, $3, '{}'::jsonb, 'queued', $4)", tid, self.actor, self.queue,
                mid)
            self._add(phase, "insert", time.perf_counter() - started)
            began = time.perf_counter()
            claim = await self.db.claim_task(**claim_arguments(
                tid, mid, worker=self.worker, pid=os.getpid(), lease_seconds=30.0,
                claim_timeout=self.claim_timeout))
            self._add(phase, "claim", time.perf_counter() - began)
            if claim is None:
                self.refused[phase] += 1
            else:
                began = time.perf_counter()
                await self.db.finish_task(tid, claim.attempt, TaskStatus.SUCCEEDED)
                self._add(phase, "finish", time.perf_counter() - began)
        except Exception:
            self.failed[phase] += 1
            self._add(phase, "failed_after", time.perf_counter() - started)
            raise
        self._add(phase, "cycle", time.perf_counter() - started)

    def to_json(self) -> dict[str, Any]:
        return {"queue": self.queue, "every_ms": self.every * 1000,
                "claim_signature": self.signature,
                **{phase: {name: d.to_json(with_samples=phase == "during")
                           for name, d in steps.items()}
                   for phase, steps in self.dists.items()},
                "refused": self.refused, "failed": self.failed, "errors": self.errors}


class Progress(Loop):
    """Every 100 ms: whether any row is still queued, running or cancelling (an EXISTS, the
    probe's queue left out), and how many messages wait in the backlog's Redis lists; every
    second, and when nothing is left, how many such rows there are (a count(*)). A count
    over a million active rows takes a PostgreSQL backend a few hundred milliseconds, so
    counting every 100 ms would keep one of the machine's two cores busy with the bench."""

    every = 0.1
    count_every_ms = 1000.0

    _ACTIVE = "status IN ('queued', 'running', 'cancelling') AND queue <> $1"

    def __init__(self, pool: Any, redis: aioredis.Redis, lists: list[str], skip_queue: str
                 ) -> None:
        super().__init__()
        self.pool = pool
        self.redis = redis
        self.lists = lists
        self.skip_queue = skip_queue
        self.t0 = time.perf_counter()
        self.timeline: list[tuple[float, int | None, int | None]] = []
        self.count_ms = Dist()
        self.exists_ms = Dist()
        self.active: int | None = None
        self.length: int | None = None
        self.all_terminal_ms: float | None = None
        self.messages_gone_ms: float | None = None
        self.first_drop_ms: float | None = None
        self.initial: int | None = None
        self._next_count = 0.0

    def mark(self) -> None:
        self.t0 = time.perf_counter()

    async def count(self) -> int:
        with self.count_ms.timing():
            return int(await self.pool.fetchval(
                f"SELECT count(*) FROM tasks WHERE {self._ACTIVE}", self.skip_queue))

    async def any_left(self) -> bool:
        with self.exists_ms.timing():
            return bool(await self.pool.fetchval(
                f"SELECT EXISTS (SELECT 1 FROM tasks WHERE {self._ACTIVE})", self.skip_queue))

    async def queue_length(self) -> int:
        async with self.redis.pipeline(transaction=False) as pipe:
            for key in self.lists:
                pipe.llen(key)
            return sum(int(n) for n in await pipe.execute())

    async def read(self) -> tuple[int, int]:
        return await self.count(), await self.queue_length()

    async def step(self) -> None:
        left = await self.any_left()
        length = await self.queue_length()
        at = (time.perf_counter() - self.t0) * 1000
        self.length = length
        if at >= self._next_count or (not left and self.all_terminal_ms is None):
            self._next_count = at + self.count_every_ms
            active = await self.count()
            self.active = active
            self.timeline.append((round(at), active, length))
            if self.initial is None:
                self.initial = active
            elif self.first_drop_ms is None and active < self.initial:
                self.first_drop_ms = round(at, 1)
        if self.all_terminal_ms is None and not left:
            self.all_terminal_ms = round(at, 1)
        if self.messages_gone_ms is None and length == 0:
            self.messages_gone_ms = round(at, 1)

    def coarse_timeline(self) -> list[list[int | None]]:
        """[ms after the call, active rows, messages waiting], about one a second."""
        return [[int(at), active, length] for at, active, length in self.timeline]


class RedisCost:
    """What Redis did between two points: commands (INFO commandstats), bytes sent to and
    read from clients (INFO stats), and the slowest single commands on our keys (SLOWLOG,
    which keeps those over `slowlog-log-slower-than`). The counters are the whole server's:
    other clients' traffic in the same window is included."""

    def __init__(self, redis: aioredis.Redis, prefix: str) -> None:
        self.redis = redis
        self.prefix = prefix.encode()
        self._before: dict[str, Any] = {}

    async def _snapshot(self) -> dict[str, Any]:
        stats = await self.redis.info("stats")
        commands = await self.redis.info("commandstats")
        last = await self.redis.slowlog_get(1)
        return {"out": int(stats["total_net_output_bytes"]),
                "in": int(stats["total_net_input_bytes"]),
                "commands": {k.removeprefix("cmdstat_"): (int(v["calls"]), int(v["usec"]))
                             for k, v in commands.items()},
                "slowlog_id": int(last[0]["id"]) if last else -1,
                "at": time.perf_counter()}

    async def begin(self) -> None:
        self._before = await self._snapshot()

    async def end(self) -> dict[str, Any]:
        after = await self._snapshot()
        before = self._before
        commands = {}
        for name, (calls, usec) in after["commands"].items():
            was_calls, was_usec = before["commands"].get(name, (0, 0))
            if calls - was_calls > 0 and name not in ("info", "slowlog"):
                commands[name] = {"calls": calls - was_calls,
                                  "ms": round((usec - was_usec) / 1000, 2)}
        slow = []
        for entry in await self.redis.slowlog_get(128):
            if int(entry["id"]) <= before["slowlog_id"]:
                continue
            args = entry.get("command") or b""
            if self.prefix not in (args if isinstance(args, bytes) else str(args).encode()):
                continue
            slow.append({"ms": round(int(entry["duration"]) / 1000, 2),
                         "command": (args[:80] if isinstance(args, bytes) else
                                     str(args)[:80].encode()).decode(errors="replace")})
        slow.sort(key=lambda e: -e["ms"])
        return {
            "window_ms": round((after["at"] - before["at"]) * 1000, 1),
            "net_output_mib": round((after["out"] - before["out"]) / 2**20, 2),
            "net_input_mib": round((after["in"] - before["in"]) / 2**20, 2),
            "commands": dict(sorted(commands.items(), key=lambda kv: -kv[1]["ms"])[:8]),
            "slowest_on_our_keys": slow[:5],
        }
