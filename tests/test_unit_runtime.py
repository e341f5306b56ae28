"""The worker's logic inside one pool process, without servers or processes: the cancel
token as task code meets it, and chunk results kept through a database outage."""

from __future__ import annotations

import asyncio
import signal
import threading
import time
from collections.abc import Coroutine, Iterator
from typing import Any, TypeVar

import pytest

from services.worker.actor import Actor
from services.worker.checkpoint_writer import CheckpointWriter
from services.worker.context import TaskContext
from services.worker.execution import Execution
from services.worker.runtime import Runtime
from services.worker.sidecar import INTERRUPT_SIGNAL
from shared.settings import Settings
from shared.states import Outcome, TaskStatus
from shared.token import Cancelled, CancelToken, DeadlineExceeded
from tests.fakes import FakeDb

pytestmark = pytest.mark.unit
T = TypeVar("T")


class Connection:
    """The process's one DB connection (OneConnection), here to a FakeDb."""

    def __init__(self, db: FakeDb) -> None:
        self.db = db

    async def get(self) -> FakeDb:
        return self.db


class Sidecar:
    """What task code reaches of the sidecar: `call` onto its loop, and checkpoints."""

    def __init__(self, writer: CheckpointWriter) -> None:
        self.loop = asyncio.new_event_loop()
        self.writer = writer

    def call(self, coro: Coroutine[Any, Any, T], timeout: float = 15.0) -> T:
        return self.loop.run_until_complete(asyncio.wait_for(coro, timeout))

    async def save_result(self, ex: Execution, chunk: int, ok: bool, result: Any) -> bool:
        return await self.writer.save(ex, chunk, ok, result)


def running(db: FakeDb, attempt: int = 1) -> Execution:
    row = db.add_task(status="running", attempt=attempt)
    return Execution(task_id=row["id"], message_id=row["message_id"], actor="distill",
                     queue="default", attempt=attempt, started_at=time.time(), kwargs={})


@pytest.fixture
def db() -> FakeDb:
    return FakeDb()


@pytest.fixture
def ex(db: FakeDb) -> Execution:
    return running(db)


@pytest.fixture
def ctx(db: FakeDb, ex: Execution) -> Iterator[TaskContext]:
    """What the actor's code is handed for `ex`."""
    sidecar = Sidecar(CheckpointWriter(Connection(db)))  # type: ignore[arg-type]
    yield TaskContext(sidecar, ex, set())  # type: ignore[arg-type]
    sidecar.loop.close()


# -- checkpoints through a DB outage -------------------------------------------------------------


async def test_results_kept_through_an_outage_are_written_first_and_in_order(db: FakeDb) -> None:
    writer = CheckpointWriter(Connection(db))  # type: ignore[arg-type]
    ex = running(db)
    # given the DB goes away while chunks finish
    db.down = ConnectionRefusedError("connection refused")
    assert await writer.save(ex, 0, True, {"digest": "a"})
    assert await writer.save(ex, 1, False, {"error": "bad chunk"})
    assert await writer.save(ex, 2, True, {"digest": "c"})
    assert db.results == {}
    # when it is back and the next chunk is saved
    db.down = None
    assert await writer.save(ex, 3, True, {"digest": "d"})
    # then every kept result was written, oldest first, before the new one
    assert [chunk for _, chunk in db.results] == [0, 1, 2, 3]
    assert await db.saved_chunks(ex.task_id) == {0, 2, 3}
    assert ex.pending == []


async def kept_through_an_outage(db: FakeDb, ex: Execution, chunks: int) -> CheckpointWriter:
    """A writer that kept `chunks` results while the DB was away; the DB is back."""
    writer = CheckpointWriter(Connection(db))  # type: ignore[arg-type]
    db.down = ConnectionResetError("connection reset")
    for chunk in range(chunks):
        assert await writer.save(ex, chunk, True, chunk)
    db.down = None
    return writer


async def test_a_flush_the_outage_interrupts_keeps_what_it_did_not_write(
        db: FakeDb, ex: Execution) -> None:
    writer = await kept_through_an_outage(db, ex, 3)
    # when the DB answers one write and drops again
    original = db.save_result

    async def one_then_gone(*args: Any) -> bool:
        written = await original(*args)
        db.down = ConnectionResetError("reset again")
        return written

    db.save_result = one_then_gone  # type: ignore[method-assign]
    with pytest.raises(ConnectionResetError):
        await writer.flush(ex)
    # then the written one is off the buffer and the others wait, in order
    assert [chunk for chunk, _, _ in ex.pending] == [1, 2]
    assert [chunk for _, chunk in db.results] == [0]


async def test_a_heartbeat_flushing_beside_a_checkpoint_writes_every_result(
        db: FakeDb, ex: Execution) -> None:
    # given results kept through an outage, and a DB that takes a moment per write
    writer = await kept_through_an_outage(db, ex, 5)
    db.latency = 0.001
    # when the heartbeat's flush and two checkpoints run at once
    await asyncio.gather(writer.flush(ex), writer.save(ex, 5, True, 5), writer.flush(ex))
    # then each result was written, none lost and none taken off the buffer twice
    assert await db.saved_chunks(ex.task_id) == set(range(6))
    assert ex.pending == []


async def test_a_result_json_cannot_hold_fails_the_task_and_is_not_kept(db: FakeDb) -> None:
    writer = CheckpointWriter(Connection(db))  # type: ignore[arg-type]
    ex = running(db)
    with pytest.raises(TypeError):
        await writer.save(ex, 0, True, {"tags": {"a", "b"}})
    assert ex.pending == []
    assert await writer.save(ex, 1, True, {"tags": ["a", "b"]})


def test_task_code_checkpoints_through_an_outage_and_all_of_it_is_saved(
        db: FakeDb, ctx: TaskContext) -> None:
    ctx.checkpoint.save(0, {"digest": "a"})
    db.down = OSError("unreachable")
    ctx.checkpoint.save(1, {"digest": "b"})
    ctx.checkpoint.save(2, {"error": "x"}, ok=False)
    # the task sees the chunks it saved as saved, the failed one as still to do
    assert 1 in ctx.checkpoint and 2 not in ctx.checkpoint
    db.down = None
    ctx.checkpoint.save(3, {"digest": "d"})
    assert {chunk: r["ok"] for (_, chunk), r in db.results.items()} == {
        0: True, 1: True, 2: False, 3: True}


# -- the cancel token as task code meets it ------------------------------------------------------


def test_a_later_forced_cancel_hardens_the_first_and_keeps_its_reason() -> None:
    token = CancelToken()
    assert token.cancel("user") is True
    assert token.cancel("time_limit", forced=True) is False
    assert (token.reason, token.forced) == ("user", True)
    # and a later plain cancel does not soften it
    token.cancel("again")
    assert token.forced is True


def test_sleep_wakes_at_once_when_another_thread_cancels(ctx: TaskContext) -> None:
    threading.Timer(0.05, ctx.token.cancel, args=("user",)).start()
    started = time.monotonic()
    with pytest.raises(Cancelled) as stopped:
        ctx.sleep(30)
    assert time.monotonic() - started < 5
    assert stopped.value.reason == "user"


def test_sleep_without_a_cancel_lasts_its_time(ctx: TaskContext) -> None:
    started = time.monotonic()
    ctx.sleep(0.05)
    assert time.monotonic() - started >= 0.05


def test_a_budget_bounds_the_waits_inside_it_and_ends_with_its_block(ctx: TaskContext) -> None:
    started = time.monotonic()
    with ctx.budget(10), ctx.budget(0.05):
        with pytest.raises(DeadlineExceeded):
            ctx.sleep(10)
    assert time.monotonic() - started < 5
    # the outer budget is back once the inner block ends, and none after the outer one
    with ctx.budget(0.1):
        with ctx.budget(10):
            pass
        with pytest.raises(DeadlineExceeded):
            ctx.sleep(2)
    ctx.sleep(0.05)


def test_a_cancel_is_not_swallowed_by_a_broad_except_in_task_code(ctx: TaskContext) -> None:
    def careless(ctx: TaskContext) -> str:
        try:
            ctx.sleep(10)
        except Exception:
            return "swallowed"
        return "slept"

    ctx.token.cancel("user")
    with pytest.raises(Cancelled):
        careless(ctx)


# -- how an execution's end is decided ---------------------------------------------------------


def _runtime() -> Runtime:
    return Runtime(Settings(), celery=None)  # type: ignore[arg-type]


def _actor(fn: Any) -> Actor:
    return Actor(fn=fn, name="sample")


def _fail(ctx: TaskContext) -> None:
    raise ValueError("chunk 3 is broken")


def _stop(ctx: TaskContext) -> None:
    raise Cancelled("user")


@pytest.mark.parametrize("fn, expected", [
    (lambda ctx: None, (TaskStatus.SUCCEEDED, None, None)),
    (_stop, (TaskStatus.CANCELLED, Outcome.COOPERATIVE, "user")),
    (_fail, (TaskStatus.FAILED, Outcome.ERROR, "ValueError('chunk 3 is broken')")),
])
def test_how_the_actors_code_ends_decides_the_status(
        ctx: TaskContext, ex: Execution, fn: Any, expected: tuple[Any, ...]) -> None:
    assert _runtime()._run(_actor(fn), ctx, ex) == expected
    assert ex.in_user_code is False


def test_an_interruptible_actor_stuck_in_its_own_code_is_stopped_by_the_signal(
        ctx: TaskContext, ex: Execution) -> None:
    # given a runtime whose current execution runs code that never looks at its token
    runtime = _runtime()
    runtime.sidecar = type("Current", (), {"current": ex})()  # type: ignore[assignment]
    previous = signal.signal(INTERRUPT_SIGNAL, runtime._on_interrupt)
    main = threading.main_thread().ident
    assert main is not None and threading.get_ident() == main

    def stuck(ctx: TaskContext) -> None:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            pass

    def cancel_and_interrupt() -> None:
        ex.token.cancel("user")
        signal.pthread_kill(main, INTERRUPT_SIGNAL)

    try:
        # when it is cancelled and interrupted, as the sidecar does for such actors
        threading.Timer(0.05, cancel_and_interrupt).start()
        started = time.monotonic()
        status = runtime._run(_actor(stuck), ctx, ex)
        # then its code stops at once and the end is a cooperative cancel
        assert status == (TaskStatus.CANCELLED, Outcome.COOPERATIVE, "user")
        assert time.monotonic() - started < 5
        # and a second interrupt, in cleanup code, raises nothing
        signal.pthread_kill(main, INTERRUPT_SIGNAL)
    finally:
        signal.signal(INTERRUPT_SIGNAL, previous)


def test_an_interrupt_without_a_cancel_or_outside_the_actors_code_raises_nothing(
        ex: Execution) -> None:
    runtime = _runtime()
    runtime.sidecar = type("Current", (), {"current": ex})()  # type: ignore[assignment]
    ex.in_user_code = True
    runtime._on_interrupt(INTERRUPT_SIGNAL, None)  # not cancelled
    ex.token.cancel("user")
    ex.in_user_code = False
    runtime._on_interrupt(INTERRUPT_SIGNAL, None)  # cancelled, but in cleanup
    ex.in_user_code = True
    with pytest.raises(Cancelled):
        runtime._on_interrupt(INTERRUPT_SIGNAL, None)
    assert ex.in_user_code is False  # once only


@pytest.mark.unit
async def test_the_guardian_never_kills_a_process_whose_attempt_already_ended(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Its view of Celery's requests lags: the pool process may already run something else."""
    import os
    import types
    import uuid as uuid_

    from services.worker import guardian as module
    from shared.db.beats import BeatState

    killed: list[int] = []
    monkeypatch.setattr(module.os, "kill", lambda pid, sig: killed.append(pid))
    monkeypatch.setattr(module, "verify_target",
                        lambda *a: (types.SimpleNamespace(pid=os.getpid()), "runs it"))
    monkeypatch.setattr(module, "find_request", lambda *a: object())

    class Db:
        async def record_kill(self, task_id: object, attempt: int) -> None:
            return None  # the row is no longer stopping at this attempt

    g = module.Guardian.__new__(module.Guardian)
    g._armed = {}

    async def db() -> Db:
        return Db()

    g.db = db  # type: ignore[method-assign]
    state = BeatState(id=uuid_.uuid4(), attempt=1, message_id=uuid_.uuid4(), status="cancelling",
                      cancel_reason="user", cancel_forced=False, cancel_deadline=None,
                      due_in=0.0, written=True)
    await g._enforce(state)
    assert killed == []
