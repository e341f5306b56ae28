"""Chaos: random submits, cancels, cancel-alls, resumes, worker kills, reaper kills and
Redis restarts for a while; afterwards the DB must have converged to reality.

Replay a failure with CHAOS_SEED=<printed seed>; CHAOS_SECONDS sets the length.
"""

from __future__ import annotations

import asyncio
import os
import random
import time
import uuid

import pytest

from services.worker.actors.text import digest, generated_chunk
from shared.broker import make_celery
from shared.cancellation import CancelConflict, Canceller
from shared.db import Db
from shared.keys import Keys
from shared.redis_client import connect
from shared.registry import live_executions
from shared.settings import Settings
from shared.submit import BrokerUnavailable, submit
from tests.faults import RedisServer
from tests.support import wait_for

# The database is reached through PgBouncer in transaction pooling mode, as deployed.
pytestmark = [pytest.mark.pgbouncer, pytest.mark.slow]


async def test_chaos_converges(settings: Settings, db: Db, start_worker, start_reaper,
                               private_redis: RedisServer) -> None:
    seed = int(os.environ.get("CHAOS_SEED", random.randrange(1_000_000)))
    seconds = float(os.environ.get("CHAOS_SECONDS", "50"))
    print(f"chaos seed={seed} seconds={seconds}")
    rng = random.Random(seed)
    server = private_redis
    s = settings.with_(redis_url=server.url, cancel_grace=1.0, lost_message_after=3.0,
                       orphan_scan_interval=1.0, visibility_timeout=5.0)
    celery = make_celery(s)
    r = connect(s.redis_url)
    canceller = Canceller(s, db, r, celery)
    workers = [start_worker(s), start_worker(s)]
    reapers = [start_reaper(s), start_reaper(s)]
    ids: list[uuid.UUID] = []
    log: list[str] = []

    async def act() -> None:
        roll = rng.random()
        if roll < 0.45:
            stubborn = rng.random() < 0.08
            actor = "stubborn" if stubborn else "distill"
            kwargs = ({"seconds": rng.uniform(1, 4)} if stubborn else
                      {"chunks": rng.randint(2, 12), "chunk_seconds": rng.uniform(0.02, 0.1)})
            try:
                row = await submit(db, celery, actor=actor, kwargs=kwargs,
                                   countdown=rng.choice([None, None, None, 1.0]))
                ids.append(row["id"])
            except BrokerUnavailable:
                log.append("submit refused: broker down")
        elif roll < 0.62 and ids:
            try:
                await canceller.cancel(rng.choice(ids), by="chaos", force=rng.random() < 0.3)
            except CancelConflict:
                pass
        elif roll < 0.65:
            await canceller.cancel_all(by="chaos", force=rng.random() < 0.3)
        elif roll < 0.72 and ids:
            try:
                await canceller.resume(rng.choice(ids))
            except (CancelConflict, BrokerUnavailable):
                pass
        elif roll < 0.80:
            w = rng.choice(workers)
            children = w.children()
            if children and rng.random() < 0.5:
                rng.choice(children).kill()
                log.append("killed a pool process")
            else:
                w.kill()
                workers.remove(w)
                workers.append(start_worker(s, wait=False))
                log.append("killed a worker")
        elif roll < 0.87:
            victim = rng.choice(reapers)
            victim.kill()
            reapers.remove(victim)
            reapers.append(start_reaper(s))
            log.append("killed a reaper")
        elif roll < 0.90:
            server.stop()
            await asyncio.sleep(rng.uniform(0.3, 1.5))
            server.start()
            log.append("restarted redis")

    started = time.monotonic()
    while time.monotonic() - started < seconds:
        await act()
        await asyncio.sleep(rng.uniform(0.05, 0.4))
    print(f"chaos: {len(ids)} tasks; " + ", ".join(
        f"{what} x{log.count(what)}" for what in sorted(set(log))))

    # settle: everything is up again; nothing may stay non-terminal. A worker whose pool
    # process was killed while the pool was still starting exits (Celery gives up on it):
    # it is replaced, as an operator would.
    await asyncio.sleep(1.0)  # a pool killed while starting takes its worker down shortly
    for i, w in enumerate(list(workers)):
        try:
            w.wait_ready(60)
        except AssertionError:
            assert w.proc is not None and w.proc.poll() is not None, "worker alive but not ready"
            workers[i] = start_worker(s)
            print("chaos: replaced a worker that had exited")

    async def settled() -> bool:
        return sum((await db.counts(history=False)).values()) == 0

    try:
        await wait_for(settled, timeout=90, interval=0.5, what="every row terminal")
    finally:
        print("counts:", await db.counts())
    # no process executes a task the DB calls terminal
    await asyncio.sleep(s.reconcile_interval * 2)
    live = await live_executions(r, Keys(s.key_prefix))
    assert not live, f"executions still registered: {list(live)}"
    active = await asyncio.to_thread(lambda: celery.control.inspect(timeout=1).active() or {})
    assert not any(active.values()), active
    # saved results: each intact, within its task, written by an attempt the task had
    rows = await db.pool.fetch(
        "SELECT r.task_id, r.chunk, r.ok, r.result, r.attempt AS by_attempt, t.attempt, "
        "t.kwargs FROM task_results r JOIN tasks t ON t.id = r.task_id")
    for row in rows:
        assert 0 <= row["chunk"] < row["kwargs"]["chunks"], dict(row)
        assert 1 <= row["by_attempt"] <= row["attempt"], dict(row)
        if row["ok"]:
            assert row["result"] == digest(generated_chunk(row["chunk"])), dict(row)
    # a succeeded task has every chunk, and its progress says so
    succeeded = await db.pool.fetch(
        "SELECT t.id, t.kwargs, t.done, (SELECT count(*) FROM task_results r "
        "WHERE r.task_id = t.id AND r.ok) n FROM tasks t "
        "WHERE t.status = 'succeeded' AND t.actor = 'distill'")
    assert succeeded, "no task succeeded: the run proves little"
    for row in succeeded:
        assert row["n"] == row["kwargs"]["chunks"] == row["done"], dict(row)
    celery.close()
    await r.aclose()
