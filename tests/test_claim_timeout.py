"""A claim the DB answers too late must not leave a `running` row with nothing behind it."""

from __future__ import annotations

import asyncio

import pytest

from shared.cancellation import Canceller
from shared.db import Db
from shared.settings import Settings
from shared.submit import submit
from tests.support import TERMINAL, row_where

pytestmark = pytest.mark.slow

# Longer than any wait of a worker for its claim.
HOLD = 17.0


async def test_a_claim_held_up_past_its_deadline_runs_the_task_later(
        settings: Settings, db: Db, canceller: Canceller, start_worker, start_reaper) -> None:
    # given a queued task whose row a slow transaction holds locked
    from services.worker.app import load_actors, publish_catalogue

    # (with the default lease: a redelivery may not take over the row the late claim took)
    s = settings.with_(claim_timeout=2.0, heartbeat_timeout=30.0)
    await publish_catalogue(s, load_actors(s))  # what a starting worker does
    start_reaper(s)
    row = await submit(db, canceller.celery, actor="distill",
                       kwargs={"chunks": 2, "chunk_seconds": 0.05})
    conn = await db.pool.acquire()
    tx = conn.transaction()
    await tx.start()
    await conn.execute("SELECT 1 FROM tasks WHERE id = $1 FOR UPDATE", row["id"])
    try:
        # when a worker tries to claim it and the lock is held far past the claim's deadline
        start_worker(s)
        await asyncio.sleep(HOLD)
    finally:
        await tx.rollback()
        await db.pool.release(conn)
    # then the task still runs to its end: the late claim did not take it for nothing
    final = await row_where(db, row["id"], lambda r: r["status"] in TERMINAL, 30, "terminal")
    assert (final["status"], final["done"]) == ("succeeded", 2), dict(final)
