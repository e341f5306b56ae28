"""Real queued tasks that no worker will take: rows in `queued` with their Celery messages
waiting in a queue that no worker consumes. Made in bulk (SQL and one Celery producer),
since submitting ten thousand through the API one by one would take most of a minute."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import redis.asyncio as aioredis

from bench.rows import Rows
from shared.broker import make_celery
from shared.queues import queue_lists
from shared.settings import Settings

PARKED_QUEUE = "bench-parked"
_KWARGS = {"chunks": 5, "chunk_seconds": 0.05}


async def park(rows: Rows, settings: Settings, n: int, actor: str = "distill") -> list[str]:
    """Returns the new task ids."""
    created = await rows.pool.fetch(
        "INSERT INTO tasks (id, actor, queue, kwargs, status, message_id) "
        "SELECT gen_random_uuid(), $1, $2, $3::jsonb, 'queued', gen_random_uuid() "
        "FROM generate_series(1, $4) RETURNING id, message_id",
        actor, PARKED_QUEUE, json.dumps(_KWARGS), n)
    await asyncio.to_thread(_publish, settings, actor, [(str(r["id"]), str(r["message_id"]))
                                                         for r in created])
    return [str(r["id"]) for r in created]


def _publish(settings: Settings, actor: str, ids: list[tuple[str, str]]) -> None:
    # The same message shared.submit sends: only the task id, under the row's message id.
    celery = make_celery(settings)
    try:
        with celery.producer_or_acquire() as producer:
            for task_id, message_id in ids:
                celery.send_task(actor, kwargs={"task_id": task_id}, task_id=message_id,
                                 queue=PARKED_QUEUE, producer=producer)
    finally:
        celery.close()


async def parked_messages(settings: Settings, keys: Any) -> int:
    client = aioredis.from_url(settings.redis_url)
    try:
        return sum([await client.llen(k) for k in queue_lists(keys, PARKED_QUEUE)])
    finally:
        await client.aclose()


async def drain(settings: Settings, keys: Any) -> None:
    """Drops the parked queue's messages (their rows are terminal by then)."""
    client = aioredis.from_url(settings.redis_url)
    try:
        await client.delete(*queue_lists(keys, PARKED_QUEUE))
    finally:
        await client.aclose()
