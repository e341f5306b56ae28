"""`taskctl monitor`: a running task's progress moves on screen; `monitor kill` ends it."""

from __future__ import annotations

import re

import pexpect

from shared.db import Db
from shared.settings import Settings
from tests.support import submit_task, wait_for
from tests.test_ctl_helpers import arun_ctl, spawn_ctl


def _done(frame: str, task_id: str) -> int:
    """The `done` count in the task's row of a monitor frame."""
    line = next(line for line in frame.splitlines() if task_id in line)
    match = re.search(r"(\d+)/(\d+)/200", line)
    assert match, line
    return int(match.group(1))


async def test_monitor_shows_progress_moving_and_kill_cancels_the_task(
        settings: Settings, db: Db, start_worker) -> None:
    # given a long distill running
    start_worker(concurrency=1)
    row = await submit_task(settings, db, "distill", {"chunks": 200, "chunk_seconds": 0.1})
    task_id = str(row["id"])

    async def progressing() -> bool:
        r = await db.get_task(row["id"])
        return r["status"] == "running" and r["done"] > 0

    await wait_for(progressing, timeout=20, what="the distill to make progress")
    # when the monitor prints two frames a second apart
    first = await arun_ctl(settings, "monitor", "--once")
    second = await wait_for(lambda: _later_frame(settings, task_id, _done(first.stdout, task_id)),
                            timeout=10, interval=0.3, what="a later frame")
    # then both show the task, and its progress moved on
    assert first.returncode == 0, first.stderr
    assert "distill" in first.stdout and "running" in first.stdout
    assert _done(second, task_id) > _done(first.stdout, task_id)

    # and the live view on a terminal redraws with new numbers by itself
    session = spawn_ctl(settings, "monitor", "--interval", "0.3")
    seen: set[int] = set()
    while len(seen) < 2:
        session.expect(r"(\d+)/0/200", timeout=10)
        seen.add(int(session.match.group(1)))
    session.sendintr()
    session.expect(pexpect.EOF, timeout=10)
    session.close()
    assert session.exitstatus == 0

    # when the operator kills it by a prefix of its id
    killed = await arun_ctl(settings, "monitor", "kill", task_id[:8])
    assert killed.returncode == 0, killed.stderr
    assert task_id in killed.stdout

    # then the row ends cancelled, by taskctl, keeping what it finished
    async def ended():
        r = await db.get_task(row["id"])
        return r if r["status"] == "cancelled" else None

    final = await wait_for(ended, timeout=5, what="the task to end cancelled")
    assert final["cancel_by"].startswith("taskctl:")
    assert final["cancel_forced"] is True
    assert final["done"] >= _done(second, task_id)
    saved = await db.saved_chunks(row["id"])
    assert len(saved) == final["done"]
    # and it is no longer on the monitor
    after = await arun_ctl(settings, "monitor", "--once")
    assert task_id not in after.stdout and "nothing running" in after.stdout


async def _later_frame(settings: Settings, task_id: str, done_before: int) -> str | None:
    frame = await arun_ctl(settings, "monitor", "--once")
    return frame.stdout if _done(frame.stdout, task_id) > done_before else None


async def test_monitor_kill_of_an_unknown_task_is_a_clear_error(settings: Settings) -> None:
    out = await arun_ctl(settings, "monitor", "kill", "00000000-0000-4000-8000-000000000000")
    assert out.returncode == 2
    assert "no task" in out.stderr and "Traceback" not in out.stderr
    out = await arun_ctl(settings, "monitor", "kill", "zz")
    assert out.returncode == 2 and "not a task id" in out.stderr
