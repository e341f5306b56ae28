"""Celery's queues as kombu lays them out in Redis, under this deployment's key prefix.

A queue is a Redis list; messages with a priority go to sub-lists named
`<queue><sep><step>`. Delivered but unacknowledged messages sit in the `unacked`
hash (with the `unacked_index` sorted set) until the worker acknowledges them.
"""

from __future__ import annotations

from dataclasses import dataclass

import redis.asyncio as aioredis
from kombu.transport.redis import PRIORITY_STEPS, Channel
from redis.exceptions import ResponseError

from shared.db import Db
from shared.keys import Keys
from shared.queues import queue_lists, unacked_index_key, unacked_key
from shared.settings import Settings

_BINDINGS = Channel.keyprefix_queue % ""  # "_kombu.binding."


@dataclass(frozen=True)
class QueueLengths:
    ready: dict[str, int]
    unacked: int
    unacked_index: int

    @property
    def total(self) -> int:
        return sum(self.ready.values()) + self.unacked


def unacked_keys(keys: Keys) -> tuple[str, str]:
    return unacked_key(keys), unacked_index_key(keys)


async def known_queues(settings: Settings, db: Db, redis: aioredis.Redis) -> list[str]:
    """Every queue this deployment may have messages in: the default queue, the actors'
    queues, queues that non-terminal rows name, and queues kombu has bindings for."""
    names = {settings.default_queue, *(r["queue"] for r in await db.list_actors())}
    names.update(await db.active_queues())
    names.update(await _bound_queues(Keys(settings.key_prefix), redis))
    return sorted(names)


async def _bound_queues(keys: Keys, redis: aioredis.Redis) -> set[str]:
    # One binding table per exchange, few of them, all under our prefix. Broadcast
    # exchanges (remote control, events) are fanouts over pub/sub: no lists to count.
    head = keys.celery_key(_BINDINGS)
    found: set[str] = set()
    async for table in redis.scan_iter(match=f"{head}*", count=500):
        exchange = _text(table)[len(head):]
        if exchange.endswith("pidbox") or exchange.startswith("celeryev"):
            continue
        try:
            members = await redis.smembers(table)
        except ResponseError:  # not a binding table after all
            continue
        found.update(q for m in members if (q := _text(m).split(Channel.sep)[-1]))
    return found


def _text(value: str | bytes) -> str:
    return value.decode() if isinstance(value, bytes) else value


async def lengths(redis: aioredis.Redis, keys: Keys, queues: list[str]) -> QueueLengths:
    """All lengths read in one MULTI, so they describe the same instant."""
    unacked, index = unacked_keys(keys)
    async with redis.pipeline(transaction=True) as pipe:
        for queue in queues:
            for key in queue_lists(keys, queue):
                pipe.llen(key)
        pipe.hlen(unacked)
        pipe.zcard(index)
        replies = await pipe.execute()
    per = len(PRIORITY_STEPS)
    ready = {q: sum(replies[i * per:(i + 1) * per]) for i, q in enumerate(queues)}
    return QueueLengths(ready=ready, unacked=replies[-2], unacked_index=replies[-1])


async def purge(redis: aioredis.Redis, keys: Keys, queues: list[str]) -> QueueLengths:
    """Deletes the queues' lists and the unacked messages; returns what was removed.

    Counting and deleting happen in one MULTI, so the counts are exactly what went.
    Only keys under this deployment's Celery prefix are touched; kombu's binding
    tables stay, so publishing keeps working."""
    unacked, index = unacked_keys(keys)
    doomed = [k for q in queues for k in queue_lists(keys, q)]
    assert all(k.startswith(keys.celery_prefix) for k in [*doomed, unacked, index])
    async with redis.pipeline(transaction=True) as pipe:
        for key in doomed:
            pipe.llen(key)
        pipe.hlen(unacked)
        pipe.zcard(index)
        pipe.delete(*doomed, unacked, index)
        # Nothing published is waiting any more.
        pipe.delete(keys.pending)
        replies = await pipe.execute()
    per = len(PRIORITY_STEPS)
    ready = {q: sum(replies[i * per:(i + 1) * per]) for i, q in enumerate(queues)}
    return QueueLengths(ready=ready, unacked=replies[-4], unacked_index=replies[-3])
