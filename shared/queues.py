"""Reading Celery's Redis broker: queue lengths, unacknowledged messages, message ids.

Celery keeps each queue as a Redis list (with sibling lists for priorities) and every
delivered-but-unacknowledged message in one hash, all under our key prefix.
"""

from __future__ import annotations

import json
from typing import Any

import redis.asyncio as aioredis
from kombu.transport.redis import PRIORITY_STEPS, Channel

from shared.keys import Keys


def queue_lists(keys: Keys, queue: str) -> list[str]:
    """The list holding `queue` and its priority sub-lists."""
    names = [queue, *(f"{queue}{Channel.sep}{step}" for step in PRIORITY_STEPS if step)]
    return [keys.celery_key(n) for n in names]


def unacked_key(keys: Keys) -> str:
    return keys.celery_key(Channel.unacked_key)


def unacked_index_key(keys: Keys) -> str:
    return keys.celery_key(Channel.unacked_index_key)


async def queue_lengths(redis: aioredis.Redis, keys: Keys, queues: list[str]) -> dict[str, int]:
    async with redis.pipeline(transaction=False) as pipe:
        for q in queues:
            for key in queue_lists(keys, q):
                pipe.llen(key)
        counts = await pipe.execute()
    steps = len(PRIORITY_STEPS)
    return {q: sum(counts[i * steps:(i + 1) * steps]) for i, q in enumerate(queues)}


async def unacked_count(redis: aioredis.Redis, keys: Keys) -> int:
    return int(await redis.hlen(unacked_key(keys)))


def _message_id(raw: Any) -> str | None:
    try:
        message = json.loads(raw)
    except (TypeError, ValueError):
        return None
    if isinstance(message, list):  # unacked entries are [message, exchange, routing_key]
        message = message[0] if message else {}
    headers = message.get("headers") or {}
    return headers.get("id") or (message.get("properties") or {}).get("correlation_id")


async def message_ids(redis: aioredis.Redis, keys: Keys, queues: list[str]) -> set[str]:
    """Ids of every message waiting in the queues or delivered and not yet acknowledged."""
    found: set[str] = set()
    for q in queues:
        for key in queue_lists(keys, q):
            for raw in await redis.lrange(key, 0, -1):
                if mid := _message_id(raw):
                    found.add(mid)
    for raw in await redis.hvals(unacked_key(keys)):
        if mid := _message_id(raw):
            found.add(mid)
    return found
