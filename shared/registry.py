"""The live-execution registry in Redis: what runs where, readable in O(active).

Each pool process refreshes its execution's entry with every heartbeat; an entry
whose score (expiry) has passed belongs to a process that stopped beating.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from typing import Any

import redis.asyncio as aioredis

from shared.keys import Keys


@dataclass(frozen=True)
class Entry:
    """What a pool process writes about the execution it runs."""

    task_id: str
    attempt: int
    message_id: str
    node: str
    host: str
    pid: int
    pid_started: float
    started_at: float

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, raw: str | bytes) -> Entry:
        info: dict[str, Any] = json.loads(raw)
        return cls(task_id=str(info["task_id"]), attempt=int(info["attempt"]),
                   message_id=info.get("message_id", ""), node=info["node"],
                   host=info.get("host", ""), pid=int(info["pid"]),
                   pid_started=float(info["pid_started"]), started_at=float(info["started_at"]))


@dataclass(frozen=True)
class LiveExecution(Entry):
    """An entry as read back, with the time its process must beat again by."""

    expires: float

    @property
    def alive(self) -> bool:
        return self.expires > time.time()


# Removes an entry only if it still belongs to the given attempt: a newer attempt of the
# same task may have registered meanwhile.
_UNREGISTER = """
local raw = redis.call('hget', KEYS[2], ARGV[1])
if raw and cjson.decode(raw)['attempt'] == tonumber(ARGV[2]) then
  redis.call('zrem', KEYS[1], ARGV[1])
  redis.call('hdel', KEYS[2], ARGV[1])
  return 1
end
return 0
"""


async def register(redis: aioredis.Redis, keys: Keys, entry: Entry, ttl: float) -> None:
    """Adds or refreshes the entry of one execution."""
    async with redis.pipeline(transaction=True) as pipe:
        pipe.zadd(keys.executions, {entry.task_id: time.time() + ttl})
        pipe.hset(keys.execution_info, entry.task_id, entry.to_json())
        await pipe.execute()


async def refresh(redis: aioredis.Redis, keys: Keys, entry: Entry, ttl: float) -> None:
    """Pushes an entry's expiry on: one command while the entry is there (its details never
    change during an execution); the whole entry again if it went missing (a Redis
    restart, a prune)."""
    if await redis.zadd(keys.executions, {entry.task_id: time.time() + ttl}):
        await register(redis, keys, entry, ttl)


async def unregister(redis: aioredis.Redis, keys: Keys, task_id: str, attempt: int) -> bool:
    return bool(await redis.eval(_UNREGISTER, 2, keys.executions, keys.execution_info,
                                 task_id, attempt))


async def live_executions(redis: aioredis.Redis, keys: Keys, *, include_expired: bool = False
                          ) -> dict[str, LiveExecution]:
    low = "-inf" if include_expired else time.time()
    scored: list[Any] = await redis.zrangebyscore(keys.executions, low, "+inf", withscores=True)
    if not scored:
        return {}
    ids: list[str] = [m.decode() if isinstance(m, bytes) else str(m) for m, _ in scored]
    infos = await redis.hmget(keys.execution_info, ids)
    out: dict[str, LiveExecution] = {}
    for (_, score), tid, raw in zip(scored, ids, infos, strict=True):
        if raw is None:
            continue
        entry = Entry.from_json(raw)
        out[tid] = LiveExecution(**{**asdict(entry), "task_id": tid}, expires=float(score))
    return out


async def prune_expired(redis: aioredis.Redis, keys: Keys, older_than: float) -> int:
    """Drops entries that expired more than `older_than` seconds ago (their process died)."""
    cutoff = time.time() - older_than
    stale = await redis.zrangebyscore(keys.executions, "-inf", cutoff)
    if not stale:
        return 0
    async with redis.pipeline(transaction=True) as pipe:
        pipe.zrem(keys.executions, *stale)
        pipe.hdel(keys.execution_info, *stale)
        await pipe.execute()
    return len(stale)


# -- worker main processes --------------------------------------------------------------------
# A worker's main process records itself in the `workers` hash when it is ready and renews
# its expiry in `workers_alive` while it lives. kill -9 (or a lost host) skips the removal
# at shutdown; readers then tell it from a live worker by the lapsed expiry.


async def worker_alive(redis: aioredis.Redis, keys: Keys, node: str, ttl: float,
                       record: str) -> None:
    """Renews a worker main process's liveness for `ttl` seconds; writes its record again
    if it went missing (a Redis restart, a prune while this worker could not reach Redis)."""
    if await redis.zadd(keys.workers_alive, {node: time.time() + ttl}):
        await redis.hset(keys.workers, node, record)


async def prune_lapsed_workers(redis: aioredis.Redis, keys: Keys, older_than: float) -> int:
    """Drops the records of workers whose liveness lapsed more than `older_than` seconds ago."""
    stale = await redis.zrangebyscore(keys.workers_alive, "-inf", time.time() - older_than)
    if not stale:
        return 0
    async with redis.pipeline(transaction=True) as pipe:
        pipe.zrem(keys.workers_alive, *stale)
        pipe.hdel(keys.workers, *stale)
        await pipe.execute()
    return len(stale)


async def lapsed_workers(redis: aioredis.Redis, keys: Keys) -> set[str]:
    """Nodes whose main process stopped renewing its liveness: gone, whatever the `workers`
    hash still says. A node never seen in `workers_alive` is not among them (a worker of a
    version that did not beat yet is not hidden)."""
    lapsed = await redis.zrangebyscore(keys.workers_alive, "-inf", f"({time.time()}")
    return {m.decode() if isinstance(m, bytes) else str(m) for m in lapsed}
