"""The cancel ladder end to end: real worker processes, real Redis and Postgres."""

from __future__ import annotations

import asyncio
import time
import uuid

import psutil
import pytest

from shared.cancellation import Canceller
from shared.db import Db
from shared.settings import Settings
from shared.submit import submit
from tests.support import TERMINAL, row_where, wait_for, wait_gone

# The database is reached through PgBouncer in transaction pooling mode, as deployed.
pytestmark = pytest.mark.pgbouncer


@pytest.fixture(scope="module")
def settings(settings: Settings) -> Settings:
    return settings.with_(actor_modules="services.worker.actors,tests.actors")






async def test_cancel_distill_saves_finished_chunks_and_resume_completes_it(
        db: Db, canceller: Canceller, start_worker) -> None:
    # given a distill of 50 chunks at 0.2 s that has finished its third chunk
    start_worker()
    row = await submit(db, canceller.celery, actor="distill",
                       kwargs={"chunks": 50, "chunk_seconds": 0.2})
    tid = row["id"]

    async def three_saved():
        return len(await db.saved_chunks(tid)) >= 3

    await wait_for(three_saved, timeout=20, what="three chunks saved", interval=0.02)
    # when it is cancelled
    t0 = time.monotonic()
    await canceller.cancel(tid, by="test", reason="enough")
    final = await row_where(db, tid, lambda r: r["status"] in TERMINAL, timeout=5,
                             what="cancelled")
    took = time.monotonic() - t0
    # then it is cancelled within 1 s, cooperatively, with every finished chunk saved
    assert final["status"] == "cancelled" and final["outcome"] == "cooperative", dict(final)
    assert took < 1.0, f"cancel took {took:.3f}s"
    saved = await db.saved_chunks(tid)
    assert saved == set(range(len(saved))) and len(saved) == final["done"] >= 3
    assert final["cancel_reason"] == "enough" and final["cancel_by"] == "test"
    # when it is resumed
    await canceller.resume(tid)
    done = await row_where(db, tid, lambda r: r["status"] in TERMINAL and r["attempt"] == 2,
                            timeout=30, what="resumed run to finish")
    # then it succeeds with each of the 50 chunks saved exactly once, earlier ones untouched
    assert done["status"] == "succeeded", dict(done)
    results = await db.list_results(tid)
    assert [r["chunk"] for r in results] == list(range(50))
    first = {r["chunk"] for r in results if r["attempt"] == 1}
    assert first == saved, "a chunk saved before the cancel was redone"


@pytest.mark.parametrize("mode, who", [
    ("sleep", "its own watchdog"),
    ("gil", "the worker's guardian"),
    ("gil", "the reaper"),
])
async def test_uncooperative_task_is_killed_after_grace_and_worker_goes_on(
        settings: Settings, db: Db, canceller: Canceller, start_worker, start_reaper,
        mode: str, who: str) -> None:
    # given a stubborn task that never looks at its token; the reaper alone (without the
    # worker's guardian) must reach a process that holds its GIL from afar
    by_reaper = who == "the reaper"
    worker = start_worker(settings.with_(guardian=not by_reaper))
    if by_reaper:
        start_reaper()
    row = await submit(db, canceller.celery, actor="stubborn",
                       kwargs={"seconds": 120, "mode": mode})
    tid = row["id"]
    running = await row_where(db, tid, lambda r: r["status"] == "running", timeout=20,
                               what="running")
    await asyncio.sleep(0.3)
    proc = psutil.Process(running["pid"])
    # when it is cancelled
    t0 = time.monotonic()
    await canceller.cancel(tid, by="test")
    # then its process is gone soon after the grace period (the reaper adds its margin)
    bound = settings.cancel_grace + 1.0 + (settings.kill_margin + 0.5 if by_reaper else 0.0)
    gone = await asyncio.to_thread(wait_gone, proc.pid, bound + 5)
    took = time.monotonic() - t0
    assert gone, "process still alive"
    assert took <= bound, f"gone after {took:.2f}s, bound {bound:.2f}s"
    final = await row_where(db, tid, lambda r: r["status"] in TERMINAL, timeout=5,
                             what="terminal")
    assert final["status"] == "cancelled" and final["outcome"] == "killed", dict(final)
    # and the worker serves new tasks afterwards
    after = await submit(db, canceller.celery, actor="distill",
                         kwargs={"chunks": 3, "chunk_seconds": 0.01})
    ok = await row_where(db, after["id"], lambda r: r["status"] in TERMINAL, timeout=20,
                          what="next task")
    assert ok["status"] == "succeeded"
    assert worker.proc is not None and worker.proc.poll() is None


async def test_time_limit_ends_cancelled_with_reason_and_saved_chunks(
        db: Db, canceller: Canceller, start_worker) -> None:
    # given an actor with a 1.5 s time limit and work for 10 s
    start_worker()
    row = await submit(db, canceller.celery, actor="limited",
                       kwargs={"chunks": 100, "chunk_seconds": 0.1})
    # when its time runs out
    final = await row_where(db, row["id"], lambda r: r["status"] in TERMINAL, timeout=15,
                             what="terminal")
    # then it is cancelled for the time limit, cooperatively, its finished chunks saved
    assert final["status"] == "cancelled", dict(final)
    assert final["cancel_reason"] == "time_limit" and final["outcome"] == "cooperative"
    saved = await db.saved_chunks(row["id"])
    assert 5 <= len(saved) < 100 and saved == set(range(len(saved)))
    assert (final["finished_at"] - final["started_at"]).total_seconds() < 3.0


async def test_interruptible_actor_blocked_in_a_socket_read_is_cancelled_at_once(
        db: Db, canceller: Canceller, start_worker) -> None:
    # given a model server that answers the first prompt, then never answers again
    answered = 0

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal answered
        await reader.readline()
        if answered == 0:
            answered += 1
            writer.write(b"first answer\n")
            await writer.drain()
            writer.close()
            return
        await asyncio.sleep(3600)

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        start_worker()
        row = await submit(db, canceller.celery, actor="ask",
                           kwargs={"prompts": ["one", "two", "three"], "port": port})
        tid = row["id"]

        async def blocked():
            r = await db.get_task(tid)
            return r["status"] == "running" and r["current_chunk"] == 2

        await wait_for(blocked, timeout=20, what="blocked on the second prompt")
        await asyncio.sleep(0.5)
        # when it is cancelled
        t0 = time.monotonic()
        await canceller.cancel(tid, by="test")
        final = await row_where(db, tid, lambda r: r["status"] in TERMINAL, timeout=5,
                                 what="terminal")
        took = time.monotonic() - t0
        # then the blocking read stopped within 1 s, and the first answer is saved
        assert final["status"] == "cancelled" and final["outcome"] == "cooperative"
        assert took < 1.0, f"took {took:.3f}s"
        results = await db.list_results(tid)
        assert [(r["chunk"], r["result"]["answer"]) for r in results] == [(0, "first answer")]
    finally:
        server.close()


async def test_cancel_of_finished_task_conflicts_and_changes_nothing(
        db: Db, canceller: Canceller) -> None:
    from shared.cancellation import CancelConflict

    tid = uuid.uuid4()
    await db.insert_task(tid, "distill", "default", {}, uuid.uuid4(), None)
    await db.pool.execute("UPDATE tasks SET status='succeeded', finished_at=now() WHERE id=$1",
                          tid)
    before = dict(await db.get_task(tid))
    audits = len(await db.list_audit(1000))
    with pytest.raises(CancelConflict):
        await canceller.cancel(tid, by="test")
    assert dict(await db.get_task(tid)) == before
    assert len(await db.list_audit(1000)) == audits
