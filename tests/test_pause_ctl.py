"""taskctl pause, pause-all and resume-all against real PostgreSQL and Redis (no worker
needed: queued tasks are paused at once)."""

from __future__ import annotations

import json
import uuid

from shared.db import Db
from shared.settings import Settings
from tests.test_ctl_helpers import arun_ctl, publish_actors


async def _submit(settings: Settings, queue: str) -> uuid.UUID:
    out = await arun_ctl(settings, "submit", "distill", "chunks=2", "--queue", queue)
    assert out.returncode == 0, out.stderr
    return uuid.UUID(out.stdout.strip())


async def test_pause_one_then_pause_all_and_resume_all_in_a_queue(settings: Settings,
                                                                  db: Db) -> None:
    await publish_actors(db)
    queue = f"parked-{uuid.uuid4().hex[:6]}"
    first = await _submit(settings, queue)

    # a queued task is paused at once, under taskctl's name
    out = await arun_ctl(settings, "pause", str(first), "--reason", "disk swap", "--json")
    assert out.returncode == 0, out.stderr
    reply = json.loads(out.stdout)
    assert (reply["status"], reply["changed"], reply["pause_reason"]) == (
        "paused", True, "disk swap")
    assert reply["pause_by"].startswith("taskctl:")
    again = await arun_ctl(settings, "pause", str(first))
    assert again.returncode == 0 and "nothing to do, already paused" in again.stdout

    # pause-all takes the rest of the queue, resume-all gives every one a fresh message
    others = [await _submit(settings, queue) for _ in range(2)]
    out = await arun_ctl(settings, "pause-all", "--queue", queue, "--json")
    assert out.returncode == 0, out.stderr
    assert {k: json.loads(out.stdout)[k] for k in ("paused", "pausing")} == {
        "paused": 2, "pausing": 0}
    before = {t: (await db.get_task(t))["message_id"] for t in (first, *others)}
    out = await arun_ctl(settings, "resume-all", "--queue", queue)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("resumed 3 paused in ")
    for t, old in before.items():
        row = await db.get_task(t)
        assert row["status"] == "queued" and row["message_id"] != old

    # a pause of a finished task is refused with exit 1, and says why
    await db.pool.execute("UPDATE tasks SET status = 'succeeded' WHERE id = $1", first)
    out = await arun_ctl(settings, "pause", str(first))
    assert out.returncode == 1 and "already succeeded" in out.stderr
