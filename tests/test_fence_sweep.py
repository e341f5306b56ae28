"""The fence sweep against real PostgreSQL and Redis: the two lanes of its walk take every
covered row once and nothing else, a row someone holds is skipped and taken by a later walk,
the purge script keeps what is not covered in its order whatever a message looks like, and a
claim stays cheap while the sweep writes many rows to a stopped state."""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

import redis.asyncio as aioredis

from services.reaper.context import ReaperContext
from services.reaper.leader import LeaderLock
from services.reaper.metrics import ReaperMetrics
from services.reaper.purge import PURGE_SCRIPT, FencePurge
from services.reaper.sweeper import FenceSweeper
from shared.db import Db
from shared.keys import Keys
from shared.queues import queue_lists
from shared.settings import Settings
from shared.submit import QUEUED_AT_HEADER


async def _ctx(settings: Settings, db: Db, redis: aioredis.Redis) -> ReaperContext:
    keys = Keys(settings.key_prefix)
    leader = LeaderLock(redis, keys.leader + uuid.uuid4().hex, settings.leader_ttl)
    assert await leader.acquire_or_renew()
    return ReaperContext(settings=settings, db=db, redis=redis, celery=None,  # type: ignore[arg-type]
                         keys=keys, leader=leader, metrics=ReaperMetrics())


async def _rows(db: Db, n: int, *, queue: str, actor: str = "distill", status: str = "queued",
                seconds_ago: float) -> list[uuid.UUID]:
    """`n` rows that entered `queued` `seconds_ago`, all in the same instant (one INSERT)."""
    return [r["id"] for r in await db.pool.fetch(
        "INSERT INTO tasks (id, actor, queue, kwargs, status, message_id, queued_at) "
        "SELECT gen_random_uuid(), $1, $2, '{}', $3, gen_random_uuid(), "
        "       now() - make_interval(secs => $4) FROM generate_series(1, $5) RETURNING id",
        actor, queue, status, seconds_ago, n)]


async def _fence(db: Db, *, queue: str, seconds_ago: float) -> int:
    """A cancel-all's fence over `queue`, set `seconds_ago`, its messages already purged."""
    return int(await db.pool.fetchval(
        "INSERT INTO cancel_fences (at, actor, queue, reason, by, forced, purged_at) "
        "VALUES (now() - make_interval(secs => $1), 'distill', $2, 'maintenance', 'test', "
        "        false, now()) RETURNING id", seconds_ago, queue))


async def _statuses(db: Db, ids: list[uuid.UUID]) -> dict[str, int]:
    return {r["status"]: r["n"] for r in await db.pool.fetch(
        "SELECT status, count(*) AS n FROM tasks WHERE id = ANY($1::uuid[]) GROUP BY status",
        ids)}


async def test_the_lanes_meet_and_take_each_covered_row_once(
        settings: Settings, db: Db, redis: aioredis.Redis) -> None:
    # given 1,500 covered queued rows in three instants, 30 covered paused ones, and around
    # them rows queued after the fence and rows of an actor the fence does not name
    ctx = await _ctx(settings, db, redis)
    covered = [i for ago in (300, 200, 100) for i in await _rows(db, 500, queue="lanes",
                                                                  seconds_ago=ago)]
    paused = await _rows(db, 30, queue="lanes", status="paused", seconds_ago=150)
    later = await _rows(db, 20, queue="lanes", seconds_ago=10)
    other = await _rows(db, 20, queue="lanes", actor="crunch", seconds_ago=300)
    fence = await _fence(db, queue="lanes", seconds_ago=60)
    # when the sweeper runs with small batches until it calls the fence swept
    sweeper = FenceSweeper(ctx, batch=50)
    for _ in range(50):
        await sweeper.tick()
        if await db.pool.fetchval("SELECT swept_at FROM cancel_fences WHERE id = $1", fence):
            break
    # then every covered row is cancelled, never started, counted once; nothing else moved
    assert await _statuses(db, covered + paused) == {"cancelled": 1530}
    assert await _statuses(db, later + other) == {"queued": 40}
    assert {r["outcome"] for r in await db.pool.fetch(
        "SELECT outcome FROM tasks WHERE id = ANY($1::uuid[])", covered)} == {"never_started"}
    assert await db.pool.fetchval("SELECT swept FROM cancel_fences WHERE id = $1", fence) == 1530
    assert ctx.metrics.registry.get_sample_value("taskreaper_fence_swept_tasks_total") == 1530


async def test_a_row_someone_holds_is_skipped_and_taken_by_a_later_walk(
        settings: Settings, db: Db, redis: aioredis.Redis) -> None:
    # given covered rows, one of them held by another transaction
    ctx = await _ctx(settings, db, redis)
    covered = await _rows(db, 40, queue="held", seconds_ago=300)
    fence = await _fence(db, queue="held", seconds_ago=60)
    sweeper = FenceSweeper(ctx)
    async with db.pool.acquire() as holder, holder.transaction():
        await holder.execute("SELECT 1 FROM tasks WHERE id = $1 FOR UPDATE", covered[17])
        # when the sweeper runs meanwhile, then it does not wait for that row
        started = time.monotonic()
        await sweeper.tick()
        assert time.monotonic() - started < 5
        assert await _statuses(db, covered) == {"cancelled": 39, "queued": 1}
        # and the fence stays open: a look over its range finds the row
        assert await db.pool.fetchval(
            "SELECT swept_at FROM cancel_fences WHERE id = $1", fence) is None
    # when the row is let go, then the next walk takes it and the fence is swept
    for _ in range(3):
        await sweeper.tick()
    assert await _statuses(db, covered) == {"cancelled": 40}
    assert await db.pool.fetchval(
        "SELECT swept_at FROM cancel_fences WHERE id = $1", fence) is not None


def _message(task: str, queued_at: float | None, *, stamps: dict[str, Any] | None = None,
             compact: bool = False) -> tuple[str, str]:
    """A task message as kombu writes it (or with JSON's compact separators): (id, text)."""
    message_id = str(uuid.uuid4())
    headers: dict[str, Any] = {"lang": "py", "task": task, "id": message_id, "shadow": None,
                               "timelimit": [None, None], "root_id": message_id,
                               "kwargsrepr": repr({"task_id": str(uuid.uuid4())}),
                               "stamps": stamps or {}}
    if queued_at is not None:
        headers[QUEUED_AT_HEADER] = queued_at
    body = {"body": "W1tdLCB7fV0=", "content-encoding": "utf-8",
            "content-type": "application/json", "headers": headers,
            "properties": {"correlation_id": message_id, "delivery_mode": 2,
                           "delivery_info": {"exchange": "", "routing_key": "purged"},
                           "priority": 0, "body_encoding": "base64",
                           "delivery_tag": str(uuid.uuid4())}}
    return message_id, json.dumps(body, separators=(",", ":") if compact else None)


async def test_the_purge_takes_covered_messages_and_keeps_the_rest_in_order(
        settings: Settings, redis: aioredis.Redis) -> None:
    # given a queue whose oldest end holds covered messages around ones that stay: another
    # actor's, one queued after the fence, one without our header, one whose stamps carry
    # a covered-looking header and a `properties` key, and a text that is no JSON at all
    keys = Keys(settings.key_prefix + "-purge")
    at = time.time()
    lookalike = {"x": {QUEUED_AT_HEADER: at - 60}, "properties": {"y": 1}}
    oldest_first = [
        ("covered", *_message("distill", at - 60)),
        ("kept", *_message("crunch", at - 60)),
        ("covered", *_message("distill", at - 50, compact=True)),
        ("kept", *_message("distill", at + 5)),
        ("covered", *_message("distill", at - 40, stamps=lookalike)),
        ("kept", *_message("distill", at + 5, stamps=lookalike)),
        ("kept", *_message("distill", None)),
        ("kept", "no-id", "not json"),
        ("covered", *_message("distill", at - 30)),
        ("covered", *_message("distill", at - 20)),
    ]
    key = queue_lists(keys, "purged")[0]
    await redis.lpush(key, *[text for _, _, text in oldest_first])
    await redis.zadd(keys.pending, {mid: 1.0 for _, mid, _ in oldest_first})
    # when the fence's purge walks the queue two messages at a time
    fence = {"id": 1, "queue": "purged", "queues": [], "actor": "distill", "at_epoch": at}
    purge = FencePurge.of(fence, keys)
    done = await purge.walk(redis.register_script(PURGE_SCRIPT), fence, keys.pending,
                            window=2, until=time.monotonic() + 30)
    # then what stays is there in its order, and only the covered ids left the pending set
    kept = [(mid, text) for kind, mid, text in oldest_first if kind == "kept"]
    assert done and purge.removed == 5
    assert await redis.lrange(key, 0, -1) == [text for _, text in reversed(kept)]
    assert set(await redis.zrange(keys.pending, 0, -1)) == {mid for mid, _ in kept}


async def test_a_claim_reads_ancestors_by_id_however_many_rows_just_stopped(
        settings: Settings, db: Db) -> None:
    # given a child under a running parent, and 20,000 rows the statistics last saw queued
    # that a sweep has since written cancelled
    bulk = await _rows(db, 20_000, queue="stats", seconds_ago=100)
    await db.pool.execute("ANALYZE tasks")
    await db.pool.execute("UPDATE tasks SET status = 'cancelled', finished_at = now() "
                          "WHERE id = ANY($1::uuid[])", bulk)
    parent = (await _rows(db, 1, queue="stats", status="running", seconds_ago=10))[0]
    child, message = uuid.uuid4(), uuid.uuid4()
    await db.pool.execute(
        "INSERT INTO tasks (id, actor, queue, kwargs, status, message_id, parent_id, root_id, "
        "depth) VALUES ($1, 'distill', 'stats', '{}', 'queued', $2, $3, $3, 1)",
        child, message, parent)
    # when the child is claimed
    async with db.pool.acquire() as conn, conn.transaction():
        plan = json.loads(await conn.fetchval(
            "EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) " + db.q["claim_task"], child, message,
            "w1@host", 4242, 30.0, 10.0))
        status = await conn.fetchval("SELECT status FROM tasks WHERE id = $1", child)
    # then it starts, reading a handful of pages, not the stopped rows
    top = plan[0]["Plan"]
    assert status == "running"
    assert top["Shared Hit Blocks"] + top["Shared Read Blocks"] < 500
