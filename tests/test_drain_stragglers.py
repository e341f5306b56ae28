"""The drain's kills and hand-backs, without a worker: a task is handed back only once its
pool process is confirmed gone or done with it, the kills run side by side, and the
request is checked again right before the signal."""

from __future__ import annotations

import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import psutil
import pytest

from services.worker import stragglers
from services.worker.shutdown import kill_after


@pytest.fixture
def child() -> Iterator[subprocess.Popen[bytes]]:
    """A process of ours, standing in for a pool process (its parent is this process)."""
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    yield proc
    proc.kill()
    proc.wait()


def _request(message_id: str, task_id: uuid.UUID, pid: int | None) -> SimpleNamespace:
    return SimpleNamespace(id=message_id, kwargs={"task_id": str(task_id)}, worker_pid=pid)


def _pool(monkeypatch: pytest.MonkeyPatch, held: list[Any], *found: Any) -> None:
    """Celery's held deliveries, and what each look-up of the running request finds."""
    monkeypatch.setattr(stragglers, "worker_state", SimpleNamespace(reserved_requests=held))
    answers = list(found)
    monkeypatch.setattr(stragglers, "find_request",
                        lambda m, t: answers.pop(0) if len(answers) > 1 else answers[0])


def _alive(proc: subprocess.Popen[bytes]) -> bool:
    try:
        return psutil.Process(proc.pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def test_the_kill_is_confirmed_once_the_process_is_gone(
        monkeypatch: pytest.MonkeyPatch, child: subprocess.Popen[bytes]) -> None:
    tid = uuid.uuid4()
    req = _request("m1", tid, child.pid)
    _pool(monkeypatch, [req], req)
    assert stragglers.kill("m1", tid, "node") is True
    assert not _alive(child)


def test_a_delivery_no_pool_process_accepted_is_neither_killed_nor_confirmed(
        monkeypatch: pytest.MonkeyPatch) -> None:
    tid = uuid.uuid4()
    req = _request("m1", tid, None)
    _pool(monkeypatch, [req], req)
    assert stragglers.kill("m1", tid, "node") is False
    # on its way to the pool, not yet in the running ones: not confirmed either
    _pool(monkeypatch, [req], None)
    assert stragglers.kill("m1", tid, "node") is False


def test_the_request_is_checked_again_right_before_the_signal(
        monkeypatch: pytest.MonkeyPatch, child: subprocess.Popen[bytes]) -> None:
    tid = uuid.uuid4()
    req = _request("m1", tid, child.pid)
    # ended between the verification and the signal: the process lives on, the task is done
    _pool(monkeypatch, [], req, None)
    assert stragglers.kill("m1", tid, "node") is True
    assert _alive(child)
    # still held, but no longer in that process: not killed, not confirmed
    _pool(monkeypatch, [req], req, _request("m1", tid, child.pid + 1))
    assert stragglers.kill("m1", tid, "node") is False
    assert _alive(child)


def test_the_kills_run_side_by_side(monkeypatch: pytest.MonkeyPatch) -> None:
    def slow_kill(message_id: str, task_id: uuid.UUID, node: str) -> bool:
        time.sleep(stragglers.KILL_WAIT)
        return message_id != "m2"

    monkeypatch.setattr(stragglers, "kill", slow_kill)
    targets = {f"m{i}": uuid.uuid4() for i in range(6)}
    started = time.monotonic()
    confirmed = stragglers.kill_each(targets, "node")
    assert time.monotonic() - started < 3 * stragglers.KILL_WAIT
    assert confirmed == {m: m != "m2" for m in targets}


class FakeHand:
    def __init__(self) -> None:
        self.handed: list[tuple[uuid.UUID, str]] = []
        self.db = SimpleNamespace(terminated=False)
        self.db.terminate = lambda: setattr(self.db, "terminated", True)

    async def execution(self, task_id: uuid.UUID, message_id: str) -> str | None:
        self.handed.append((task_id, message_id))
        return "queued"


async def test_only_what_is_confirmed_stopped_is_handed_back(
        monkeypatch: pytest.MonkeyPatch) -> None:
    running, unaccepted, died = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    _pool(monkeypatch, [_request("run", running, 1), _request("new", unaccepted, None)], None)
    monkeypatch.setattr(stragglers, "kill", lambda m, t, n: m == "run")
    hand = FakeHand()
    seen = {"run": running, "new": unaccepted, "dead": died}
    assert await stragglers.finish(Any, Any, "node", hand, seen) is True  # type: ignore[arg-type]
    assert sorted(hand.handed) == sorted([(running, "run"), (died, "dead")])
    assert hand.db.terminated


async def test_without_a_connection_made_ahead_one_is_made_then(
        monkeypatch: pytest.MonkeyPatch) -> None:
    tid = uuid.uuid4()
    _pool(monkeypatch, [_request("run", tid, 1)], None)
    monkeypatch.setattr(stragglers, "kill", lambda m, t, n: True)
    hand = FakeHand()

    async def connect(*args: Any) -> FakeHand:
        return hand

    monkeypatch.setattr(stragglers, "connect_hand", connect)
    assert await stragglers.finish(Any, Any, "node", None, {}) is True  # type: ignore[arg-type]
    assert hand.handed == [(tid, "run")]


def test_more_stragglers_are_killed_earlier_within_the_grace() -> None:
    assert kill_after(30.0) == 27.0
    assert kill_after(30.0, 20) < kill_after(30.0, 3) <= 27.0
    assert kill_after(5.0, 100) == 2.5  # never more than half the grace kept
