"""Invariant 6: only a process that is provably the one meant is ever signalled.

The check has one implementation, `shared.processes.ProcessIdentity` (pid + start time).
These tests hit it directly, through taskctl's kill path (`services.ctl.procs`) and through
the worker's kill command (`services.worker.control`): each time a decoy whose pid is reused
or whose start time is wrong survives, and the real process is killed.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from types import SimpleNamespace

import psutil
import pytest

from services.ctl import procs
from services.reaper.celery_ops import CeleryOps
from services.worker import control
from shared.broker import make_celery
from shared.db import Db
from shared.processes import (
    ALIVE,
    GONE,
    REUSED,
    START_TOLERANCE,
    ProcessIdentity,
    is_gone,
    wait_gone,
)
from shared.settings import Settings
from shared.submit import submit
from tests.support import wait_for

SLEEP = [sys.executable, "-c", "import time; time.sleep(60)"]


def _alive(proc: subprocess.Popen[bytes]) -> bool:
    return proc.poll() is None and not is_gone(psutil.Process(proc.pid))


@pytest.fixture
def exited() -> ProcessIdentity:
    """The identity of a process that has exited and been reaped: its pid is free again, and
    any process that holds a pid now started later (the sleepers: beyond the tolerance)."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    identity = ProcessIdentity.of(psutil.Process(proc.pid))  # a zombie until waited for
    proc.wait()
    time.sleep(3 * START_TOLERANCE)
    return identity


@pytest.fixture
def sleepers(exited: ProcessIdentity) -> Iterator[list[subprocess.Popen[bytes]]]:
    """Two idle child processes: by convention [target, decoy]."""
    started = [subprocess.Popen(SLEEP) for _ in range(2)]
    yield started
    for proc in started:
        proc.kill()
        proc.wait()


# -- ProcessIdentity ----------------------------------------------------------------------------


def test_identity_of_a_live_process_verifies_as_that_process(sleepers) -> None:
    target, _ = sleepers
    identity = ProcessIdentity.of(psutil.Process(target.pid))
    proc, state = identity.check()
    assert state == ALIVE and proc is not None and proc.pid == target.pid
    me = ProcessIdentity.current().verify()
    assert me is not None and me.pid == os.getpid()


def test_announced_start_time_matches_within_the_tolerance_only(sleepers) -> None:
    # given the start time as a worker announces it: through JSON, as Redis and Celery carry it
    target, _ = sleepers
    raw = json.loads(json.dumps({"pid": target.pid,
                                 "pid_started": psutil.Process(target.pid).create_time()}))
    announced = ProcessIdentity(pid=raw["pid"], started=raw["pid_started"])
    # then it names the process, and so does a value off by less than the tolerance
    assert announced.verify() is not None
    near = ProcessIdentity(pid=target.pid, started=announced.started + START_TOLERANCE / 2)
    assert near.verify() is not None
    # but not a start time further off: that is another process with the same pid
    far = ProcessIdentity(pid=target.pid, started=announced.started + 2 * START_TOLERANCE)
    assert far.check() == (None, REUSED)
    assert _alive(target)


def test_a_reused_pid_is_never_taken_for_the_process_that_had_it(
        exited: ProcessIdentity, sleepers) -> None:
    # given the record of a process that is gone, and a live decoy now holding its pid
    # (simulated: the decoy's pid with the gone process's start time)
    _, decoy = sleepers
    gone = exited
    reused = ProcessIdentity(pid=decoy.pid, started=gone.started)
    # then the decoy is not that process
    assert reused.check() == (None, REUSED)
    assert reused.verify() is None and reused.is_gone()
    assert gone.check()[1] in (GONE, REUSED)  # its own pid may belong to someone else by now
    assert _alive(decoy)


def test_an_exited_process_is_gone_before_and_after_its_parent_reaps_it() -> None:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    identity = ProcessIdentity.of(psutil.Process(proc.pid))
    assert identity.wait_gone(10)  # a zombie: exited, its status not yet collected
    assert identity.check() == (None, GONE)
    proc.wait()
    assert identity.is_gone()


def test_wait_gone_returns_only_what_still_runs(sleepers) -> None:
    target, decoy = sleepers
    t, d = (ProcessIdentity.of(psutil.Process(p.pid)) for p in sleepers)
    target_proc, decoy_proc = psutil.Process(target.pid), psutil.Process(decoy.pid)
    target.kill()
    assert wait_gone([t, d], 0.3) == [d]
    assert wait_gone([target_proc, decoy_proc], 0.3) == [decoy_proc]
    assert not d.wait_gone(0.1) and _alive(decoy)


# -- taskctl: services.ctl.procs ----------------------------------------------------------------


def _local(pid: int, created: float, role: str = "orphan") -> procs.LocalProcess:
    return procs.LocalProcess(proc=psutil.Process(pid), role=role, node="n@here",
                              created=created)


def test_taskctl_kills_the_real_process_and_refuses_reused_pids_and_itself(
        exited: ProcessIdentity, sleepers) -> None:
    # given a recorded process, a decoy recorded with another start time, and taskctl itself
    target, decoy = sleepers
    found = procs.HostWorkers(host="here", entries=[], states={}, processes=[
        _local(target.pid, psutil.Process(target.pid).create_time()),
        _local(decoy.pid, psutil.Process(decoy.pid).create_time() - 100),
        _local(os.getpid(), psutil.Process().create_time()),
    ])
    assert procs.verified(decoy.pid, exited.started) == (None, REUSED)
    # when
    report = procs.kill_local(found, timeout=5)
    # then only the real one was signalled
    assert report.killed == [target.pid] and report.survivors == []
    assert dict(report.refused) == {decoy.pid: REUSED,
                                    os.getpid(): "taskctl itself or its parent"}
    assert target.wait(5) is not None
    assert _alive(decoy)


# -- the worker's kill command: services.worker.control -----------------------------------------


def test_worker_kill_command_verifies_pid_and_start_time(
        sleepers, monkeypatch: pytest.MonkeyPatch) -> None:
    # given two pool-process stand-ins (children of this process), one executing a message
    target, decoy = sleepers
    message_id, task_id = str(uuid.uuid4()), str(uuid.uuid4())
    request = SimpleNamespace(id=message_id, kwargs={"task_id": task_id}, worker_pid=target.pid)
    monkeypatch.setattr(control.worker_state, "active_requests", [request])
    started = psutil.Process(target.pid).create_time()
    refusals = {
        "reused pid": (target.pid, started - 100),
        "another process": (decoy.pid, psutil.Process(decoy.pid).create_time()),
    }
    for what, (pid, pid_started) in refusals.items():
        reply = control.taskreaper_kill(None, message_id, task_id, pid, pid_started)
        assert reply["killed"] is False, (what, reply)
    assert "reused" in control.verify_target(message_id, task_id, target.pid, started - 100)[1]
    assert control.verify_target(message_id, str(uuid.uuid4()), None, None)[0] is None
    assert _alive(target) and _alive(decoy)
    # when the kill names it exactly
    reply = control.taskreaper_kill(None, message_id, task_id, target.pid, started)
    # then it alone dies
    assert reply == {"ok": True, "killed": True, "pid": target.pid}
    assert target.wait(5) is not None
    assert _alive(decoy)


@pytest.fixture
def ops(settings: Settings):
    app = make_celery(settings)
    yield CeleryOps(app)
    app.close()


async def _running_pair(db: Db, ops: CeleryOps, start_worker):
    worker = start_worker(concurrency=2)
    rows = [await submit(db, ops.celery, actor="stubborn", kwargs={"seconds": 60})
            for _ in range(2)]

    async def both_running():
        got = [await db.get_task(r["id"]) for r in rows]
        return got if all(g["status"] == "running" for g in got) else None

    return worker, await wait_for(both_running, timeout=20, what="two running tasks")


async def test_refuses_every_target_that_is_not_verifiably_that_execution(
        db: Db, ops: CeleryOps, start_worker) -> None:
    worker, (a, b) = await _running_pair(db, ops, start_worker)
    node = worker.node
    pa, pb = psutil.Process(a["pid"]), psutil.Process(b["pid"])
    decoy = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)",
                              "celery", "worker", "services.worker"])
    try:
        attempts = {
            # the pid now runs another task (a pool child that moved on)
            "other task's pid": dict(message_id=str(a["message_id"]), task_id=str(a["id"]),
                                     pid=pb.pid, pid_started=pb.create_time()),
            # same pid, different start time: the pid was reused
            "reused pid": dict(message_id=str(a["message_id"]), task_id=str(a["id"]),
                               pid=pa.pid, pid_started=pa.create_time() - 100),
            # a look-alike process that is no pool child of this worker
            "decoy": dict(message_id=str(a["message_id"]), task_id=str(a["id"]),
                          pid=decoy.pid, pid_started=psutil.Process(decoy.pid).create_time()),
            # a message that is not executing at all
            "unknown message": dict(message_id=str(uuid.uuid4()), task_id=str(a["id"]),
                                    pid=pa.pid, pid_started=pa.create_time()),
            # the right message claimed for a different task id
            "wrong task id": dict(message_id=str(a["message_id"]), task_id=str(b["id"]),
                                  pid=pa.pid, pid_started=pa.create_time()),
        }
        for what, args in attempts.items():
            replies = await ops.kill(node=node, **args)
            assert replies and not any(r.get("killed") for r in replies), (what, replies)
        for proc in (pa, pb, psutil.Process(decoy.pid)):
            assert proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
        # and the verified target is killed, alone
        replies = await ops.kill(node=node, message_id=str(a["message_id"]), task_id=str(a["id"]),
                                 pid=pa.pid, pid_started=pa.create_time())
        assert [r.get("killed") for r in replies] == [True]
        assert ProcessIdentity.of(pa).wait_gone(3)
        assert pb.is_running() and pb.status() != psutil.STATUS_ZOMBIE
        assert decoy.poll() is None
    finally:
        decoy.kill()
        decoy.wait()
