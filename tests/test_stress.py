"""Every writer at once against real PostgreSQL: submits, claims, heartbeats, finishes,
requeues, cancels, cancel-alls (forced and not), resumes and the reaper's sweep, from many
clients for a while. Afterwards: no deadlock, and every row's whole history obeys the rules.

The history comes from a trigger this test installs in its own database; replay a failure
with STRESS_SEED=<printed seed>, and STRESS_SECONDS sets the length.
"""

from __future__ import annotations

import asyncio
import os
import random
import time
import uuid
from collections import Counter
from typing import Any

import asyncpg
import pytest

from services.reaper.sweeper import SWEEP_BATCH
from shared.cancellation import CancelConflict, Canceller
from shared.db import ClaimBusy, Db
from shared.states import TaskStatus

pytestmark = pytest.mark.slow

CLIENTS = 8

_HISTORY = """
CREATE TABLE IF NOT EXISTS stress_history (
    seq bigserial PRIMARY KEY, at timestamptz NOT NULL DEFAULT clock_timestamp(),
    task_id uuid NOT NULL, old_status text, new_status text NOT NULL,
    old_attempt int, new_attempt int NOT NULL, old_queued_at timestamptz,
    actor text NOT NULL, queue text NOT NULL);
CREATE OR REPLACE FUNCTION stress_history_row() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        INSERT INTO stress_history (task_id, new_status, new_attempt, actor, queue)
        VALUES (NEW.id, NEW.status, NEW.attempt, NEW.actor, NEW.queue);
    ELSIF OLD.status IS DISTINCT FROM NEW.status OR OLD.attempt IS DISTINCT FROM NEW.attempt THEN
        INSERT INTO stress_history (task_id, old_status, new_status, old_attempt, new_attempt,
                                    old_queued_at, actor, queue)
        VALUES (NEW.id, OLD.status, NEW.status, OLD.attempt, NEW.attempt, OLD.queued_at,
                NEW.actor, NEW.queue);
    END IF;
    RETURN NULL;
END $$;
DROP TRIGGER IF EXISTS stress_history ON tasks;
CREATE TRIGGER stress_history AFTER INSERT OR UPDATE ON tasks
    FOR EACH ROW EXECUTE FUNCTION stress_history_row();
"""

# Every change of state a writer of this system may make (old, new).
ALLOWED = {
    ("queued", "running"), ("queued", "cancelled"), ("queued", "lost"),
    ("running", "running"),  # a redelivery taking over an expired lease
    ("running", "cancelling"), ("running", "queued"), ("running", "succeeded"),
    ("running", "failed"), ("running", "lost"), ("running", "cancelled"),
    ("cancelling", "cancelled"), ("cancelling", "succeeded"), ("cancelling", "failed"),
    ("cancelled", "queued"), ("lost", "queued"), ("failed", "queued"),
}


class Stress:
    def __init__(self, db: Db, canceller: Canceller, rng: random.Random) -> None:
        self.db = db
        self.canceller = canceller
        self.rng = rng
        self.ids: list[uuid.UUID] = []
        self.ops: Counter[str] = Counter()
        self.errors: list[str] = []

    async def submit(self) -> None:
        tid, mid = uuid.uuid4(), uuid.uuid4()
        actor = self.rng.choice(["distill", "stubborn"])
        await self.db.insert_task(tid, actor, self.rng.choice(["a", "b"]), {}, mid, None)
        self.ids.append(tid)

    async def claim(self, tid: uuid.UUID) -> None:
        row = await self.db.get_task(tid)
        if row is None or row["status"] != "queued":
            return
        try:
            claimed = await self.db.claim_task(tid, row["message_id"], "w@stress", 1, 30)
        except ClaimBusy:
            self.ops["claim_busy"] += 1
            return
        if claimed is None:
            return
        attempt = claimed.attempt
        for _ in range(self.rng.randint(0, 3)):
            await self.db.heartbeat(tid, attempt, done=1, failed=0, total=3, current=1,
                                    eta_seconds=1.0)
            await asyncio.sleep(self.rng.uniform(0, 0.01))
        roll = self.rng.random()
        if roll < 0.4:
            status = TaskStatus.SUCCEEDED
            state = await self.db.execution_state(tid)
            if state is not None and state["status"] == "cancelling":
                status = TaskStatus.CANCELLED
            await self.db.finish_task(tid, attempt, status, outcome="cooperative")
        elif roll < 0.6:
            await self.db.requeue_execution(tid, attempt, uuid.uuid4())
        elif roll < 0.7:
            await self.db.mark_dead(tid, attempt, "gone")
        # else: left running, for cancels and cancel-alls to find

    async def cancel(self, tid: uuid.UUID) -> None:
        try:
            await self.canceller.cancel(tid, by="stress", force=self.rng.random() < 0.3)
        except CancelConflict:
            pass

    async def resume(self, tid: uuid.UUID) -> None:
        try:
            await self.canceller.resume(tid)
        except CancelConflict:
            pass

    async def step(self) -> None:
        roll = self.rng.random()
        pick = self.rng.choice(self.ids) if self.ids else None
        if roll < 0.3 or pick is None:
            op, call = "submit", self.submit()
        elif roll < 0.6:
            op, call = "claim", self.claim(pick)
        elif roll < 0.75:
            op, call = "cancel", self.cancel(pick)
        elif roll < 0.85:
            op, call = "resume", self.resume(pick)
        elif roll < 0.9:
            op, call = "cancel_all", self.canceller.cancel_all(
                by="stress", force=self.rng.random() < 0.5,
                actor=self.rng.choice([None, "distill"]), queue=self.rng.choice([None, "a"]))
        elif roll < 0.95:
            op, call = "sweep", self.sweep()
        else:
            op, call = "finish_cancelling", self.finish_cancelling()
        try:
            await call
            self.ops[op] += 1
        except asyncpg.DeadlockDetectedError as exc:
            self.errors.append(f"{op}: {exc}")
        except Exception as exc:
            self.errors.append(f"{op}: {exc!r}")

    async def sweep(self) -> None:
        for fence in await self.db.open_fences():
            await self.db.sweep_fence(fence, SWEEP_BATCH)
            # the reaper's second lane, from the fence down
            await self.db.sweep_fence_range(fence, SWEEP_BATCH, descending=True)

    async def finish_cancelling(self) -> None:
        rows = await self.db.pool.fetch(
            "SELECT id, attempt FROM tasks WHERE status = 'cancelling' LIMIT 5")
        for r in rows:
            await self.db.finish_task(r["id"], r["attempt"], TaskStatus.CANCELLED,
                                      outcome="cooperative")

    async def client(self, until: float) -> None:
        while time.monotonic() < until:
            await self.step()


async def test_every_writer_at_once_no_deadlock_and_a_lawful_history(
        db: Db, canceller: Canceller) -> None:
    seed = int(os.environ.get("STRESS_SEED", random.randrange(1_000_000)))
    seconds = float(os.environ.get("STRESS_SECONDS", "40"))
    print(f"stress seed={seed} seconds={seconds} clients={CLIENTS}")
    await db.pool.execute(_HISTORY)
    deadlocks_before = await _deadlocks(db)
    stress = Stress(db, canceller, random.Random(seed))
    until = time.monotonic() + seconds
    # given many clients of a pool as large as a busy API's
    big = await Db.connect(canceller.settings.database_url, min_size=CLIENTS, max_size=CLIENTS + 2)
    stress.db = big
    canceller_big = Canceller(canceller.settings, big, canceller.redis, canceller.celery)
    stress.canceller = canceller_big
    try:
        # when they all write at once
        await asyncio.gather(*(stress.client(until) for _ in range(CLIENTS)))
    finally:
        await big.close()
    print("operations:", dict(stress.ops))
    # then nothing failed, and PostgreSQL saw no deadlock
    assert not stress.errors, stress.errors[:10]
    assert await _deadlocks(db) == deadlocks_before
    assert stress.ops["cancel_all"] >= 10 and stress.ops["claim"] >= 100, dict(stress.ops)
    # and every row's history is lawful
    await _check_history(db)
    # and the counts by state, kept from appended deltas, match the rows, before and after
    # the reaper folds the deltas in
    real = {r["status"]: r["n"] for r in await db.pool.fetch(
        "SELECT status, count(*) AS n FROM tasks GROUP BY status")}
    for _ in range(2):
        counts = {k: v for k, v in (await db.counts()).items() if v}
        assert counts == real
        await db.fold_tallies()
    assert await db.pool.fetchval("SELECT count(*) FROM task_tally_deltas") == 0


async def _deadlocks(db: Db) -> int:
    return int(await db.pool.fetchval(
        "SELECT deadlocks FROM pg_stat_database WHERE datname = current_database()") or 0)


async def _check_history(db: Db) -> None:
    history = await db.pool.fetch("SELECT * FROM stress_history ORDER BY seq")
    fences = await db.pool.fetch("SELECT at, actor, queue FROM cancel_fences ORDER BY at")
    assert fences, "no cancel-all ran"
    last: dict[uuid.UUID, Any] = {}
    for h in history:
        tid = h["task_id"]
        if h["old_status"] is None:
            assert h["new_status"] == "queued" and h["new_attempt"] == 0, dict(h)
        else:
            move = (h["old_status"], h["new_status"])
            assert move in ALLOWED, f"unlawful {move}: {dict(h)}"
            prev = last.get(tid)
            # each row's story is continuous: every change starts where the last one ended
            assert prev is not None and prev["new_status"] == h["old_status"], dict(h)
            if h["new_status"] == "running":
                # a claim adds exactly one attempt
                assert h["new_attempt"] == h["old_attempt"] + 1, dict(h)
                if h["old_status"] == "queued":
                    # and never starts a task that a fence committed before it covers
                    for f in fences:
                        covered = (h["old_queued_at"] < f["at"] < h["at"]
                                   and f["actor"] in (None, h["actor"])
                                   and f["queue"] in (None, h["queue"]))
                        assert not covered, f"covered task started: {dict(h)} fence {dict(f)}"
            else:
                assert h["new_attempt"] == h["old_attempt"], dict(h)
        last[tid] = h
    # the last change of each row is where the row is now
    now = {r["id"]: r["status"] for r in await db.pool.fetch("SELECT id, status FROM tasks")}
    for tid, h in last.items():
        assert now[tid] == h["new_status"], (tid, now[tid], dict(h))
