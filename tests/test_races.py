"""Writers racing each other on PostgreSQL: no hot rows, no deadlocks, nothing missed.

These tests hold real row locks in open transactions to force the interleavings that a
busy system produces by chance.
"""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import asyncpg
import pytest

from shared.cancellation import Canceller
from shared.db import Db
from tests.fixtures_api import set_status


async def _row(db: Db, status: str = "queued", actor: str = "distill") -> uuid.UUID:
    """A task row moved to `status` the way a worker would, with no worker behind it."""
    tid, mid = uuid.uuid4(), uuid.uuid4()
    await db.insert_task(tid, actor, "default", {}, mid, None)
    if status != "queued":
        await set_status(db, tid, status, attempt=1, started_at=await db.pool.fetchval(
            "SELECT now()"), worker="w@nowhere", pid=1)
    return tid


async def _hold(db: Db, sql: str, *args: Any) -> tuple[asyncpg.Connection, Any]:
    """Runs one statement in a transaction left open: its locks stay held."""
    conn = await db.pool.acquire()
    tx = conn.transaction()
    await tx.start()
    await conn.execute(sql, *args)
    return conn, tx


async def _release(db: Db, held: tuple[asyncpg.Connection, Any], commit: bool = True) -> None:
    conn, tx = held
    await (tx.commit() if commit else tx.rollback())
    await db.pool.release(conn)


async def test_a_state_change_waits_for_no_other_task(db: Db) -> None:
    # given a transaction that moved one task from queued to running and has not committed
    a, b = await _row(db), await _row(db)
    held = await _hold(db, "UPDATE tasks SET status = 'running', attempt = 1 WHERE id = $1", a)
    try:
        # when another task makes the same move
        # then it does not wait for the first one (no row shared by every state change)
        await asyncio.wait_for(db.pool.execute(
            "UPDATE tasks SET status = 'running', attempt = 1 WHERE id = $1", b), 2.0)
        # and a finish and a submit go through as well
        await asyncio.wait_for(db.pool.execute(
            "UPDATE tasks SET status = 'succeeded', finished_at = now() WHERE id = $1", b), 2.0)
        await asyncio.wait_for(_row(db), 2.0)
    finally:
        await _release(db, held)
    counts = await db.counts()
    assert counts["running"] >= 1 and counts["succeeded"] >= 1


async def test_forced_cancel_all_and_a_task_ending_itself_do_not_deadlock(
        db: Db, canceller: Canceller) -> None:
    # given a task being cancelled, whose worker is recording its end in a transaction that
    # has locked the row and not yet written
    ending = await _row(db, "running")
    await canceller.cancel(ending, by="test")
    queued = [await _row(db) for _ in range(3)]
    conn, tx = await _hold(db, "SELECT 1 FROM tasks WHERE id = $1 FOR UPDATE", ending)
    # when a forced cancel-all runs meanwhile (it must hasten that very row)
    cancel_all = asyncio.create_task(canceller.cancel_all(by="test", force=True))
    await asyncio.sleep(0.5)
    committed = False
    try:
        # then the task's own end is written and committed: no deadlock kills it
        ended = await asyncio.wait_for(conn.fetchval(
            db.q["finish_task"], ending, 1, "cancelled", "cooperative", None, 0, 0, None), 10.0)
        await tx.commit()
        committed = True
    finally:
        if not committed:
            await tx.rollback()
        await db.pool.release(conn)
        if not cancel_all.done():
            await asyncio.wait_for(cancel_all, 10.0)
    assert ended == "cancelled"
    # and so does the cancel-all
    await asyncio.wait_for(cancel_all, 10.0)
    assert (await db.get_task(ending))["status"] == "cancelled"
    for tid in queued:
        assert not await db.claim_task(tid, (await db.get_task(tid))["message_id"], "w", 1, 30)


@pytest.mark.parametrize("held_status", ["queued", "running"])
async def test_a_requeue_racing_cancel_all_never_starts_again(
        db: Db, canceller: Canceller, held_status: str) -> None:
    # given a running task about to be requeued (a retry, an automatic resume), and
    # another task whose row a slow writer holds, so that cancel-all takes its time
    moving = await _row(db, "running")
    slow = await _row(db, held_status)
    held = await _hold(db, "SELECT 1 FROM tasks WHERE id = $1 FOR UPDATE", slow)
    cancel_all = asyncio.create_task(canceller.cancel_all(by="test"))
    await asyncio.sleep(0.3)
    # when the running task goes back to queued while cancel-all is under way
    new_message = uuid.uuid4()
    requeue = asyncio.create_task(db.requeue_execution(moving, 1, new_message))
    await asyncio.sleep(0.3)
    await _release(db, held)
    await asyncio.wait_for(asyncio.gather(cancel_all, requeue), 10.0)
    # then it never starts again: cancel-all covered it, whichever went first
    assert await db.claim_task(moving, new_message, "w@elsewhere", 2, 30) is None
    row = await db.get_task(moving)
    assert row["status"] in ("queued", "cancelling", "cancelled"), row["status"]
