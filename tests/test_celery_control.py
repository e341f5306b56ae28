"""Celery's own revoke of our messages is our cancel: real workers, real Redis and Postgres.

What an operator sends with Celery's tools: `app.control.revoke(id)` and
`revoke(id, terminate=True, signal=...)` (Flower's terminate button, `celery control
revoke --terminate`), where the id is the Celery message id Flower and `inspect` show.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

import psutil
import pytest
from celery.worker import state as worker_state

from services.worker import celery_control
from services.worker.celery_control import CeleryControl
from shared.broker import make_celery
from shared.cancellation import Canceller
from shared.db import Db
from shared.pausing import Pauser
from shared.settings import Settings
from shared.submit import submit
from tests.support import TERMINAL, row_where, wait_for, wait_gone

# A long run of real processes: `make test-slow` (CI runs it after `make test`).
pytestmark = pytest.mark.slow

BY = "celery-control"
# The request's figure is 1 s; the machine runs other suites at the same time.
BOUND = 2.5


async def revoke(settings: Settings, message_ids: Any, **options: Any) -> None:
    """A Celery client of its own, as an operator's shell or Flower would have."""
    def send() -> None:
        app = make_celery(settings, "operator")
        try:
            app.control.revoke(message_ids, **options)
        finally:
            app.close()

    await asyncio.to_thread(send)


async def audits_of(db: Db, task_id: uuid.UUID) -> list[Any]:
    return [a for a in await db.list_audit(1000) if task_id in a["task_ids"]]


async def chunks_saved(db: Db, task_id: uuid.UUID, n: int) -> None:
    async def enough() -> bool:
        return len(await db.saved_chunks(task_id)) >= n

    await wait_for(enough, timeout=20, what=f"{n} chunks saved", interval=0.02)


@pytest.mark.parametrize("options", [
    {"terminate": True, "signal": "SIGKILL"},
    {},
], ids=["terminate-sigkill", "plain"])
async def test_revoke_of_a_running_task_cancels_it_and_keeps_its_checkpoint(
        settings: Settings, db: Db, canceller: Canceller, start_worker,
        options: dict[str, Any]) -> None:
    # given a distill that has saved three chunks
    start_worker()
    row = await submit(db, canceller.celery, actor="distill",
                       kwargs={"chunks": 100, "chunk_seconds": 0.2})
    tid = row["id"]
    await chunks_saved(db, tid, 3)
    # when an operator revokes its Celery message
    t0 = time.monotonic()
    await revoke(settings, str(row["message_id"]), **options)
    final = await row_where(db, tid, lambda r: r["status"] in TERMINAL, timeout=BOUND + 5,
                            what="terminal")
    took = time.monotonic() - t0
    # then the row is cancelled at once, by Celery's control, with every saved chunk kept
    assert final["status"] == "cancelled", dict(final)
    assert took < BOUND, f"cancelled after {took:.2f}s"
    assert final["cancel_by"] == BY and bool(final["cancel_forced"]) == bool(options)
    saved = await db.saved_chunks(tid)
    assert len(saved) >= 3 and saved == set(range(len(saved)))
    # and the cancel is audited once
    audits = await audits_of(db, tid)
    assert [a["by"] for a in audits] == [BY], [dict(a) for a in audits]


async def test_revoke_terminate_of_a_task_holding_its_gil_is_a_verified_kill(
        settings: Settings, db: Db, canceller: Canceller, start_worker) -> None:
    # given a task blocked in C code that holds its GIL: only a kill from outside ends it
    worker = start_worker()
    row = await submit(db, canceller.celery, actor="stubborn",
                       kwargs={"seconds": 120, "mode": "gil"})
    tid = row["id"]
    running = await row_where(db, tid, lambda r: r["status"] == "running", timeout=20,
                              what="running")
    await asyncio.sleep(0.3)
    pid = running["pid"]
    # when Celery is told to terminate it with its default signal
    t0 = time.monotonic()
    await revoke(settings, str(row["message_id"]), terminate=True)
    final = await row_where(db, tid, lambda r: r["status"] in TERMINAL, timeout=BOUND + 5,
                            what="terminal")
    took = time.monotonic() - t0
    # then the row was settled as killed by the ladder, not later by the heartbeat timeout
    assert final["status"] == "cancelled" and final["outcome"] == "killed", dict(final)
    assert final["cancel_by"] == BY and took < BOUND, f"{took:.2f}s"
    assert await asyncio.to_thread(wait_gone, pid, 5)
    # and the worker goes on with a fresh pool process
    assert worker.proc is not None and worker.proc.poll() is None
    after = await submit(db, canceller.celery, actor="distill",
                         kwargs={"chunks": 2, "chunk_seconds": 0.01})
    done = await row_where(db, after["id"], lambda r: r["status"] in TERMINAL, timeout=20,
                           what="next task")
    assert done["status"] == "succeeded"
    assert psutil.pid_exists(worker.pid)


async def test_revoke_of_queued_messages_cancels_their_rows_once_across_workers(
        settings: Settings, db: Db, canceller: Canceller, start_worker) -> None:
    # given two workers (both get every broadcast), a task on a queue nobody serves and
    # one held by a worker until its countdown
    start_worker()
    start_worker()
    parked = await submit(db, canceller.celery, actor="distill", kwargs={"chunks": 1},
                          queue="parked")
    later = await submit(db, canceller.celery, actor="distill", kwargs={"chunks": 1},
                         countdown=60)
    # and one paused by an operator (its message is still the one Celery knows)
    held = await submit(db, canceller.celery, actor="distill", kwargs={"chunks": 1},
                        queue="parked")
    await Pauser(settings, db, canceller.redis, canceller.celery).pause(held["id"], by="op")
    await asyncio.sleep(0.5)  # the countdown message reaches a worker
    # when the messages are revoked in one call
    t0 = time.monotonic()
    await revoke(settings, [str(r["message_id"]) for r in (parked, later, held)])
    rows = [await row_where(db, r["id"], lambda r: r["status"] in TERMINAL, timeout=BOUND + 5,
                            what="terminal") for r in (parked, later, held)]
    took = time.monotonic() - t0
    # then the rows are cancelled before they ever started, each audited once
    for row in rows:
        assert (row["status"], row["outcome"], row["cancel_by"]) == (
            "cancelled", "never_started", BY), dict(row)
    assert took < BOUND, f"{took:.2f}s"
    # and revoking them again (as the reaper does for cancelled messages) changes nothing
    await revoke(settings, [str(parked["message_id"]), str(later["message_id"])],
                 terminate=True)
    await asyncio.sleep(1.0)
    for row in (parked, later):
        assert [a["by"] for a in await audits_of(db, row["id"])] == [BY]


async def test_revoke_of_an_older_message_of_a_task_leaves_the_task_alone(
        settings: Settings, db: Db, canceller: Canceller, start_worker) -> None:
    # given a task resumed under a new message after a cancel
    start_worker()
    row = await submit(db, canceller.celery, actor="distill",
                       kwargs={"chunks": 30, "chunk_seconds": 0.1})
    tid = row["id"]
    await row_where(db, tid, lambda r: r["status"] == "running", timeout=20, what="running")
    await canceller.cancel(tid, by="test")
    await row_where(db, tid, lambda r: r["status"] in TERMINAL, timeout=10, what="cancelled")
    resumed = await canceller.resume(tid)
    await row_where(db, tid, lambda r: r["status"] == "running" and r["attempt"] == 2,
                    timeout=20, what="second attempt running")
    # when its first message, and an id that is no message of ours, are revoked
    await revoke(settings, [str(row["message_id"]), str(uuid.uuid4()), "not-a-uuid"],
                 terminate=True)
    # then the second attempt runs to its end
    final = await row_where(db, tid, lambda r: r["status"] in TERMINAL, timeout=30,
                            what="second attempt done")
    assert final["status"] == "succeeded" and final["message_id"] == resumed["message_id"]
    assert [a["by"] for a in await audits_of(db, tid)] == ["test"]


# -- in the worker's main process, without servers --------------------------------------


class FakeRequest:
    """What Celery's revoke reads of a request it holds, and its terminate recorded."""

    def __init__(self, message_id: str, name: str, stamps: dict[str, Any] | None = None
                 ) -> None:
        self.id = message_id
        self.name = name
        self.stamps = stamps or {}
        self.task = None
        self.terminated_with: int | None = None

    def terminate(self, pool: Any, signal: int | None = None) -> None:
        self.terminated_with = signal


class FakeBackend:
    def get_state(self, message_id: str) -> str:
        raise NotImplementedError("no result backend")


@pytest.fixture
def held(monkeypatch: pytest.MonkeyPatch) -> Any:
    """A control with its cancels recorded, and a worker holding one message of ours
    (`m-ours`) and one of someone else's (`m-theirs`), both executing."""
    control = CeleryControl(Settings(), celery=None, actors=["distill"])  # type: ignore[arg-type]
    cancels: list[tuple[list[str], bool, str]] = []
    monkeypatch.setattr(control, "cancel", lambda ids, *, forced, reason: cancels.append(
        (sorted(ids), forced, reason)))
    ours = FakeRequest("m-ours", "distill", {"batch": "b1"})
    theirs = FakeRequest("m-theirs", "someone.else", {"batch": "b1"})
    for request in (ours, theirs):
        monkeypatch.setitem(worker_state.requests, request.id, request)
        worker_state.active_requests.add(request)
    app = type("App", (), {"taskreaper_celery_control": control, "backend": FakeBackend()})()
    state = type("State", (), {"app": app, "consumer": type("C", (), {"pool": object()})()})()
    yield state, ours, theirs, cancels
    for request in (ours, theirs):
        worker_state.active_requests.discard(request)
        worker_state.revoked.discard(request.id)
    worker_state.revoked_stamps.pop("batch", None)


@pytest.mark.unit
def test_terminate_never_lets_celery_signal_a_process_running_our_message(held: Any) -> None:
    state, ours, theirs, cancels = held
    # when Celery's revoke command is run with terminate for both messages
    reply = celery_control.revoke(state, ["m-ours", "m-theirs"], terminate=True,
                                  signal="SIGKILL")
    # then Celery terminated only the other one, and both are in its revoked set
    assert ours.terminated_with is None and theirs.terminated_with == 9
    assert "m-ours" in worker_state.revoked and "m-theirs" in worker_state.revoked
    # and ours (with any other id, which the DB tells apart) goes to a forced cancel
    assert cancels == [(["m-ours", "m-theirs"], True, "celery revoke --terminate (SIGKILL)")]
    assert "m-ours" in reply["ok"]


@pytest.mark.unit
def test_revoke_by_stamped_headers_cancels_ours_and_terminates_only_the_rest(
        held: Any) -> None:
    state, ours, theirs, cancels = held
    celery_control.revoke_by_stamped_headers(state, ["batch=b1"], terminate=True)
    assert ours.terminated_with is None and theirs.terminated_with == 15
    assert cancels == [(["m-ours"], True, "celery revoke --terminate (SIGTERM)")]
    assert worker_state.revoked_stamps["batch"] == ["b1"]
