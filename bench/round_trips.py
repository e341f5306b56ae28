"""Context for every other figure: what one PostgreSQL and one Redis round trip cost on this
machine during the run, and what the API's cancel call costs without HTTP around it.

`Canceller.cancel()` runs in-process on rows set to `running` with no worker behind them,
in a database and key prefix of their own, so nothing else reacts to these cancels. Its
announce (the Redis event and the cancelled-message set) is timed apart through a
subclass; the rest of the call is the DB write.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

from bench.stack import Servers, scratch
from bench.stats import Dist, timed
from shared.broker import make_celery
from shared.cancellation import Canceller
from shared.db import Db
from shared.redis_client import connect
from shared.settings import Settings


class _TimedCanceller(Canceller):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.announce_ms = Dist()

    async def announce(self, event: dict[str, Any], message_ids: list[uuid.UUID],
                       **where: Any) -> None:
        started = time.perf_counter()
        try:
            await super().announce(event, message_ids, **where)
        finally:
            self.announce_ms.add((time.perf_counter() - started) * 1000)


async def run(servers: Servers, n: int) -> dict[str, Any]:
    async with scratch(servers, "trips") as settings:
        return await _measure(settings, n)


async def _measure(settings: Settings, n: int) -> dict[str, Any]:
    db = await Db.connect(settings.database_url, min_size=1, max_size=2)
    redis = connect(settings.redis_url, decode=True)
    celery = make_celery(settings)
    try:
        postgres = await timed(lambda: db.pool.fetchval("SELECT 1"), n)
        # A write commits only once its WAL is flushed: the disk's share of any DB write.
        await db.pool.execute("CREATE TABLE bench_probe (at timestamptz DEFAULT now())")
        insert = await timed(lambda: db.pool.execute(
            "INSERT INTO bench_probe DEFAULT VALUES"), n)
        ping = await timed(redis.ping, n)
        canceller = _TimedCanceller(settings, db, redis, celery)
        ids = [r["id"] for r in await db.pool.fetch(
            "INSERT INTO tasks (id, actor, queue, kwargs, status, attempt, message_id, "
            "started_at) SELECT gen_random_uuid(), 'distill', 'default', '{}'::jsonb, "
            "'running', 1, gen_random_uuid(), now() FROM generate_series(1, $1::int) "
            "RETURNING id", n)]
        pending = iter(ids)
        cancel = await timed(lambda: canceller.cancel(next(pending), by="bench"), n)
        announce = canceller.announce_ms
        db_write = Dist([c - a for c, a in zip(cancel.samples, announce.samples, strict=True)])
        return {"postgres_select_1": postgres.to_json(with_samples=False),
                "postgres_insert": insert.to_json(with_samples=False),
                "redis_ping": ping.to_json(with_samples=False),
                "canceller_cancel": cancel.to_json(with_samples=False),
                "cancel_db_write": db_write.to_json(with_samples=False),
                "cancel_announce": announce.to_json(with_samples=False)}
    finally:
        celery.close()
        await redis.aclose()
        await db.close()
