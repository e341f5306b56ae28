"""taskctl's one-shot commands against real PostgreSQL and Redis (no worker needed):
submit, cancel, cancel-all, resume, and clear errors for bad input."""

from __future__ import annotations

import json
import uuid

import pytest

from shared.db import Db
from shared.settings import Settings
from tests.support import settings_env
from tests.test_ctl_helpers import arun_ctl, publish_actors


@pytest.fixture
async def catalogue(db: Db) -> None:
    await publish_actors(db)


async def _submit(settings: Settings, *args: str) -> uuid.UUID:
    out = await arun_ctl(settings, "submit", *args)
    assert out.returncode == 0, out.stderr
    return uuid.UUID(out.stdout.strip())


async def test_submit_parses_values_as_json_or_text(settings: Settings, db: Db,
                                                    catalogue: None) -> None:
    task_id = await _submit(settings, "distill", "chunks=3", "chunk_seconds=0.5",
                            "text=Plain words. More words.", "--queue", "parked")
    row = await db.get_task(task_id)
    assert row["status"] == "queued" and row["queue"] == "parked"
    assert row["kwargs"]["chunks"] == 3 and row["kwargs"]["chunk_seconds"] == 0.5
    assert row["kwargs"]["text"] == "Plain words. More words."


@pytest.mark.parametrize("args, message", [
    (["nosuchactor"], "no actor named"),
    (["distill", "chunks=many"], "chunks: must be integer"),
    (["distill", "chunks"], "key=value"),
])
async def test_submit_rejects_bad_input_with_exit_2(settings: Settings, db: Db, catalogue: None,
                                                    args: list[str], message: str) -> None:
    before = await db.counts()
    out = await arun_ctl(settings, "submit", *args)
    assert out.returncode == 2, out.stdout
    assert message in out.stderr and "Traceback" not in out.stderr
    assert await db.counts() == before


async def test_cancel_then_resume_one_task(settings: Settings, db: Db, catalogue: None) -> None:
    task_id = await _submit(settings, "distill", "chunks=2", "--queue", "parked")
    # cancelling a queued task ends it at once, audited under taskctl's name
    out = await arun_ctl(settings, "cancel", str(task_id), "--reason", "wrong input", "--json")
    assert out.returncode == 0, out.stderr
    reply = json.loads(out.stdout)
    assert reply["status"] == "cancelled" and reply["changed"] is True
    row = await db.get_task(task_id)
    assert (row["outcome"], row["cancel_reason"]) == ("never_started", "wrong input")
    assert row["cancel_by"].startswith("taskctl:") and "@" in row["cancel_by"]
    # repeating it changes nothing and is not an error
    again = await arun_ctl(settings, "cancel", str(task_id))
    assert again.returncode == 0 and "nothing to do" in again.stdout
    # resume queues it again
    resumed = await arun_ctl(settings, "resume", str(task_id))
    assert resumed.returncode == 0, resumed.stderr
    row = await db.get_task(task_id)
    assert row["status"] == "queued" and row["resumes"] == 1
    # a queued task cannot be resumed: refused, exit 1
    refused = await arun_ctl(settings, "resume", str(task_id))
    assert refused.returncode == 1 and "still active" in refused.stderr


async def test_cancel_all_reports_counts(settings: Settings, db: Db, catalogue: None) -> None:
    for _ in range(3):
        await _submit(settings, "distill", "chunks=2", "--queue", "parked")
    out = await arun_ctl(settings, "cancel-all", "--queue", "parked", "--reason", "drain",
                         "--json")
    assert out.returncode == 0, out.stderr
    reply = json.loads(out.stdout)
    assert reply["cancelled"] >= 3 and reply["cancelling"] == 0
    # every parked task is covered: a claim refuses it (and records it cancelled), as the
    # reaper's sweep would
    for row in await db.pool.fetch("SELECT id, message_id FROM tasks WHERE queue = 'parked'"):
        assert await db.claim_task(row["id"], row["message_id"], "w@test", 1, 30) is None
    assert (await db.counts(history=False))["queued"] == 0
    audit = (await db.list_audit(1))[0]
    assert audit["reason"] == "drain" and audit["by"].startswith("taskctl:")


@pytest.mark.parametrize("args, code, message", [
    (["cancel", "not-a-uuid"], 2, "not a task id"),
    (["cancel", "00000000-0000-4000-8000-000000000000"], 2, "no task with id"),
    (["resume", "12345"], 2, "not a task id"),
    (["resume", "00000000-0000-4000-8000-000000000000"], 2, "no task with id"),
    (["frobnicate"], 2, "invalid choice"),
])
async def test_bad_input_exits_2_without_a_traceback(settings: Settings, args: list[str],
                                                     code: int, message: str) -> None:
    out = await arun_ctl(settings, *args)
    assert out.returncode == code, out.stdout + out.stderr
    assert message in out.stderr
    assert "Traceback" not in out.stderr


async def test_missing_settings_are_reported(settings: Settings) -> None:
    env = {k: v for k, v in settings_env(settings).items() if k != "DATABASE_URL"}
    out = await arun_ctl(settings, "status", env=env)
    assert out.returncode == 2 and "DATABASE_URL" in out.stderr
    env = {**settings_env(settings), "REDIS_URL": "redis://127.0.0.1:1/0"}
    out = await arun_ctl(settings, "status", env=env)
    assert out.returncode == 1 and "cannot reach Redis" in out.stderr
    assert "Traceback" not in out.stderr
