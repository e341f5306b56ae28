"""Pause, resume and preempt with real worker processes: what stopped for a pause or a
drain keeps its saved chunks, and the next attempt never does one of them again."""

from __future__ import annotations

import asyncio
import json
import re
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis

from shared.broker import make_celery
from shared.cancellation import Canceller
from shared.db import Db
from shared.keys import Keys
from shared.pausing import Pauser
from shared.settings import Settings
from tests.support import TERMINAL, row_where, submit_task

# A long run of real processes: `make test-slow` (CI runs it after `make test`).
pytestmark = pytest.mark.slow

BY = "test"


@pytest.fixture
async def pauser(settings: Settings, db: Db) -> AsyncIterator[Pauser]:
    client = aioredis.from_url(settings.redis_url)
    celery = make_celery(settings)
    yield Pauser(settings, db, client, celery)
    celery.close()
    await client.aclose()


async def chunk_rows(db: Db, task_id: uuid.UUID) -> dict[int, list[int]]:
    """chunk -> the attempts of its saved results (one row each)."""
    out: dict[int, list[int]] = {}
    for r in await db.pool.fetch(
            "SELECT chunk, attempt FROM task_results WHERE task_id = $1 AND ok ORDER BY chunk",
            task_id):
        out.setdefault(r["chunk"], []).append(r["attempt"])
    return out


def restored_at(logs: Sequence[Path], task_id: uuid.UUID, attempt: int) -> int:
    """restored_chunks of the task's start of `attempt`, per the logs of the workers."""
    for path in logs:
        for line in path.read_text(errors="replace").splitlines():
            if "task.started" not in line or str(task_id) not in line:
                continue
            if not re.search(rf"attempt[\"'=: ]+{attempt}\b", line):
                continue
            found = re.search(r"restored_chunks[\"'=: ]+(\d+)", line)
            assert found, line
            return int(found.group(1))
    raise AssertionError(f"attempt {attempt} of {task_id} never started per {logs}")


def assert_each_chunk_once(logs: Sequence[Path], task_id: uuid.UUID, done: Any,
                           chunks: dict[int, list[int]]) -> None:
    """Every chunk saved, and each attempt started from exactly the chunks saved before it.
    A result row is never rewritten once ok, so a chunk done again leaves no second row: only
    an attempt that restored fewer chunks than were saved shows it."""
    assert sorted(chunks) == list(range(done["total"]))
    for attempt in range(1, done["attempt"] + 1):
        saved_before = sum(1 for (first, *_) in chunks.values() if first < attempt)
        assert restored_at(logs, task_id, attempt) == saved_before, attempt


def status_is(*states: str) -> Callable[[Any], bool]:
    return lambda r: r["status"] in states


async def distill(settings: Settings, db: Db, chunks: int, chunk_seconds: float = 0.25) -> Any:
    return await submit_task(settings, db, "distill",
                             {"chunks": chunks, "chunk_seconds": chunk_seconds})


async def test_a_paused_distill_keeps_its_chunks_and_its_resume_does_each_once(
        settings: Settings, db: Db, start_worker: Any, pauser: Pauser,
        canceller: Canceller) -> None:
    # given a distill running on a real worker, two chunks saved
    worker = start_worker()
    row = await distill(settings, db, chunks=8)
    tid = row["id"]
    await row_where(db, tid, lambda r: r["done"] >= 2, 15, "two chunks saved")

    # when it is paused
    out = await pauser.pause(tid, by=BY, reason="maintenance")

    # then it stops at its next check, well within the grace period, its work kept
    assert out.changed and out.row["status"] == "pausing"
    paused = await row_where(db, tid, status_is("paused"), 2 * settings.cancel_grace, "paused")
    assert paused["outcome"] == "cooperative" and paused["attempt"] == 1
    assert paused["pause_by"] == BY and paused["pause_reason"] == "maintenance"
    saved = await chunk_rows(db, tid)
    assert saved and len(saved) == paused["done"] < 8
    # and it stays paused: nothing claims it, nothing reaps it
    await asyncio.sleep(1.0)
    assert (await db.get_task(tid))["status"] == "paused"

    # when it is resumed
    resumed = await canceller.resume(tid, by=BY)

    # then a second attempt finishes it, and no chunk was done twice
    assert resumed["status"] == "queued" and resumed["message_id"] != row["message_id"]
    assert resumed["resumes"] == 0  # a pause is no failure: the auto-resume budget is intact
    done = await row_where(db, tid, status_is(*TERMINAL), 20, "finished")
    assert done["status"] == "succeeded" and done["attempt"] == 2
    chunks = await chunk_rows(db, tid)
    assert_each_chunk_once([worker.log_path], tid, done, chunks)
    assert {c for c, (a,) in chunks.items() if a == 1} == set(saved)


async def test_a_stubborn_task_paused_is_killed_after_its_grace_and_ends_paused(
        settings: Settings, db: Db, start_worker: Any, pauser: Pauser,
        canceller: Canceller) -> None:
    # given a task that never looks at its token
    start_worker()
    row = await submit_task(settings, db, "stubborn", {"seconds": 60, "mode": "sleep"})
    tid = row["id"]
    await row_where(db, tid, status_is("running"), 15, "running")

    # when it is paused
    await pauser.pause(tid, by=BY)

    # then its grace runs out, its process is killed, and the row says paused, not cancelled
    paused = await row_where(db, tid, status_is(*TERMINAL, "paused"),
                             settings.cancel_grace + 5, "settled")
    assert (paused["status"], paused["outcome"]) == ("paused", "killed")

    # and it can be resumed: a new attempt runs
    await canceller.resume(tid, by=BY)
    again = await row_where(db, tid, lambda r: r["status"] == "running" and r["attempt"] == 2,
                            15, "running again")
    assert again["worker"]
    await canceller.cancel(tid, by=BY, force=True)


async def test_pause_all_holds_running_queued_and_scheduled_tasks_through_a_worker_restart(
        settings: Settings, db: Db, start_worker: Any, pauser: Pauser) -> None:
    # given two distills running (the pool is full), two queued behind them, one scheduled
    worker = start_worker(concurrency=2)
    running = [await distill(settings, db, chunks=6) for _ in range(2)]
    for r in running:
        await row_where(db, r["id"], lambda x: x["done"] >= 1, 15, "running, a chunk saved")
    queued = [await distill(settings, db, chunks=3, chunk_seconds=0.05) for _ in range(2)]
    celery = make_celery(settings)
    try:
        from shared.submit import submit
        scheduled = await submit(db, celery, actor="distill",
                                 kwargs={"chunks": 3, "chunk_seconds": 0.05}, countdown=2.0)
    finally:
        celery.close()
    tasks = [*running, *queued, scheduled]

    # when everything is paused
    out = await pauser.pause_all(by=BY, reason="maintenance")

    # then the queued and scheduled ones at once, the running ones once they saved and stopped
    assert out.paused == 3 and sorted(out.pausing) == sorted(r["id"] for r in running)
    for t in tasks:
        await row_where(db, t["id"], status_is("paused"), 2 * settings.cancel_grace, "paused")
    before = {t["id"]: await chunk_rows(db, t["id"]) for t in tasks}
    audit = await db.pool.fetchrow("SELECT * FROM cancel_audit WHERE id = $1", out.audit_id)
    assert audit["scope"]["action"] == "pause" and audit["scope"]["paused"] == 3

    # when every worker restarts while they are paused, and the schedule comes due
    worker.stop()
    second = start_worker(concurrency=2)
    await asyncio.sleep(2.5)

    # then nothing ran
    for t in tasks:
        now = await db.get_task(t["id"])
        assert now["status"] == "paused" and await chunk_rows(db, t["id"]) == before[t["id"]]

    # when everything is resumed
    resumed = await pauser.resume_all(by=BY)

    # then every task completes, and every chunk was done exactly once
    assert resumed.resumed == 5
    for t in tasks:
        done = await row_where(db, t["id"], status_is(*TERMINAL), 30, "finished")
        assert done["status"] == "succeeded", done["error"]
        chunks = await chunk_rows(db, t["id"])
        assert_each_chunk_once([worker.log_path, second.log_path], t["id"], done, chunks)
        # what was saved before the pause stays the first attempt's
        assert all(chunks[c] == a for c, a in before[t["id"]].items())


async def test_a_task_stopped_for_shutdown_is_preempted_and_goes_on_from_its_checkpoint(
        settings: Settings, db: Db, redis: aioredis.Redis, start_worker: Any) -> None:
    # given a distill running, two chunks saved
    keys = Keys(settings.key_prefix)
    worker = start_worker()
    row = await distill(settings, db, chunks=8)
    tid = row["id"]
    first = await row_where(db, tid, lambda r: r["done"] >= 2, 15, "two chunks saved")
    events = redis.pubsub(ignore_subscribe_messages=True)
    await events.subscribe(keys.events_channel)

    # when its token is set with reason `shutdown` (what a drain does), nothing in the row
    await redis.publish(keys.task_cancel_channel(str(tid)),
                        json.dumps({"ids": [str(tid)], "reason": "shutdown"}))

    # then the row goes back to queued under a fresh message, and says why
    kinds: list[dict[str, Any]] = []
    async def preempted() -> bool:
        while (m := await events.get_message(timeout=0.05)) is not None:
            kinds.append(json.loads(m["data"]))
        return any(k["type"] == "task.preempted" and k["task_id"] == str(tid) for k in kinds)
    for _ in range(100):
        if await preempted():
            break
    else:
        raise AssertionError(f"no task.preempted event: {kinds}")
    await events.aclose()
    # and a new attempt finishes it from the checkpoint: each chunk once
    done = await row_where(db, tid, status_is(*TERMINAL), 20, "finished")
    assert done["status"] == "succeeded" and done["attempt"] == 2
    assert done["message_id"] != first["message_id"] and done["resumes"] == 0
    chunks = await chunk_rows(db, tid)
    assert_each_chunk_once([worker.log_path], tid, done, chunks)
    assert [a for a in chunks.values() if a == [1]]


async def test_a_paused_task_holding_its_gil_is_killed_by_the_reaper_and_ends_paused(
        settings: Settings, db: Db, start_worker: Any, start_reaper: Any,
        pauser: Pauser) -> None:
    # given a task stuck in C code that holds its GIL: its own watchdog cannot run, and no
    # guardian on its worker
    start_worker(settings.with_(guardian=False))
    start_reaper()
    row = await submit_task(settings, db, "stubborn", {"seconds": 60, "mode": "gil"})
    tid = row["id"]
    await row_where(db, tid, status_is("running"), 15, "running")

    # when it is paused
    await pauser.pause(tid, by=BY)

    # then the reaper's kill step ends it after the deadline, paused and not cancelled
    paused = await row_where(db, tid, status_is(*TERMINAL, "paused"),
                             settings.cancel_grace + settings.kill_margin + 8, "settled")
    assert paused["status"] == "paused" and paused["outcome"] in ("killed", "gone")


async def test_a_pause_whose_event_was_lost_is_seen_by_the_heartbeats_poll(
        settings: Settings, db: Db, start_worker: Any) -> None:
    # given a distill running
    start_worker()
    row = await distill(settings, db, chunks=20)
    tid = row["id"]
    await row_where(db, tid, lambda r: r["done"] >= 1, 15, "a chunk saved")

    # when the row is paused in the DB alone, as if the Redis event never arrived
    changed = await db.pause_task(tid, reason=None, by=BY, grace=30.0)
    assert changed["status"] == "pausing"

    # then the heartbeat's read of the row stops it, long before its grace ends
    paused = await row_where(db, tid, status_is("paused"), 5, "paused")
    assert paused["outcome"] == "cooperative"


async def test_the_reaper_leaves_paused_and_pausing_rows_alone(
        settings: Settings, db: Db, start_reaper: Any, canceller: Canceller) -> None:
    # given rows whose messages are in no queue (never published), queued an hour ago and
    # silent as long: one still queued (the lost-message rule's), one paused, and one pausing
    # with its deadline far off but no heartbeat for an hour (its execution is gone)
    ids = {name: uuid.uuid4() for name in ("queued", "paused", "pausing")}
    for tid in ids.values():
        await db.insert_task(tid, "distill", "default", {"chunks": 2}, uuid.uuid4(), None)
    await db.pool.execute("UPDATE tasks SET enqueued_at = now() - interval '1 hour', "
                          "queued_at = now() - interval '1 hour', requeues = 1 "
                          "WHERE id = ANY($1::uuid[])", list(ids.values()))
    await db.pause_task(ids["paused"], reason=None, by=BY, grace=1.0)
    await db.pool.execute(
        "UPDATE tasks SET status = 'running', attempt = 1, worker = 'gone@nowhere', "
        "started_at = now() - interval '1 hour' WHERE id = $1", ids["pausing"])
    await db.pause_task(ids["pausing"], reason=None, by=BY, grace=3600.0)

    # when the reaper runs its rules and its broker scan
    start_reaper(settings.with_(lost_message_after=1.0, orphan_scan_interval=0.5))

    # then the queued row is given up as lost, the pausing one (nothing runs it) ends paused
    await row_where(db, ids["queued"], status_is("lost"), 20, "the stranded queued row lost")
    gone = await row_where(db, ids["pausing"], status_is(*TERMINAL, "paused"), 20, "settled")
    assert (gone["status"], gone["outcome"]) == ("paused", "gone")
    # and both stay paused, neither lost nor swept, and resumable
    await asyncio.sleep(1.5)
    for name in ("paused", "pausing"):
        row = await db.get_task(ids[name])
        assert row["status"] == "paused", name
    assert (await canceller.resume(ids["paused"], by=BY))["status"] == "queued"


async def test_a_paused_task_holding_its_gil_is_killed_by_its_workers_guardian(
        settings: Settings, db: Db, start_worker: Any, pauser: Pauser,
        canceller: Canceller) -> None:
    # given a task stuck in C code that holds its GIL, on a worker with a guardian, no reaper
    start_worker(settings.with_(guardian=True))
    row = await submit_task(settings, db, "stubborn", {"seconds": 60, "mode": "gil"})
    tid = row["id"]
    await row_where(db, tid, status_is("running"), 15, "running")

    # when it is paused
    await pauser.pause(tid, by=BY)

    # then the guardian kills it at its deadline, as it would a cancel: it ends paused
    paused = await row_where(db, tid, status_is(*TERMINAL, "paused"),
                             settings.cancel_grace + 5, "settled")
    assert (paused["status"], paused["outcome"]) == ("paused", "killed")


async def test_a_task_resumed_while_it_stops_for_a_pause_is_queued_again_once_stopped(
        settings: Settings, db: Db, start_worker: Any, canceller: Canceller) -> None:
    # given a distill running, a chunk saved, paused in the DB alone (its heartbeat's poll
    # sees it, not at once)
    worker = start_worker()
    row = await distill(settings, db, chunks=6)
    tid = row["id"]
    await row_where(db, tid, lambda r: r["done"] >= 1, 15, "a chunk saved")
    assert (await db.pause_task(tid, reason=None, by=BY, grace=30.0))["status"] == "pausing"

    # when it is resumed while still pausing
    pending = await canceller.resume(tid, by=BY)

    # then the resume is taken (no conflict), and once stopped it goes on under a fresh
    # message: a second attempt finishes it from its checkpoint, each chunk once
    assert pending["status"] == "pausing" and pending["resume_requested_at"] is not None
    done = await row_where(db, tid, status_is(*TERMINAL), 30, "finished")
    assert (done["status"], done["attempt"]) == ("succeeded", 2), dict(done)
    assert done["message_id"] != row["message_id"] and done["resumes"] == 0
    assert done["pause_requested_at"] is None and done["resume_requested_at"] is None
    assert_each_chunk_once([worker.log_path], tid, done, await chunk_rows(db, tid))


async def test_a_stubborn_task_resumed_while_pausing_is_queued_again_after_its_kill(
        settings: Settings, db: Db, start_worker: Any, pauser: Pauser,
        canceller: Canceller) -> None:
    # given a task holding its GIL, on a worker with a guardian, pausing
    start_worker(settings.with_(guardian=True))
    row = await submit_task(settings, db, "stubborn", {"seconds": 60, "mode": "gil"})
    tid = row["id"]
    await row_where(db, tid, status_is("running"), 15, "running")
    await pauser.pause(tid, by=BY)

    # when it is resumed before its grace runs out
    assert (await canceller.resume(tid, by=BY))["status"] == "pausing"

    # then the guardian's kill queues it again under a fresh message, that a worker takes
    again = await row_where(db, tid, lambda r: r["attempt"] == 2 or r["status"] in TERMINAL,
                            settings.cancel_grace + 15, "a second attempt")
    assert again["status"] == "running" and again["message_id"] != row["message_id"]
    await canceller.cancel(tid, by=BY, force=True)
