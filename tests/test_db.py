"""Named queries with fencing and retention, against a real PostgreSQL."""

from __future__ import annotations

import uuid

from shared.db import Db
from shared.states import TaskStatus


async def _task(db: Db, status: str, *, finished_days_ago: float | None = None,
                attempt: int = 1) -> uuid.UUID:
    tid = uuid.uuid4()
    await db.insert_task(tid, "distill", "default", {}, uuid.uuid4(), None)
    await db.pool.execute(
        "UPDATE tasks SET status=$2, attempt=$3, started_at=now(), finished_at = CASE WHEN $4::float8 "
        "IS NULL THEN NULL ELSE now() - make_interval(days => $4::float8::int) END WHERE id=$1",
        tid, status, attempt, finished_days_ago)
    return tid


async def test_stale_attempt_cannot_write(db: Db) -> None:
    tid = await _task(db, "running", attempt=2)
    assert await db.heartbeat(tid, 1, done=1, failed=0, total=3, current=1,
                              eta_seconds=None) is None
    assert await db.save_result(tid, 1, 0, True, {"x": 1}) is False
    assert await db.finish_task(tid, 1, "succeeded") is None
    assert await db.save_result(tid, 2, 0, True, {"x": 1}) is True
    # a saved chunk is never overwritten, a failed one may be redone
    assert await db.save_result(tid, 2, 0, True, {"x": 2}) is False
    assert await db.save_result(tid, 2, 1, False, {"error": "timeout"}) is True
    assert await db.save_result(tid, 2, 1, True, {"x": 3}) is True
    assert await db.saved_chunks(tid) == {0, 1}
    assert (await db.get_task(tid))["status"] == "running"


async def test_claim_is_atomic_and_needs_the_current_message(db: Db) -> None:
    tid = uuid.uuid4()
    mid = uuid.uuid4()
    await db.insert_task(tid, "distill", "default", {}, mid, None)
    assert await db.claim_task(tid, uuid.uuid4(), "w", 1, 30) is None  # stale message
    first = await db.claim_task(tid, mid, "w", 1, 30)
    assert first is not None and first.attempt == 1
    assert await db.claim_task(tid, mid, "w", 2, 30) is None  # running, lease fresh
    # with its lease long expired, a redelivery may take over as the next attempt
    await db.pool.execute("UPDATE tasks SET heartbeat_at = now() - interval '1 hour' WHERE id=$1",
                          tid)
    assert (await db.claim_task(tid, mid, "w", 3, 30)).attempt == 2
    # an execution ends succeeded, failed or cancelled, never in another state
    for status in (TaskStatus.QUEUED, TaskStatus.LOST, TaskStatus.CANCELLING):
        assert await db.finish_task(tid, 2, status) is None
    assert (await db.get_task(tid))["status"] == "running"
    assert await db.finish_task(tid, 2, TaskStatus.SUCCEEDED) == "succeeded"


async def test_retention_prunes_only_old_finished_history(db: Db) -> None:
    old = await _task(db, "succeeded", finished_days_ago=40)
    recent = await _task(db, "cancelled", finished_days_ago=1)
    running = await _task(db, "running")
    assert await db.prune_history(30) >= 1
    assert await db.get_task(old) is None
    assert await db.get_task(recent) is not None and await db.get_task(running) is not None


async def test_counts_kept_by_triggers_match_a_full_count(db: Db) -> None:
    async def direct() -> dict[str, int]:
        rows = await db.pool.fetch("SELECT status, count(*) AS n FROM tasks GROUP BY status")
        out = {s: 0 for s in (await db.counts())}
        out.update({r["status"]: r["n"] for r in rows})
        return out

    # inserts, status changes of one and of many rows, a heartbeat, deletes
    ids = [await _task(db, "running") for _ in range(5)]
    ids += [await _task(db, "succeeded", finished_days_ago=40) for _ in range(3)]
    await db.pool.execute("UPDATE tasks SET status='cancelling' WHERE id = ANY($1::uuid[])",
                          ids[:2])
    await db.heartbeat(ids[2], 1, done=1, failed=0, total=2, current=1, eta_seconds=None)
    await db.pool.execute("UPDATE tasks SET status='lost' WHERE id = $1", ids[3])
    await db.prune_history(30)
    assert await db.counts() == await direct()
    assert (await db.counts())["cancelling"] >= 2
