"""One heartbeat statement per worker: the statement itself, and real workers whose pool
processes hand their beats to the main process. A cancel whose event never came still
lands within the poll interval, a process without a main process to take its beats writes
its own, and the steady state costs about one statement per worker and beat."""

from __future__ import annotations

import asyncio
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from shared.cancellation import Canceller
from shared.db import Db
from shared.db.beats import Beat
from shared.settings import Settings
from tests.support import TERMINAL, row_where, submit_task, wait_for

LONG = {"chunks": 10_000, "chunk_seconds": 60.0}  # running for minutes, no checkpoint meanwhile


async def _task(db: Db, status: str, attempt: int = 1) -> uuid.UUID:
    row = await db.pool.fetchrow(
        "INSERT INTO tasks (id, actor, queue, kwargs, status, message_id, attempt, started_at, "
        "cancel_reason, cancel_deadline) VALUES (gen_random_uuid(), 'distill', 'default', "
        "'{}'::jsonb, $1, gen_random_uuid(), $2, now(), "
        "CASE WHEN $1 = 'cancelling' THEN 'drill' END, "
        "CASE WHEN $1 = 'cancelling' THEN now() + interval '5 seconds' END) RETURNING id",
        status, attempt)
    return row["id"]


def _beat(task_id: uuid.UUID, attempt: int = 1, **fields: Any) -> Beat:
    values: dict[str, Any] = {"done": 3, "failed": 1, "total": 10, "current": 5,
                              "eta_seconds": 12.0, **fields}
    return Beat(task_id=task_id, attempt=attempt, **values)


# -- the statement ------------------------------------------------------------------------------

async def test_a_node_beat_writes_each_live_attempt_and_reads_back_every_state(db: Db) -> None:
    # given a running row, one being cancelled, a finished one, a row now of attempt 2,
    # and a running row that reports nothing (its process holds its GIL)
    running = await _task(db, "running")
    stopping = await _task(db, "cancelling")
    finished = await _task(db, "succeeded")
    newer = await _task(db, "running", attempt=2)
    silent = await _task(db, "running")

    # when one statement carries the beats of the four that reported
    states = {s.id: s for s in await db.node_heartbeat(
        [_beat(running, age=1.5, rss_bytes=1234, cpu_percent=12.5), _beat(stopping),
         _beat(finished), _beat(newer, attempt=1)], [silent])}

    # then the live attempts' beats are written, dated when their process reported them
    assert states[running].written and states[stopping].written
    row = await db.get_task(running)
    assert row is not None
    assert (row["done"], row["failed"], row["total"], row["current_chunk"]) == (3, 1, 10, 5)
    assert (row["rss_bytes"], row["cpu_percent"]) == (1234, 12.5)
    age = (datetime.now(UTC) - row["heartbeat_at"]).total_seconds()
    assert 1.4 <= age < 3.0, age
    # and the stop is read back with its reason and deadline
    assert states[stopping].stopping and states[stopping].cancel_reason == "drill"
    due_in = states[stopping].due_in
    assert due_in is not None and 0 < due_in <= 5, due_in
    # and the finished row and the stale attempt are fenced off, their state still read
    assert not states[finished].written and not states[finished].holds(1)
    assert not states[newer].written and not states[newer].holds(1)
    assert (await db.get_task(newer) or {})["heartbeat_at"] is None
    # and the silent execution's state is read without a beat written for it
    assert not states[silent].written and states[silent].holds(1)
    assert (await db.get_task(silent) or {})["heartbeat_at"] is None


async def test_a_node_beat_skips_a_row_another_transaction_holds_instead_of_waiting(
        db: Db) -> None:
    # given two running rows, one of them locked by another writer
    free, held = await _task(db, "running"), await _task(db, "running")
    async with db.transaction() as conn:
        await conn.execute("SELECT 1 FROM tasks WHERE id = $1 FOR UPDATE", held)
        # when the node beats
        started = time.perf_counter()
        states = {s.id: s for s in await db.node_heartbeat([_beat(free), _beat(held)])}
        took = time.perf_counter() - started
    # then it did not wait for the lock: the free row is written, the held one left
    assert took < 1.0, took
    assert states[free].written
    assert not states[held].written and states[held].holds(1)
    # and the next beat writes it
    again = {s.id: s for s in await db.node_heartbeat([_beat(held)])}
    assert again[held].written


async def test_an_older_report_never_moves_a_heartbeat_back(db: Db) -> None:
    # given a row its own process just beat
    task = await _task(db, "running")
    await db.heartbeat(task, 1, done=1, failed=0, total=10, current=2, eta_seconds=None)
    before = (await db.get_task(task) or {})["heartbeat_at"]
    # when the main process writes a report that is older
    await db.node_heartbeat([_beat(task, age=5.0)])
    # then the heartbeat keeps the later time
    assert (await db.get_task(task) or {})["heartbeat_at"] == before


# -- real workers ----------------------------------------------------------------------------

async def _heartbeat_at(db: Db, task_id: Any) -> datetime | None:
    row = await db.get_task(task_id)
    return None if row is None else row["heartbeat_at"]


async def _beating(db: Db, ids: list[Any], timeout: float = 30.0) -> None:
    for tid in ids:
        await row_where(db, tid, lambda r: r["status"] == "running" and r["heartbeat_at"]
                        is not None and r["total"] is not None, timeout, "running and beating")


def _worker_log(s: Settings) -> list[str]:
    return (Path(s.log_dir) / "celery_worker.log").read_text().splitlines()


async def _cancelled(canceller: Canceller, db: Db, ids: list[Any]) -> None:
    """Ends the test's long tasks, so that no worker of a later test inherits them."""
    for tid in ids:
        await canceller.cancel(tid, by="test")
    for tid in ids:
        await row_where(db, tid, lambda r: r["status"] in TERMINAL, 20, "ended")


async def test_a_cancel_whose_event_is_lost_lands_within_the_poll_interval(
        settings: Settings, db: Db, canceller: Canceller, start_worker) -> None:
    # given a worker polling every second, two long distills running on it
    s = settings.with_(heartbeat_interval=1.0, cancel_poll_interval=1.0)
    start_worker(s)
    ids = [(await submit_task(s, db, "distill", LONG))["id"] for _ in range(2)]
    await _beating(db, ids)
    # when one of them is cancelled in the DB alone: no event reaches the worker
    requested = await db.pool.fetchval(
        "UPDATE tasks SET status = 'cancelling', cancel_requested_at = clock_timestamp(), "
        "cancel_reason = 'lost event', cancel_by = 'test', cancel_forced = false, "
        "cancel_deadline = clock_timestamp() + interval '30 seconds' WHERE id = $1 "
        "RETURNING cancel_requested_at", ids[0])
    # then the beat's answer stops it cooperatively within the poll interval, plus the
    # statement and the task's own end (the cancel came right after a beat: the worst case)
    final = await row_where(db, ids[0], lambda r: r["status"] in TERMINAL, 10, "cancelled")
    assert final["status"] == "cancelled" and final["outcome"] == "cooperative", dict(final)
    took = (final["finished_at"] - requested).total_seconds()
    assert took <= s.cancel_poll_interval + 1.0, f"cancelled after {took:.2f}s"
    observed = [line for line in _worker_log(s) if str(ids[0]) in line
                and "task.cancel_observed" in line]
    assert observed and all('"via": "poll"' in line for line in observed), observed
    # and the other task runs on, still beating
    other = await db.get_task(ids[1])
    assert other is not None and other["status"] == "running"
    await _cancelled(canceller, db, ids[1:])


async def test_without_a_guardian_each_pool_process_writes_its_own_beats(
        settings: Settings, db: Db, canceller: Canceller, start_worker) -> None:
    # given a worker whose main process runs no guardian to take the beats
    start_worker(settings.with_(guardian=False))
    tid = (await submit_task(settings, db, "distill", {"chunks": 400, "chunk_seconds": 0.05}))["id"]
    await _beating(db, [tid])
    first = await _heartbeat_at(db, tid)
    # then its heartbeat moves on, carrying the progress
    await wait_for(lambda: _moved(db, tid, first), timeout=5, what="a later heartbeat")
    row = await db.get_task(tid)
    assert row is not None and row["done"] > 0
    await _cancelled(canceller, db, [tid])


async def _moved(db: Db, tid: Any, since: datetime | None) -> bool:
    now = await _heartbeat_at(db, tid)
    return now is not None and since is not None and now > since


async def _commits(db: Db) -> int:
    return int(await db.pool.fetchval(
        "SELECT xact_commit + xact_rollback FROM pg_stat_database "
        "WHERE datname = current_database()"))


async def test_the_steady_state_costs_one_statement_per_worker_beat(
        settings: Settings, db: Db, canceller: Canceller, start_worker) -> None:
    # given a worker of three pool processes, each running a task that saves nothing for a
    # minute, beating every half second
    s = settings.with_(heartbeat_interval=0.5, cancel_poll_interval=0.5)
    start_worker(s, concurrency=3)
    ids = [(await submit_task(s, db, "distill", LONG))["id"] for _ in range(3)]
    await _beating(db, ids)
    await asyncio.sleep(2.0)
    marks = {tid: await _heartbeat_at(db, tid) for tid in ids}
    # when the database's transactions are counted over a few seconds
    before, started = await _commits(db), time.monotonic()
    await asyncio.sleep(6.0)
    after, window = await _commits(db), time.monotonic() - started
    # then the worker used about one statement a beat for all three (2 a second), where
    # one per task and beat plus the guardian's poll was 8 (each backend reports its counts
    # within a second or so: a steady rate comes out the same at both ends)
    per_task_s = (after - before - 1) / (3 * window)
    assert 0.2 <= per_task_s <= 1.0, f"{per_task_s:.2f} statements per task-second"
    # and every task's heartbeat moved on meanwhile, its row still running
    for tid in ids:
        assert await _moved(db, tid, marks[tid]), tid
        assert (await db.get_task(tid) or {}).get("status") == "running"
    await _cancelled(canceller, db, ids)
