"""Invariant 6: the kill command signals only a process verifiably running that task."""

from __future__ import annotations

import subprocess
import sys
import uuid

import psutil
import pytest

from services.reaper.celery_ops import CeleryOps
from shared.broker import make_celery
from shared.db import Db
from shared.settings import Settings
from shared.submit import submit
from tests.support import wait_for, wait_gone


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
        assert wait_gone(pa.pid, 3)
        assert pb.is_running() and pb.status() != psutil.STATUS_ZOMBIE
        assert decoy.poll() is None
    finally:
        decoy.kill()
        decoy.wait()
