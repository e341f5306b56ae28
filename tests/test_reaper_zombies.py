"""The reaper's zombie rule against real processes: a killed execution becomes `lost`."""

from __future__ import annotations

import time

import psutil

from shared.db import Db
from shared.settings import Settings
from tests.support import submit_task, wait_for


async def test_kill_9_of_the_pool_process_makes_the_row_lost(
        settings: Settings, db: Db, start_worker, start_reaper) -> None:
    # given a distill running in a pool process, and a reaper
    worker = start_worker()
    start_reaper()
    row = await submit_task(settings, db, "distill", {"chunks": 200, "chunk_seconds": 0.1})

    async def beating():
        r = await db.get_task(row["id"])
        return r if r["status"] == "running" and r["heartbeat_at"] and r["done"] >= 2 else None

    running = await wait_for(beating, timeout=20, what="task to run and beat")
    pool_pids = {c.pid for c in worker.children()}
    assert running["pid"] in pool_pids
    # when its pool process is killed with SIGKILL
    psutil.Process(running["pid"]).kill()
    killed_at = time.monotonic()

    async def lost():
        r = await db.get_task(row["id"])
        return r if r["status"] == "lost" else None

    # then the row becomes lost within the heartbeat timeout plus one reconcile interval
    bound = settings.heartbeat_timeout + settings.reconcile_interval + 2.0  # slack for a busy box
    final = await wait_for(lost, timeout=bound + 5, what="row to become lost")
    took = time.monotonic() - killed_at
    assert took <= bound, f"lost after {took:.1f}s, bound {bound:.1f}s"
    assert final["outcome"] == "gone" and final["finished_at"] is not None
    # the chunks finished before the kill stay saved
    results = await db.list_results(row["id"])
    assert len(results) >= 2 and {r["attempt"] for r in results} == {1}
    assert [r["chunk"] for r in results] == list(range(len(results)))


async def test_row_that_never_sent_a_heartbeat_is_lost(
        settings: Settings, db: Db, start_reaper) -> None:
    # given a row claimed as running by a process that died before its first heartbeat
    import uuid

    tid = uuid.uuid4()
    await db.insert_task(tid, "distill", "default", {}, uuid.uuid4(), None)
    await db.pool.execute("UPDATE tasks SET status='running', attempt=1, "
                          "started_at=now() - interval '1 hour' WHERE id=$1", tid)
    # when the reaper runs
    start_reaper()

    async def lost():
        r = await db.get_task(tid)
        return r if r["status"] == "lost" else None

    # then it is lost within a couple of passes
    await wait_for(lost, timeout=settings.reconcile_interval * 4 + 5, what="row to become lost")
