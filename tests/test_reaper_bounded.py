"""The reaper's periodic work stays bounded: revokes since leadership only, a page of the
lost-message walk per pass, audit and fence retention. Real PostgreSQL and Redis; the
Celery side is a recording stand-in (these rules' logic is what is under test)."""

from __future__ import annotations

import time
import uuid
from typing import Any

import redis.asyncio as aioredis

from services.reaper import broker_scan
from services.reaper.broker_scan import BrokerScan
from services.reaper.context import ReaperContext
from services.reaper.executor import CancelExecutor
from services.reaper.leader import LeaderLock
from services.reaper.metrics import ReaperMetrics
from services.reaper.reconcile import Pass, Retention
from shared.db import Db
from shared.keys import Keys
from shared.settings import Settings


class RecordingCelery:
    """Stands in for CeleryOps: records what would be broadcast."""

    def __init__(self) -> None:
        self.revoked: list[list[str]] = []
        self.celery = None

    async def revoke(self, message_ids: list[str]) -> None:
        self.revoked.append(list(message_ids))

    async def active(self, **_: Any) -> dict[str, list[dict[str, Any]]]:
        return {}

    async def reserved_and_scheduled(self, **_: Any) -> dict[str, list[dict[str, Any]]]:
        return {}


async def _ctx(settings: Settings, db: Db, redis: aioredis.Redis) -> ReaperContext:
    keys = Keys(settings.key_prefix)
    leader = LeaderLock(redis, keys.leader + uuid.uuid4().hex, settings.leader_ttl)
    assert await leader.acquire_or_renew()
    return ReaperContext(settings=settings, db=db, redis=redis, celery=RecordingCelery(),  # type: ignore[arg-type]
                         keys=keys, leader=leader, metrics=ReaperMetrics())


async def test_a_new_leader_revokes_only_what_was_cancelled_around_its_takeover(
        settings: Settings, db: Db, redis: aioredis.Redis) -> None:
    # given cancels recorded ten minutes ago (well within the visibility timeout), and one
    # a moment ago
    ctx = await _ctx(settings, db, redis)
    keys = ctx.keys
    now = time.time()
    await redis.zadd(keys.cancelled, {f"old-{i}": now - 600 for i in range(50)})
    await redis.zadd(keys.cancelled, {"fresh": now - 0.5})
    # when a replica becomes leader and runs its first tick
    executor = CancelExecutor(ctx)
    await executor.tick()
    # then it re-sends only the recent one, not every revoke since it started
    assert ctx.celery.revoked == [["fresh"]]  # type: ignore[attr-defined]
    # and later cancels go out on the next tick, once
    await redis.zadd(keys.cancelled, {"later": time.time()})
    await executor.tick()
    await executor.tick()
    assert ctx.celery.revoked == [["fresh"], ["later"]]  # type: ignore[attr-defined]


async def test_the_lost_message_walk_reads_a_page_per_pass_and_finds_the_lost_one(
        settings: Settings, db: Db, redis: aioredis.Redis, monkeypatch) -> None:
    # given 30 rows queued for long, all of whose messages wait in the broker but one
    ctx = await _ctx(settings.with_(lost_message_after=1.0), db, redis)
    monkeypatch.setattr(broker_scan, "LOST_PAGE", 10)
    published: list[Any] = []

    async def fake_publish(*args: Any, **kwargs: Any) -> None:
        published.append(args)

    monkeypatch.setattr(broker_scan, "publish", fake_publish)
    ids = []
    for i in range(30):
        tid, mid = uuid.uuid4(), uuid.uuid4()
        await db.insert_task(tid, "distill", "nowhere", {}, mid, None)
        if i != 17:
            await redis.zadd(ctx.keys.pending, {str(mid): time.time()})
        ids.append(tid)
    await db.pool.execute("UPDATE tasks SET enqueued_at = now() - interval '1 hour' "
                          "WHERE id = ANY($1::uuid[])", ids)
    scan = BrokerScan(ctx)
    # when the walk runs pass after pass
    found = []
    for _ in range(3):
        p = Pass()
        found.append(await scan._lost_messages(ctx, p))
    # then each pass looked at one page, and the whole walk found exactly the lost one,
    # which got a new message
    assert sorted(found) == [0, 0, 1]
    assert [a[2] for a in published] == [ids[17]]
    assert (await db.get_task(ids[17]))["requeues"] == 1


async def test_audit_rows_and_settled_fences_leave_after_the_retention_period(
        settings: Settings, db: Db, redis: aioredis.Redis) -> None:
    # given audit rows and a settled fence from long ago, and recent ones
    ctx = await _ctx(settings.with_(history_retention_days=7), db, redis)
    await db.pool.execute(
        "INSERT INTO cancel_audit (at, by, scope, forced, cancelled, cancelling) "
        "SELECT now() - interval '30 days', 'old', '{}', false, 0, 0 FROM generate_series(1, 5)")
    await db.pool.execute(
        "INSERT INTO cancel_audit (by, scope, forced, cancelled, cancelling) "
        "VALUES ('recent', '{}', false, 0, 0)")
    await db.pool.execute(
        "INSERT INTO cancel_fences (at, by, forced, swept_at, purged_at) VALUES "
        "(now() - interval '30 days', 'old', false, now() - interval '30 days', now()),"
        "(now(), 'recent', false, now(), now())")
    # when the retention rule runs
    await Retention().run(ctx, Pass())
    # then only the recent ones are left
    assert {r["by"] for r in await db.pool.fetch("SELECT by FROM cancel_audit")} >= {"recent"}
    assert "old" not in {r["by"] for r in await db.pool.fetch("SELECT by FROM cancel_audit")}
    assert [r["by"] for r in await db.pool.fetch("SELECT by FROM cancel_fences")] == ["recent"]


async def test_a_heartbeat_refreshes_only_the_expiry_and_restores_a_lost_entry(
        settings: Settings, redis: aioredis.Redis) -> None:
    from shared.registry import Entry, live_executions, refresh

    keys = Keys(settings.key_prefix)
    info = Entry(task_id=str(uuid.uuid4()), attempt=1, message_id="m", node="w@a", host="a",
                 pid=10, pid_started=1.0, started_at=2.0)
    # given an execution that registered on its first beat
    await refresh(redis, keys, info, 30)
    first = (await live_executions(redis, keys))[info.task_id]
    # when it beats again: the expiry moves on, the details are not written again
    await redis.hset(keys.execution_info, info.task_id, '{"marker": true}')
    await refresh(redis, keys, info, 60)
    assert await redis.hget(keys.execution_info, info.task_id) == '{"marker": true}'
    assert await redis.zscore(keys.executions, info.task_id) > first.expires
    # and when Redis lost the entry, the next beat writes it whole again
    await redis.delete(keys.executions, keys.execution_info)
    await refresh(redis, keys, info, 30)
    again = (await live_executions(redis, keys))[info.task_id]
    assert (again.node, again.pid, again.attempt) == ("w@a", 10, 1)
