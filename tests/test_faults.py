"""Degraded operation: Redis and PostgreSQL restarted under running tasks."""

from __future__ import annotations

import asyncio
import time

import asyncpg
import pytest
import redis.asyncio as aioredis

from shared.broker import make_celery
from shared.cancellation import Canceller
from shared.db import Db
from shared.migrate import migrate
from shared.settings import Settings
from shared.submit import submit
from tests.faults import PostgresServer, RedisServer
from tests.support import TERMINAL, row_where


async def test_redis_restart_during_running_tasks_and_a_cancel(
        settings: Settings, db: Db, start_worker, start_reaper, private_redis: RedisServer
) -> None:
    # given a private Redis, a worker and a reaper on it, and two distills running
    server = private_redis
    s = settings.with_(redis_url=server.url)
    start_worker(s)
    start_reaper(s)
    celery = make_celery(s)
    r = aioredis.from_url(s.redis_url)
    canceller = Canceller(s, db, r, celery)
    keep = await submit(db, celery, actor="distill", kwargs={"chunks": 40, "chunk_seconds": 0.1})
    stop = await submit(db, celery, actor="distill", kwargs={"chunks": 400, "chunk_seconds": 0.1})
    for tid in (keep["id"], stop["id"]):
        await row_where(db, tid, lambda x: x["status"] == "running" and x["done"] >= 2, 20,
                   "running")
    # when Redis goes away, a cancel is made meanwhile, and Redis comes back empty
    server.stop()
    t0 = time.monotonic()
    await canceller.cancel(stop["id"], by="test")
    await asyncio.sleep(1.0)
    server.start()
    # then the cancel is honoured through the DB poll
    cancelled = await row_where(db, stop["id"], lambda x: x["status"] in TERMINAL, 10, "cancelled")
    assert cancelled["status"] == "cancelled", dict(cancelled)
    assert time.monotonic() - t0 < 1.0 + settings.cancel_poll_interval + 2.0
    # and the other task completes, every chunk saved once
    done = await row_where(db, keep["id"], lambda x: x["status"] in TERMINAL, 30, "finished")
    assert done["status"] == "succeeded", dict(done)
    assert [x["chunk"] for x in await db.list_results(keep["id"])] == list(range(40))
    # and the worker has reconnected: a new task runs
    again = await submit(db, celery, actor="distill", kwargs={"chunks": 2, "chunk_seconds": 0.01})
    ok = await row_where(db, again["id"], lambda x: x["status"] in TERMINAL, 30, "new task")
    assert ok["status"] == "succeeded"
    assert await db.counts(history=False) == {k: 0 for k in (await db.counts(history=False))}
    celery.close()
    await r.aclose()


@pytest.fixture
async def private_pg():
    server = PostgresServer().start()
    conn = await asyncpg.connect(server.admin_url)
    await conn.execute("CREATE DATABASE faults")
    await conn.close()
    conn = await asyncpg.connect(server.url_for("faults"))
    await migrate(conn)
    await conn.close()
    yield server
    server.remove()


async def test_postgres_restart_mid_run(settings: Settings, private_pg: PostgresServer,
                                        start_worker, start_reaper, aiohttp_client) -> None:
    from services.api.app import create_app

    # given a distill running against a private PostgreSQL, and the API in front of it
    s = settings.with_(database_url=private_pg.url_for("faults"))
    start_worker(s)
    start_reaper(s)
    client = await aiohttp_client(create_app(s))
    db = await Db.connect(s.database_url, min_size=1, max_size=2)
    celery = make_celery(s)
    try:
        row = await submit(db, celery, actor="distill", kwargs={"chunks": 40, "chunk_seconds": 0.1})
        await row_where(db, row["id"], lambda x: x["status"] == "running" and x["done"] >= 3, 20,
                   "running")
        # when PostgreSQL goes down for two seconds
        private_pg.stop()
        down = time.monotonic()
        statuses = []
        while time.monotonic() - down < 2.0:
            for path in ("/readyz", f"/api/v1/tasks/{row['id']}", "/api/v1/tasks",
                         "/api/v1/system/status"):
                resp = await client.get(path)
                statuses.append((path, resp.status))
            await asyncio.sleep(0.2)
        private_pg.start()
        # then the API said 503 meanwhile and never 500
        assert all(code == 503 for _, code in statuses), statuses
        # and the task kept running and, once the DB is back, its progress and checkpoint
        # are complete
        final = await row_where(db, row["id"], lambda x: x["status"] in TERMINAL, 40, "finished")
        assert final["status"] == "succeeded", dict(final)
        assert (final["done"], final["total"]) == (40, 40)
        assert [x["chunk"] for x in await db.list_results(row["id"])] == list(range(40))
        resp = await client.get("/readyz")
        assert resp.status == 200
    finally:
        celery.close()
        await db.close()
