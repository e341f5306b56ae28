"""Edges of the cancel ladder: retries, queues chosen at submit, refused writes, and a
cancel-all racing a claim."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from shared.cancellation import Canceller
from shared.db import Db
from shared.settings import Settings
from shared.submit import submit
from tests.support import TERMINAL, row_where, wait_gone

# The database is reached through PgBouncer in transaction pooling mode, as deployed.
pytestmark = pytest.mark.pgbouncer


@pytest.fixture(scope="module")
def settings(settings: Settings) -> Settings:
    return settings.with_(actor_modules="services.worker.actors,tests.actors",
                          worker_queues="urgent")


async def test_a_task_that_fails_while_cancelled_is_not_retried(
        db: Db, canceller: Canceller, start_worker) -> None:
    # given a running actor allowed three retries
    start_worker()
    row = await submit(db, canceller.celery, actor="fragile", kwargs={"seconds": 30})
    await row_where(db, row["id"], lambda r: r["status"] == "running", 20, "running")
    # when it is cancelled and fails on its way out
    await canceller.cancel(row["id"], by="test")
    final = await row_where(db, row["id"], lambda r: r["status"] in TERMINAL, 5, "terminal")
    # then it ends cancelled and no new attempt ever starts
    assert final["status"] == "cancelled"
    await asyncio.sleep(3.0)  # longer than the first retry's backoff
    again = await db.get_task(row["id"])
    assert (again["status"], again["attempt"], again["resumes"]) == ("cancelled", 1, 0)


async def test_cancel_all_by_queue_follows_the_queue_chosen_at_submit(
        db: Db, canceller: Canceller, start_worker) -> None:
    # given a distill submitted to the `urgent` queue, running
    start_worker()
    row = await submit(db, canceller.celery, actor="distill", queue="urgent",
                       kwargs={"chunks": 30, "chunk_seconds": 0.1})
    await row_where(db, row["id"], lambda r: r["status"] == "running", 20, "running")
    # when everything in the actor's default queue is cancelled
    out = await canceller.cancel_all(by="test", queue="default")
    # then this task is not touched, and finishes
    assert row["id"] not in out.cancelling
    final = await row_where(db, row["id"], lambda r: r["status"] in TERMINAL, 20, "terminal")
    assert final["status"] == "succeeded" and final["cancel_requested_at"] is None
    # and a cancel-all of `urgent` does reach a task there
    other = await submit(db, canceller.celery, actor="distill", queue="urgent",
                         kwargs={"chunks": 300, "chunk_seconds": 0.1})
    await row_where(db, other["id"], lambda r: r["status"] == "running", 20, "running")
    out = await canceller.cancel_all(by="test", queue="urgent")
    assert out.cancelling == [other["id"]]
    done = await row_where(db, other["id"], lambda r: r["status"] in TERMINAL, 5, "terminal")
    assert (done["status"], done["outcome"]) == ("cancelled", "cooperative")


async def test_watchdog_kills_even_when_someone_else_already_ended_the_row(
        settings: Settings, db: Db, canceller: Canceller, start_worker) -> None:
    # given an uncooperative task and no reaper
    start_worker()
    row = await submit(db, canceller.celery, actor="stubborn", kwargs={"seconds": 120})
    running = await row_where(db, row["id"], lambda r: r["status"] == "running", 20, "running")
    # when another host's force-kill marks it cancelled and sends a forced cancel
    await db.pool.execute("UPDATE tasks SET status='cancelled', outcome='killed', "
                          "finished_at=now() WHERE id=$1", row["id"])
    t0 = time.monotonic()
    await canceller.announce({"ids": [str(row["id"])], "force": True, "reason": "force-kill"},
                             [row["message_id"]])
    # then its own watchdog ends the process once the forced window passes
    assert await asyncio.to_thread(wait_gone, running["pid"], settings.force_window + 5)
    assert time.monotonic() - t0 < settings.force_window + 1.5


async def _racing_a_claim(db: Db, call: Callable[[uuid.UUID], Awaitable[Any]]
                          ) -> tuple[uuid.UUID, Any]:
    """Runs `call` while a worker's claim of a queued task has updated the row but not yet
    committed, then commits the claim; returns the task id and what `call` returned."""
    tid, mid = uuid.uuid4(), uuid.uuid4()
    await db.insert_task(tid, "distill", "default", {}, mid, None)
    conn = await db.pool.acquire()
    try:
        tx = conn.transaction()
        await tx.start()
        assert (await conn.fetchrow(db.q["claim_task"], tid, mid, "w", 1, 30.0, 10.0))["attempt"] == 1
        pending = asyncio.create_task(call(tid))
        await asyncio.sleep(0.3)
        assert not pending.done()  # waiting on the claimed row
        await tx.commit()
        out = await pending
    finally:
        await db.pool.release(conn)
    return tid, out


async def test_cancel_all_sees_a_claim_that_commits_while_it_runs(
        settings: Settings, db: Db, canceller: Canceller) -> None:
    # given a queued task whose claim has updated the row but not yet committed
    # when a cancel-all starts meanwhile, and the claim commits
    tid, out = await _racing_a_claim(db, lambda tid: canceller.cancel_all(by="test"))
    # then the running task is marked cancelling, not missed
    assert out.cancelling == [tid] and out.cancelled == 0
    assert (await db.get_task(tid))["status"] == "cancelling"


async def test_a_result_that_cannot_be_stored_fails_its_task_and_nothing_else(
        db: Db, canceller: Canceller, start_worker) -> None:
    # given a worker with a single pool process
    start_worker(concurrency=1)
    # when a task saves a result the database cannot store
    bad = await submit(db, canceller.celery, actor="poisoned", kwargs={})
    final = await row_where(db, bad["id"], lambda r: r["status"] in TERMINAL, 20, "terminal")
    # then that task fails, saying why, with its good chunk kept
    assert final["status"] == "failed" and "not JSON serializable" in final["error"], dict(final)
    assert await db.saved_chunks(bad["id"]) == {0}
    # and the same process goes on to run, beat and save the next task normally
    good = await submit(db, canceller.celery, actor="distill",
                        kwargs={"chunks": 5, "chunk_seconds": 0.1})
    done = await row_where(db, good["id"], lambda r: r["status"] in TERMINAL, 20, "terminal")
    assert done["status"] == "succeeded" and done["heartbeat_at"] is not None
    assert await db.saved_chunks(good["id"]) == set(range(5))


async def test_cancel_of_one_task_sees_a_claim_that_commits_while_it_runs(
        db: Db, canceller: Canceller) -> None:
    # given a queued task whose claim has updated the row but not yet committed
    # when the task is cancelled meanwhile, and the claim commits
    tid, out = await _racing_a_claim(db, lambda tid: canceller.cancel(tid, by="test"))
    # then the cancel applies to the running task: cancelling with a deadline, audited once
    assert out.changed and out.row["status"] == "cancelling"
    row = await db.get_task(tid)
    assert (row["status"], row["attempt"]) == ("cancelling", 1) and row["cancel_deadline"]
    audits = [a for a in await db.list_audit(100) if tid in a["task_ids"]]
    assert [(a["cancelled"], a["cancelling"]) for a in audits] == [(0, 1)]
