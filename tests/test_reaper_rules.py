"""Reconcile rules and fail-over against real workers and reaper replicas."""

from __future__ import annotations

import asyncio
import time
import uuid

import psutil
import pytest
import redis.asyncio as aioredis

from shared.broker import make_celery
from shared.cancellation import Canceller
from shared.db import Db
from shared.keys import Keys
from shared.settings import Settings
from shared.states import TERMINAL, Outcome, TaskStatus
from shared.submit import submit
from tests.support import row_where, wait_for, wait_gone


@pytest.fixture(scope="module")
def settings(settings: Settings) -> Settings:
    return settings.with_(actor_modules="services.worker.actors,tests.actors",
                          orphan_scan_interval=0.5)






async def test_killed_execution_of_an_auto_resume_actor_completes_each_chunk_once(
        settings: Settings, db: Db, canceller: Canceller, start_worker, start_reaper) -> None:
    # given an actor allowed two automatic resumes, running, with some chunks saved
    start_worker()
    start_reaper()
    row = await submit(db, canceller.celery, actor="resilient",
                       kwargs={"chunks": 30, "chunk_seconds": 0.1})
    running = await row_where(
        db, row["id"], lambda r: r["status"] == TaskStatus.RUNNING and r["done"] >= 5, 20,
        "five chunks done")
    # when its pool process is killed
    psutil.Process(running["pid"]).kill()
    # then a new attempt continues from the checkpoint and completes
    final = await row_where(db, row["id"], lambda r: r["status"] in TERMINAL, 40, "terminal")
    assert final["status"] == TaskStatus.SUCCEEDED and final["attempt"] == 2, dict(final)
    results = await db.list_results(row["id"])
    assert [r["chunk"] for r in results] == list(range(30))
    assert {r["attempt"] for r in results} == {1, 2}


async def test_killing_the_leader_mid_escalation_hands_it_to_the_other_replica(
        settings: Settings, db: Db, canceller: Canceller, start_worker, start_reaper,
        redis: aioredis.Redis) -> None:
    # given two reaper replicas and a task stuck holding its GIL, on a worker without
    # a guardian, so that only a reaper can end it
    start_worker(settings.with_(guardian=False))
    first = start_reaper()
    await asyncio.sleep(1.0)
    second = start_reaper()
    keys = Keys(settings.key_prefix)
    leader = await wait_for(lambda: redis.get(keys.leader), timeout=10, what="a leader")
    row = await submit(db, canceller.celery, actor="stubborn",
                       kwargs={"seconds": 120, "mode": "gil"})
    running = await row_where(db, row["id"], lambda r: r["status"] == TaskStatus.RUNNING, 20,
                              "running")
    # when it is cancelled and the leading reaper is killed before the deadline
    await canceller.cancel(row["id"], by="test")
    replicas = {f"{settings.hostname}:{p.pid}": p for p in (first, second)}
    replicas[leader].kill()
    # then the other replica takes over and kills the stuck process; the row is settled
    bound = settings.cancel_grace + settings.kill_margin + settings.leader_ttl + 3.0
    assert await asyncio.to_thread(wait_gone, running["pid"], bound)
    final = await row_where(db, row["id"], lambda r: r["status"] in TERMINAL, 5, "terminal")
    assert (final["status"], final["outcome"]) == (TaskStatus.CANCELLED, Outcome.KILLED)
    assert await redis.get(keys.leader) != leader


async def test_row_made_terminal_by_hand_is_stopped_within_one_pass(
        settings: Settings, db: Db, canceller: Canceller, start_worker, start_reaper) -> None:
    # given an uncooperative task running, and a reaper
    start_worker()
    start_reaper()
    row = await submit(db, canceller.celery, actor="stubborn", kwargs={"seconds": 120})
    running = await row_where(db, row["id"], lambda r: r["status"] == TaskStatus.RUNNING, 20,
                              "running")
    await asyncio.sleep(0.5)
    # when someone marks it failed by hand
    await db.pool.execute("UPDATE tasks SET status='failed', finished_at=now() WHERE id=$1",
                          row["id"])
    t0 = time.monotonic()
    # then its process is gone within a pass, sooner than its own watchdog would act
    assert await asyncio.to_thread(wait_gone, running["pid"], 10)
    took = time.monotonic() - t0
    assert took < settings.reconcile_interval + 1.0 < settings.cancel_grace, f"{took:.2f}s"
    assert (await db.get_task(row["id"]))["status"] == TaskStatus.FAILED


async def test_a_scheduled_message_without_a_row_is_revoked_within_one_scan(
        settings: Settings, db: Db, start_worker, start_reaper) -> None:
    # given a worker holding a scheduled Celery message that has no row
    start_worker()
    celery = make_celery(settings)
    orphan = str(uuid.uuid4())
    try:
        celery.send_task("distill", kwargs={"task_id": str(uuid.uuid4())}, task_id=orphan,
                         countdown=60)

        def scheduled() -> bool:
            found = celery.control.inspect(timeout=0.5).scheduled() or {}
            return any(i["request"]["id"] == orphan for v in found.values() for i in v)

        assert await wait_for(lambda: asyncio.to_thread(scheduled), timeout=10,
                              what="message scheduled in the worker")
        # when the reaper runs
        start_reaper()

        # then the message is revoked in the worker
        def revoked() -> bool:
            found = celery.control.inspect(timeout=0.5).revoked() or {}
            return any(orphan in v for v in found.values())

        await wait_for(lambda: asyncio.to_thread(revoked), timeout=5,
                       what="orphan revoked")
    finally:
        celery.close()


async def test_a_queued_row_whose_message_vanished_is_requeued_once_then_lost(
        settings: Settings, db: Db, start_worker, start_reaper) -> None:
    # given two queued rows whose messages are in no queue, no unacked set and no worker
    # (as after a Redis restart without persistence); one was already re-enqueued once
    start_worker()
    fresh, again = uuid.uuid4(), uuid.uuid4()
    for tid in (fresh, again):
        await db.insert_task(tid, "distill", "default", {"chunks": 2, "chunk_seconds": 0.01},
                             uuid.uuid4(), None)
    await db.pool.execute("UPDATE tasks SET enqueued_at = now() - interval '1 hour', "
                          "requeues = CASE WHEN id = $2 THEN 1 ELSE 0 END "
                          "WHERE id = ANY($1::uuid[])", [fresh, again], again)
    # when the reaper scans
    start_reaper(settings.with_(lost_message_after=1.0))
    # then the first is enqueued again and runs; the second is given up as lost
    done = await row_where(db, fresh, lambda r: r["status"] in TERMINAL, 20, "requeued task done")
    assert (done["status"], done["requeues"], done["attempt"]) == (TaskStatus.SUCCEEDED, 1, 1)
    gone = await row_where(db, again, lambda r: r["status"] in TERMINAL, 20, "stranded task lost")
    assert (gone["status"], gone["attempt"]) == (TaskStatus.LOST, 0)
