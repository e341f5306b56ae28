"""The reaper's Celery calls, many at once, against a real Redis broker."""

from __future__ import annotations

import asyncio
import uuid

from services.reaper.celery_ops import THREADS, CeleryOps
from shared.broker import make_celery
from shared.settings import Settings


async def test_many_kills_at_once_all_return(settings: Settings) -> None:
    # given the reaper's Celery calls, and no worker to answer
    ops = CeleryOps(make_celery(settings))
    try:
        # when twice as many kills as it has threads are asked at once (a tree's deadlines
        # passing together)
        calls = [ops.kill(message_id=str(uuid.uuid4()), task_id=str(uuid.uuid4()), node=None,
                          timeout=0.3) for _ in range(2 * THREADS)]
        # then every one returns (none waits forever for a broker connection)
        replies = await asyncio.wait_for(asyncio.gather(*calls), timeout=20)
        assert replies == [[]] * (2 * THREADS)
    finally:
        ops.close()
