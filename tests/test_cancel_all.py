"""cancel-all at scale, with workers up, with workers down, forced, and raced."""

from __future__ import annotations

import asyncio
import json
import random
import time
import uuid

import pytest

from shared.cancellation import CancelConflict, Canceller
from shared.db import Db
from shared.keys import Keys
from shared.settings import Settings
from shared.submit import submit
from tests.support import wait_for, wait_gone

pytestmark = pytest.mark.pgbouncer


async def _submit_many(db: Db, celery, n: int, **kw) -> list[uuid.UUID]:
    ids = []
    for _ in range(n):
        row = await submit(db, celery, actor="distill",
                           kwargs={"chunks": 5, "chunk_seconds": 0.05}, **kw)
        ids.append(row["id"])
    return ids


async def _running(db: Db, n: int) -> list:
    async def check():
        rows = await db.active_rows()
        running = [r for r in rows if r["status"] == "running" and r["heartbeat_at"]]
        return running if len(running) >= n else None

    return await wait_for(check, timeout=30, what=f"{n} running tasks")


async def _four_running_and_a_backlog(db: Db, celery, *, countdown: float
                                      ) -> tuple[list[uuid.UUID], ...]:
    """Four long tasks running (a pool of four), then 200 queued behind them and 20
    scheduled `countdown` seconds ahead: their ids, in that order."""
    running = [(await submit(db, celery, actor="distill",
                             kwargs={"chunks": 1000, "chunk_seconds": 0.1}))["id"]
               for _ in range(4)]
    await _running(db, 4)
    queued = await _submit_many(db, celery, 200)
    scheduled = await _submit_many(db, celery, 20, countdown=countdown)
    return running, queued, scheduled


async def _next_message(pubsub) -> dict:
    while True:
        message = await pubsub.get_message(timeout=1.0)
        if message and message.get("type") == "message":
            return json.loads(message["data"])


async def _non_terminal(db: Db) -> int:
    return sum((await db.counts(history=False)).values())


async def _assert_never_ran(db: Db, ids: list[uuid.UUID]) -> None:
    rows = await db.pool.fetch("SELECT id, status, attempt, started_at FROM tasks "
                               "WHERE id = ANY($1::uuid[])", ids)
    assert len(rows) == len(ids)
    ran = [r for r in rows if r["attempt"] != 0 or r["started_at"] is not None]
    assert not ran, f"{len(ran)} cancelled tasks ran user code"
    assert {r["status"] for r in rows} == {"cancelled"}


async def test_cancel_all_with_running_queued_and_scheduled_tasks(
        settings: Settings, db: Db, canceller: Canceller, start_worker, start_reaper) -> None:
    # given 4 running tasks, 200 queued and 20 scheduled a minute ahead
    start_worker(concurrency=4)
    start_reaper()
    running, queued, scheduled = await _four_running_and_a_backlog(db, canceller.celery,
                                                                   countdown=60)
    pubsub = canceller.redis.pubsub(ignore_subscribe_messages=True)
    await pubsub.subscribe(Keys(settings.key_prefix).cancel_channel)
    # when everything is cancelled
    t0 = time.monotonic()
    result = await canceller.cancel_all(by="test", reason="maintenance")
    # then every row is terminal within grace + 2 s
    assert len(result.cancelling) == 4 and result.cancelled == 220

    async def settled():
        return await _non_terminal(db) == 0

    await wait_for(settled, timeout=settings.cancel_grace + 2, what="all rows terminal")
    took = time.monotonic() - t0
    assert took <= settings.cancel_grace + 2
    rows = await db.pool.fetch("SELECT status, outcome FROM tasks WHERE id = ANY($1::uuid[])",
                               running)
    assert {(r["status"], r["outcome"]) for r in rows} == {("cancelled", "cooperative")}
    # the news went out as one event (not only through the workers' fallback poll)
    event = await asyncio.wait_for(_next_message(pubsub), 2.0)
    assert event["all"] is True and event["before"] > 0 and event["force"] is False
    await pubsub.aclose()
    # and none of the queued or scheduled tasks ever runs user code
    await asyncio.sleep(1.0)
    await _assert_never_ran(db, queued + scheduled)


@pytest.mark.slow
async def test_cancel_all_while_every_worker_is_down_then_restart(
        settings: Settings, db: Db, canceller: Canceller, start_worker, start_reaper) -> None:
    # given a worker whose unacked messages come back after 4 s, with tasks running,
    # reserved and scheduled inside it
    fast = settings.with_(visibility_timeout=4.0)
    worker = start_worker(fast, concurrency=4)
    start_reaper(fast)
    running, queued, scheduled = await _four_running_and_a_backlog(db, canceller.celery,
                                                                   countdown=3)
    await asyncio.sleep(0.5)
    # when every worker process dies, and everything is cancelled while they are down
    worker.kill()
    t0 = time.monotonic()
    await canceller.cancel_all(by="test")

    async def settled():
        return await _non_terminal(db) == 0

    # the running ones died with their worker: the reaper settles them once their heartbeat
    # is stale, in a pass that waits up to a second for the dead worker to answer
    bound = settings.heartbeat_timeout + settings.reconcile_interval + 1.0 + 2.0
    await wait_for(settled, timeout=bound, what="all rows terminal")
    assert time.monotonic() - t0 <= bound
    # and a new worker starts after the countdown and the visibility timeout passed
    await asyncio.sleep(4.0)
    again = start_worker(fast, concurrency=4)
    await asyncio.sleep(6.0)
    # then none of the cancelled tasks ran, though their messages were delivered again
    await _assert_never_ran(db, queued + scheduled)
    states = await db.pool.fetch("SELECT status, attempt FROM tasks WHERE id = ANY($1::uuid[])",
                                 running)
    assert {(r["status"], r["attempt"]) for r in states} == {("cancelled", 1)}
    log_text = again.log_path.read_text(errors="replace")
    assert log_text.count("task.dropped") >= 1, "no redelivered message reached the guard"


async def test_forced_cancel_all_ends_running_tasks_at_once_and_audits_it(
        settings: Settings, db: Db, canceller: Canceller, start_worker) -> None:
    # given a cooperative task and one that never checks its token, both running
    start_worker(concurrency=2)
    coop = await submit(db, canceller.celery, actor="distill",
                        kwargs={"chunks": 1000, "chunk_seconds": 0.1})
    deaf = await submit(db, canceller.celery, actor="stubborn", kwargs={"seconds": 120})
    rows = {r["id"]: r for r in await _running(db, 2)}
    # when everything is cancelled with force (no grace period)
    t0 = time.monotonic()
    result = await canceller.cancel_all(by="test", force=True)

    async def settled():
        return await _non_terminal(db) == 0

    # then both executions end at once: the deaf one's process is killed, not waited for
    assert await asyncio.to_thread(wait_gone, rows[deaf["id"]]["pid"], 5)
    await wait_for(settled, timeout=3, what="rows terminal", interval=0.01)
    took = time.monotonic() - t0
    assert took < 1.0, f"took {took:.3f}s"
    final = {r["id"]: r for r in await db.pool.fetch(
        "SELECT id, status, outcome, cancel_forced FROM tasks WHERE id = ANY($1::uuid[])",
        [coop["id"], deaf["id"]])}
    assert (final[coop["id"]]["status"], final[coop["id"]]["outcome"]) == ("cancelled",
                                                                           "cooperative")
    assert (final[deaf["id"]]["status"], final[deaf["id"]]["outcome"]) == ("cancelled", "killed")
    assert all(r["cancel_forced"] for r in final.values())
    audit = (await db.list_audit(1))[0]
    assert audit["id"] == result.audit_id and audit["forced"] is True
    assert audit["cancelling"] == 2 and audit["by"] == "test"


async def test_cancel_racing_completion_ends_in_one_consistent_state(
        settings: Settings, db: Db, canceller: Canceller, start_worker) -> None:
    start_worker(concurrency=2)
    rng = random.Random(20261129)
    print("seed=20261129")
    ids: list[uuid.UUID] = []

    async def one_round() -> uuid.UUID:
        row = await submit(db, canceller.celery, actor="distill",
                           kwargs={"chunks": 2, "chunk_seconds": rng.uniform(0, 0.03)})
        # wide enough that some tasks finish first even on a loaded machine
        await asyncio.sleep(rng.uniform(0, 0.25))
        try:
            await canceller.cancel(row["id"], by="race", force=rng.random() < 0.2)
        except CancelConflict as exc:  # completion won the race: the 409 case
            assert exc.row["status"] == "succeeded"
        return row["id"]

    for _ in range(20):  # 200 rounds, 10 at a time
        ids.extend(await asyncio.gather(*(one_round() for _ in range(10))))

    async def settled():
        return await _non_terminal(db) == 0

    await wait_for(settled, timeout=60, what="all raced tasks terminal")
    rows = await db.pool.fetch(
        "SELECT t.id, t.status, t.done, t.total, t.attempt, t.outcome, "
        "(SELECT count(*) FROM task_results r WHERE r.task_id = t.id AND r.ok) AS saved "
        "FROM tasks t WHERE t.id = ANY($1::uuid[])", ids)
    assert len(rows) == 200
    outcomes: dict[str, int] = {}
    for r in rows:
        outcomes[r["status"]] = outcomes.get(r["status"], 0) + 1
        if r["status"] == "succeeded":
            assert r["saved"] == 2 and r["done"] == 2, dict(r)
        else:
            assert r["status"] == "cancelled", dict(r)
            assert r["saved"] < 2, dict(r)
            if r["attempt"] == 0:
                assert r["saved"] == 0 and r["outcome"] == "never_started"
            elif r["outcome"] == "cooperative":
                assert r["done"] == r["saved"], dict(r)
    # the race really was a race: both endings occurred
    assert outcomes.get("succeeded", 0) > 0 and outcomes.get("cancelled", 0) > 0, outcomes


@pytest.mark.slow
async def test_cancel_all_takes_the_covered_messages_out_of_the_broker(
        settings: Settings, db: Db, canceller: Canceller, start_reaper) -> None:
    from services.worker.app import load_actors, publish_catalogue
    from shared.queues import queue_lengths

    # given 2,000 queued tasks in a queue no worker reads, and one submitted to another queue
    await publish_catalogue(settings, load_actors(settings))  # what a starting worker does
    keys = Keys(settings.key_prefix)
    covered = await _submit_many(db, canceller.celery, 2000, queue="nobody")
    kept = (await submit(db, canceller.celery, actor="distill", queue="elsewhere",
                         kwargs={"chunks": 1}))["id"]
    assert (await queue_lengths(canceller.redis, keys, ["nobody"]))["nobody"] == 2000
    start_reaper()
    # when everything in that queue is cancelled
    await canceller.cancel_all(by="test", queue="nobody")

    # then the rows end cancelled and their messages leave Redis, though no worker came
    async def drained():
        lengths = await queue_lengths(canceller.redis, keys, ["nobody", "elsewhere"])
        queued = await db.pool.fetchval(
            "SELECT count(*) FROM tasks WHERE queue = 'nobody' AND status = 'queued'")
        return (lengths, queued) if lengths["nobody"] == 0 and queued == 0 else None

    lengths, _ = await wait_for(drained, timeout=30, what="queue drained", interval=0.2)
    # and nothing outside the scope was touched
    assert lengths["elsewhere"] == 1
    assert (await db.get_task(kept))["status"] == "queued"
    await _assert_never_ran(db, covered)


async def test_cancel_all_answers_with_a_small_backlog_already_cancelled(
        settings: Settings, db: Db, canceller: Canceller,
        monkeypatch: pytest.MonkeyPatch) -> None:
    import shared.cancellation
    from services.worker.app import load_actors, publish_catalogue

    # given 8 queued tasks, no worker and no reaper, and room for 5 in cancel-all's own sweep
    await publish_catalogue(settings, load_actors(settings))
    monkeypatch.setattr(shared.cancellation, "INLINE_SWEEP", 5)
    ids = await _submit_many(db, canceller.celery, 8, queue="small-backlog")
    # when everything in that queue is cancelled
    out = await canceller.cancel_all(by="test", queue="small-backlog")
    # then the answer covers all 8, and the 5 oldest already read cancelled, never started
    assert out.cancelled == 8
    rows = {r["id"]: r for r in await db.pool.fetch(
        "SELECT id, status, outcome FROM tasks WHERE id = ANY($1::uuid[])", ids)}
    assert [rows[i]["status"] for i in ids] == ["cancelled"] * 5 + ["queued"] * 3
    assert {rows[i]["outcome"] for i in ids[:5]} == {"never_started"}
    fence = await db.pool.fetchrow("SELECT swept, covered FROM cancel_fences WHERE id = $1",
                                   out.fence_id)
    assert (fence["swept"], fence["covered"]) == (5, 8)
