"""The heartbeat's way from a pool process to its worker's main process, without servers:
the local link both ways, and what a pool process does with the answers it gets, or with
none (it writes its beats itself)."""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from collections.abc import Awaitable
from typing import Any

import pytest

from services.worker.beat_link import Answer, Heard, NodeLink, PoolLink
from services.worker.checkpoint_writer import CheckpointWriter
from services.worker.execution import Execution
from services.worker.heartbeat import Heartbeat
from shared.db.beats import Beat
from shared.settings import Settings

pytestmark = pytest.mark.unit


def _node() -> str:
    return f"unit-{uuid.uuid4().hex[:8]}@host"


def _beat(task_id: uuid.UUID | None = None, attempt: int = 1) -> Beat:
    return Beat(task_id=task_id or uuid.uuid4(), attempt=attempt, done=2, failed=0, total=9,
                current=3, eta_seconds=7.0, rss_bytes=100, cpu_percent=1.5)


async def _until(check: Any, timeout: float = 2.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.005)


# -- the link ---------------------------------------------------------------------------------

async def test_a_report_reaches_the_main_process_and_its_answer_comes_back() -> None:
    # given a main process's end and a pool process's end of one worker's link
    loop, node = asyncio.get_running_loop(), _node()
    main = NodeLink(node, pid=4242)
    heard: list[Answer] = []
    pool = PoolLink(node, heard.append, main_pid=4242, pid=4343)
    assert main.open(loop) and pool.open(loop)
    try:
        # when the pool process reports a beat
        beat = _beat()
        assert pool.report(beat)
        await _until(lambda: main.reports(within=5.0))
        # then the main process has it, by the process's pid, aged
        [(pid, got)] = main.reports(within=5.0)
        assert pid == 4343
        assert got.task_id == beat.task_id and got.done == 2 and got.rss_bytes == 100
        assert 0 <= got.age < 1.0
        # and its answer reaches the pool process
        main.answer(4343, Answer(str(beat.task_id), 1, Heard.WRITTEN, "cancelling", "user"))
        await _until(lambda: heard)
        assert heard == [Answer(str(beat.task_id), 1, Heard.WRITTEN, "cancelling", "user")]
    finally:
        pool.close()
        main.close()
        main.remove()


async def test_a_report_nobody_takes_says_so() -> None:
    loop, node = asyncio.get_running_loop(), _node()
    pool = PoolLink(node, lambda _: None, main_pid=4242, pid=4343)
    main = NodeLink(node, pid=4242)
    assert pool.open(loop)
    try:
        # no main process yet
        assert not pool.report(_beat())
        # one that listens
        assert main.open(loop)
        assert pool.report(_beat())
        # one that has gone
        main.close()
        assert not pool.report(_beat())
    finally:
        pool.close()
        main.remove()


async def test_the_socket_of_a_pool_process_that_is_gone_is_removed() -> None:
    # given a pool process that reported once and then ended without closing its end
    loop, node = asyncio.get_running_loop(), _node()
    main = NodeLink(node, pid=4242)
    pool = PoolLink(node, lambda _: None, main_pid=4242, pid=4343)
    assert main.open(loop) and pool.open(loop)
    try:
        pool.report(_beat())
        await _until(lambda: main.reports(within=5.0))
        endpoint = pool._endpoint
        assert endpoint is not None and endpoint._sock is not None
        loop.remove_reader(endpoint._sock.fileno())
        endpoint._sock.close()  # as a process's end leaves it: the file stays
        assert endpoint.path.exists()
        # when the main process answers it
        main.answer(4343, Answer(str(uuid.uuid4()), 1, Heard.WRITTEN, "running"))
        # then its socket file is gone and so is its report
        assert not endpoint.path.exists()
        assert main.reports(within=5.0) == []
    finally:
        main.close()
        main.remove()


async def test_a_process_silent_for_longer_than_asked_is_dropped() -> None:
    loop, node = asyncio.get_running_loop(), _node()
    main = NodeLink(node, pid=4242)
    pool = PoolLink(node, lambda _: None, main_pid=4242, pid=4343)
    assert main.open(loop) and pool.open(loop)
    try:
        pool.report(_beat())
        await _until(lambda: main.reports(within=5.0))
        await asyncio.sleep(0.1)
        assert main.reports(within=0.05) == []
        # and it stays dropped until it reports again
        assert main.reports(within=5.0) == []
    finally:
        pool.close()
        main.close()
        main.remove()


# -- a pool process's heartbeat ---------------------------------------------------------------

class StubDb:
    """The two statements a pool process's own beat uses."""

    def __init__(self) -> None:
        self.beats = 0
        self.row: dict[str, Any] | None = {"status": "running", "cancel_reason": None,
                                           "cancel_forced": None}
        self.state: dict[str, Any] | None = None

    async def heartbeat(self, *args: Any, **kwargs: Any) -> dict[str, Any] | None:
        self.beats += 1
        return self.row

    async def execution_state(self, task_id: uuid.UUID) -> dict[str, Any] | None:
        return self.state


class Connection:
    def __init__(self, db: StubDb) -> None:
        self.db = db

    async def get(self) -> StubDb:
        return self.db


class Registry:
    async def refresh(self, ex: Execution) -> None:
        pass


class Thread:
    def __init__(self) -> None:
        self.held: set[asyncio.Future[Any]] = set()

    def spawn(self, work: Awaitable[Any]) -> asyncio.Future[Any]:
        task = asyncio.ensure_future(work)
        self.held.add(task)
        return task


class Sidecar:
    """What the heartbeat uses of its sidecar; the link's main process is this test's parent
    process's pid, as a pool process's is its parent's."""

    def __init__(self, db: StubDb, **settings: Any) -> None:
        self.settings = Settings.from_env({}, **settings)
        self.node = _node()
        self.pid = os.getpid()
        self.loop = asyncio.get_running_loop()
        self.current: Execution | None = None
        self.registry = Registry()
        self.checkpoints = CheckpointWriter(Connection(db))  # type: ignore[arg-type]
        self.thread = Thread()
        self._db = db
        self.triggered: list[tuple[str, bool, str]] = []

    async def db(self) -> StubDb:
        return self._db

    def trigger(self, ex: Execution, reason: str, *, forced: bool, via: str) -> None:
        self.triggered.append((reason, forced, via))

    async def publish(self, kind: str, ex: Execution, **fields: Any) -> None:
        pass


def _execution() -> Execution:
    return Execution(task_id=uuid.uuid4(), message_id=uuid.uuid4(), actor="distill",
                     queue="default", attempt=1, started_at=time.time(), kwargs={})


class Beating:
    """A heartbeat running for one execution, and, if asked, a main process that answers
    every report with `answer(beat)` (None: it takes the report and never answers)."""

    def __init__(self, sc: Sidecar, answer: Any = "no main process") -> None:
        self.sc, self.answer = sc, answer
        self.heartbeat = Heartbeat(sc)  # type: ignore[arg-type]
        self.main = NodeLink(sc.node, pid=os.getppid())
        self.ex = _execution()
        self._tasks: list[asyncio.Task[Any]] = []

    async def __aenter__(self) -> Beating:
        if self.answer != "no main process":
            assert self.main.open(self.sc.loop)
            self._tasks.append(asyncio.create_task(self._serve()))
        self.heartbeat.start()
        self.sc.current = self.ex
        self._tasks.append(asyncio.create_task(self.heartbeat.run(self.ex)))
        return self

    async def _serve(self) -> None:
        while True:
            for pid, beat in self.main.reports(within=1.0):
                reply = self.answer(beat)
                if reply is not None:
                    self.main.answer(pid, reply)
            await asyncio.sleep(0.01)

    async def __aexit__(self, *exc: object) -> None:
        self.ex.finished.set()
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self.heartbeat.link.close()
        self.main.close()
        self.main.remove()


async def test_without_a_main_process_a_pool_process_writes_its_own_beats() -> None:
    db = StubDb()
    async with Beating(Sidecar(db, heartbeat_interval=0.02)):
        await _until(lambda: db.beats >= 3)


async def test_a_stop_the_main_process_reads_back_reaches_the_token_and_nothing_is_written_here(
        ) -> None:
    # given a main process that writes every beat and finds the row being cancelled
    db = StubDb()
    sc = Sidecar(db, heartbeat_interval=0.02)

    def cancelling(beat: Beat) -> Answer:
        return Answer(str(beat.task_id), beat.attempt, Heard.WRITTEN, "cancelling", "user")

    async with Beating(sc, cancelling):
        # then the token is set through the fallback poll, and the process wrote nothing itself
        await _until(lambda: sc.triggered)
        assert sc.triggered[0] == ("user", False, "poll")
        await asyncio.sleep(0.1)
        assert db.beats == 0


async def test_a_row_gone_to_another_attempt_is_told_apart_by_the_process_itself() -> None:
    # given a row that another attempt took over
    db = StubDb()
    db.row, db.state = None, {"attempt": 2, "status": "running"}
    sc = Sidecar(db, heartbeat_interval=0.02)

    def gone(beat: Beat) -> Answer:
        return Answer(str(beat.task_id), beat.attempt, Heard.GONE)

    async with Beating(sc, gone):
        # then its own statement tells why, and the execution stops
        await _until(lambda: sc.triggered)
        assert sc.triggered[0] == ("superseded", False, "poll")


async def test_a_main_process_that_stops_answering_is_taken_over() -> None:
    # given a main process that takes the reports but never answers, and a patience of
    # a third of the heartbeat timeout (0.15 s)
    db = StubDb()
    sc = Sidecar(db, heartbeat_interval=0.02, heartbeat_timeout=0.45)
    async with Beating(sc, lambda beat: None):
        await asyncio.sleep(0.08)
        assert db.beats == 0
        # then the process writes its beats itself once its patience is out
        await _until(lambda: db.beats >= 2)


async def test_answers_about_another_execution_are_ignored() -> None:
    db = StubDb()
    sc = Sidecar(db, heartbeat_interval=0.02)

    def about_another(beat: Beat) -> Answer:
        return Answer(str(uuid.uuid4()), beat.attempt, Heard.WRITTEN, "cancelling", "user")

    async with Beating(sc, about_another):
        await asyncio.sleep(0.15)
        assert sc.triggered == []
