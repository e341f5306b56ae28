"""Pause, pause-all and resume-all through the HTTP API, and what a cancel and a resume do
to a paused task."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import pytest
import redis.asyncio as aioredis

from shared.db import Db
from shared.keys import Keys
from shared.queues import message_ids
from shared.settings import Settings
from shared.tokens import BOOTSTRAP_NAME
from tests.fixtures_api import ApiClient, set_status
from tests.test_api_cancel import Channel, audits, submit


async def running(db: Db, task: dict) -> None:
    await set_status(db, task["id"], "running", attempt=1, started_at=datetime.now(UTC))


async def test_pause_of_a_queued_task_pauses_it_at_once_and_audits(
        api: ApiClient, auth: dict[str, str], actors: dict[str, str], db: Db,
        redis: aioredis.Redis, keys: Keys, settings: Settings) -> None:
    # given
    task = await submit(api, auth)
    tid = uuid.UUID(task["id"])
    before = len(await audits(db))

    # when
    resp = await api.post(f"/api/v1/tasks/{tid}/pause", json={"reason": "maintenance"},
                          headers=auth)

    # then it is paused, never having started, and says who paused it
    assert resp.status == 202
    body = await resp.json()
    me = BOOTSTRAP_NAME
    assert body["status"] == "paused" and body["cancel"] is None
    assert body["pause"]["by"] == me and body["pause"]["reason"] == "maintenance"
    # and a worker that takes its message drops it: the claim refuses a paused task
    row = await db.get_task(tid)
    assert await db.claim_task(tid, row["message_id"], "w@test", 1, 30) is None
    assert await redis.zscore(keys.cancelled, str(row["message_id"])) is not None
    # and it is audited as a pause
    new = (await audits(db))[before:]
    assert len(new) == 1 and new[0]["scope"]["action"] == "pause"
    assert (new[0]["by"], new[0]["task_ids"], new[0]["cancelled"]) == (me, [tid], 0)

    # when paused again: a repeat, nothing changes
    again = await api.post(f"/api/v1/tasks/{tid}/pause", headers=auth)
    assert again.status == 200 and (await again.json())["status"] == "paused"
    assert len(await audits(db)) == before + 1


async def test_pause_of_a_running_task_sets_a_deadline_and_tells_its_process(
        api: ApiClient, auth: dict[str, str], actors: dict[str, str], db: Db,
        redis: aioredis.Redis, keys: Keys, settings: Settings) -> None:
    task = await submit(api, auth)
    await running(db, task)
    channel = Channel(redis, keys.task_cancel_channel(task["id"]))
    await channel.pubsub.subscribe(keys.task_cancel_channel(task["id"]))

    resp = await api.post(f"/api/v1/tasks/{task['id']}/pause", headers=auth)

    assert resp.status == 202
    body = await resp.json()
    assert body["status"] == "pausing"
    row = await db.get_task(uuid.UUID(task["id"]))
    assert row["cancel_deadline"] - row["pause_requested_at"] == timedelta(
        seconds=settings.cancel_grace)
    event = await channel.next()
    assert event["ids"] == [task["id"]] and event["reason"] == "pause"
    await channel.pubsub.aclose()


@pytest.mark.parametrize("state", ["succeeded", "failed", "lost", "cancelled", "cancelling"])
async def test_pause_of_a_finished_or_cancelling_task_is_a_409(
        api: ApiClient, auth: dict[str, str], actors: dict[str, str], db: Db,
        state: str) -> None:
    task = await submit(api, auth)
    await set_status(db, task["id"], state, attempt=1)
    before = await audits(db)

    resp = await api.post(f"/api/v1/tasks/{task['id']}/pause", headers=auth)

    assert resp.status == 409
    assert (await resp.json())["error"]["details"] == {"status": state}
    assert (await db.get_task(uuid.UUID(task["id"])))["status"] == state
    assert await audits(db) == before


async def test_pause_refuses_strangers_unknown_tasks_and_bad_bodies(
        api: ApiClient, auth: dict[str, str], actors: dict[str, str]) -> None:
    task = await submit(api, auth)
    assert (await api.post(f"/api/v1/tasks/{task['id']}/pause")).status == 401
    missing = await api.post(f"/api/v1/tasks/{uuid.uuid4()}/pause", headers=auth)
    assert missing.status == 404 and (await missing.json())["error"]["code"] == "not_found"
    for path, body in ((f"/api/v1/tasks/{task['id']}/pause", {"force": True}),
                       ("/api/v1/tasks/pause-all", {"actor": 3}),
                       ("/api/v1/tasks/resume-all", {"reason": "no such field"})):
        assert (await api.post(path, json=body, headers=auth)).status == 400
    for path in ("/api/v1/tasks/pause-all", "/api/v1/tasks/resume-all"):
        assert (await api.post(path)).status == 401


async def test_pause_all_then_resume_all_in_a_scope(
        api: ApiClient, auth: dict[str, str], actors: dict[str, str], db: Db,
        redis: aioredis.Redis, keys: Keys, settings: Settings) -> None:
    # given, on a queue of their own: 3 queued, 2 running, 1 cancelling, 1 succeeded
    queue = f"q-{uuid.uuid4().hex[:8]}"
    tasks = [await submit(api, auth, queue) for _ in range(7)]
    for t in tasks[3:5]:
        await running(db, t)
    await set_status(db, tasks[5]["id"], "cancelling", attempt=1)
    await set_status(db, tasks[6]["id"], "succeeded", attempt=1)
    other = await submit(api, auth)
    fleet = Channel(redis, keys.cancel_channel)
    await fleet.pubsub.subscribe(keys.cancel_channel)

    # when
    resp = await api.post("/api/v1/tasks/pause-all", headers=auth,
                          json={"queue": queue, "reason": "maintenance"})

    # then the queued are paused, the running pausing, and one event names the running ones
    assert resp.status == 202
    body = await resp.json()
    assert (body["paused"], body["pausing"]) == (3, 2) and body["took_ms"] >= 0
    statuses = [(await db.get_task(uuid.UUID(t["id"])))["status"] for t in tasks]
    assert statuses == ["paused"] * 3 + ["pausing"] * 2 + ["cancelling", "succeeded"]
    assert (await db.get_task(uuid.UUID(other["id"])))["status"] == "queued"
    event = await fleet.next()
    assert sorted(event["ids"]) == sorted(t["id"] for t in tasks[3:5])
    assert event["reason"] == "pause"
    await fleet.pubsub.aclose()
    audit = (await audits(db))[-1]
    assert audit["id"] == body["audit_id"] and audit["reason"] == "maintenance"
    assert audit["scope"] == {"action": "pause", "all": True, "actor": None, "queue": queue,
                              "paused": 3, "pausing": 2}
    # and a second identical call finds nothing left to do
    again = await (await api.post("/api/v1/tasks/pause-all", headers=auth,
                                  json={"queue": queue})).json()
    assert (again["paused"], again["pausing"]) == (0, 0)

    # when resumed while the running ones are still stopping
    old = {t["id"]: (await db.get_task(uuid.UUID(t["id"])))["message_id"] for t in tasks[:5]}
    resp = await api.post("/api/v1/tasks/resume-all", headers=auth, json={"queue": queue})

    # then the paused are queued again at once, the pausing counted as resuming
    assert resp.status == 202
    body = await resp.json()
    assert (body["resumed"], body["resuming"]) == (3, 2)
    for t in tasks[3:5]:
        row = await db.get_task(uuid.UUID(t["id"]))
        assert row["status"] == "pausing" and row["resume_requested_at"] is not None
    # and once their executions stop (one cooperatively, one killed), each is queued again
    assert await db.finish_pause(uuid.UUID(tasks[3]["id"]), 1, outcome="cooperative") == "queued"
    assert await db.record_kill(uuid.UUID(tasks[4]["id"]), 1) == "queued"
    waiting = await message_ids(redis, keys, [queue])
    for t in tasks[:3]:
        assert str((await db.get_task(uuid.UUID(t["id"])))["message_id"]) in waiting
    for t in tasks[:5]:
        row = await db.get_task(uuid.UUID(t["id"]))
        assert row["status"] == "queued" and row["message_id"] != old[t["id"]]
        assert row["pause_requested_at"] is None and row["resumes"] == 0
        assert row["resume_requested_at"] is None and row["outcome"] is None
    assert (await audits(db))[-1]["scope"]["action"] == "resume"


async def test_resume_of_one_paused_task_keeps_its_schedule(
        api: ApiClient, auth: dict[str, str], actors: dict[str, str], db: Db) -> None:
    # given a task scheduled for later, paused
    resp = await api.post("/api/v1/tasks", headers=auth,
                          json={"actor": "echo", "kwargs": {"text": "x"}, "countdown": 600})
    task = await resp.json()
    assert (await api.post(f"/api/v1/tasks/{task['id']}/pause", headers=auth)).status == 202

    # when it is resumed
    resp = await api.post(f"/api/v1/tasks/{task['id']}/resume", headers=auth)

    # then it waits for its time again, and a pause spent no automatic resume
    assert resp.status == 202
    body = await resp.json()
    assert body["status"] == "queued" and body["eta"] == task["eta"] and body["resumes"] == 0
    assert body["pause"] is None


async def test_cancel_of_a_paused_task_ends_it_at_once_and_of_a_pausing_one_wins(
        api: ApiClient, auth: dict[str, str], actors: dict[str, str], db: Db) -> None:
    paused, pausing = await submit(api, auth), await submit(api, auth)
    await running(db, pausing)
    for t in (paused, pausing):
        assert (await api.post(f"/api/v1/tasks/{t['id']}/pause", headers=auth)).status == 202

    first = await (await api.post(f"/api/v1/tasks/{paused['id']}/cancel", headers=auth)).json()
    second = await (await api.post(f"/api/v1/tasks/{pausing['id']}/cancel",
                                   headers=auth)).json()

    assert (first["status"], first["outcome"]) == ("cancelled", "never_started")
    assert second["status"] == "cancelling"
    # and a pause cannot undo a cancel
    assert (await api.post(f"/api/v1/tasks/{pausing['id']}/pause", headers=auth)).status == 409


async def test_pause_of_a_task_a_cancel_all_covers_is_refused(
        api: ApiClient, auth: dict[str, str], actors: dict[str, str], db: Db) -> None:
    queue = f"q-{uuid.uuid4().hex[:8]}"
    task = await submit(api, auth, queue)
    # a cancel-all's fence covers it (written without its inline sweep: the row stays queued)
    async with db.transaction() as conn:
        await db.set_fence(conn, actor=None, queue=queue, reason=None, by="t", forced=False)

    resp = await api.post(f"/api/v1/tasks/{task['id']}/pause", headers=auth)

    assert resp.status == 409
    row = await db.get_task(uuid.UUID(task["id"]))
    assert await db.claim_task(row["id"], row["message_id"], "w@test", 1, 30) is None
    assert (await db.get_task(uuid.UUID(task["id"])))["status"] == "cancelled"


async def test_cancel_all_cancels_paused_tasks_too(
        api: ApiClient, auth: dict[str, str], actors: dict[str, str], db: Db) -> None:
    # given, on a queue of their own: two paused tasks and a queued one
    queue = f"q-{uuid.uuid4().hex[:8]}"
    tasks = [await submit(api, auth, queue) for _ in range(3)]
    for t in tasks[:2]:
        assert (await api.post(f"/api/v1/tasks/{t['id']}/pause", headers=auth)).status == 202

    # when everything on that queue is cancelled
    resp = await api.post("/api/v1/tasks/cancel-all", headers=auth, json={"queue": queue})

    # then the paused ones are cancelled with the queued one, never having started
    assert resp.status == 202 and (await resp.json())["cancelled"] == 3
    for t in tasks:
        row = await db.get_task(uuid.UUID(t["id"]))
        assert (row["status"], row["outcome"]) == ("cancelled", "never_started")


async def test_a_paused_task_a_cancel_all_covers_is_not_resumed_but_swept(
        api: ApiClient, auth: dict[str, str], actors: dict[str, str], db: Db) -> None:
    # given a paused task, and a cancel-all's fence over its queue not yet swept
    queue = f"q-{uuid.uuid4().hex[:8]}"
    task = await submit(api, auth, queue)
    tid = uuid.UUID(task["id"])
    assert (await api.post(f"/api/v1/tasks/{tid}/pause", headers=auth)).status == 202
    async with db.transaction() as conn:
        fence, _ = await db.set_fence(conn, actor=None, queue=queue, reason="gone", by="t",
                                      forced=False)

    # when it is resumed, alone or with everything
    one = await api.post(f"/api/v1/tasks/{tid}/resume", headers=auth)
    every = await api.post("/api/v1/tasks/resume-all", headers=auth, json={"queue": queue})

    # then neither brings it back: the fence's sweep cancels it
    assert one.status == 409 and (await every.json())["resumed"] == 0
    assert (await db.get_task(tid))["status"] == "paused"
    assert await db.sweep_fence(fence, 100) == 1
    row = await db.get_task(tid)
    assert (row["status"], row["cancel_reason"]) == ("cancelled", "gone")


async def test_resume_of_a_pausing_task_is_taken_and_lands_once_it_stopped(
        api: ApiClient, auth: dict[str, str], actors: dict[str, str], db: Db) -> None:
    # given a running task, paused: `pausing` until its execution stops
    task = await submit(api, auth)
    await running(db, task)
    tid = uuid.UUID(task["id"])
    assert (await api.post(f"/api/v1/tasks/{task['id']}/pause", headers=auth)).status == 202

    # when it is resumed
    resp = await api.post(f"/api/v1/tasks/{task['id']}/resume", headers=auth)

    # then the resume is accepted, and the task is queued again when its execution stops
    assert resp.status == 202, await resp.text()
    assert (await resp.json())["status"] == "pausing"
    before = await db.get_task(tid)
    assert await db.finish_pause(tid, 1, outcome="cooperative") == "queued"
    after = await db.get_task(tid)
    assert after["message_id"] != before["message_id"] and after["pause_requested_at"] is None
    # and a later pause of the new attempt is a plain pause again
    await db.pool.execute("UPDATE tasks SET status = 'running', attempt = 2 WHERE id = $1", tid)
    assert (await api.post(f"/api/v1/tasks/{task['id']}/pause", headers=auth)).status == 202
    assert await db.finish_pause(tid, 2, outcome="cooperative") == "paused"


async def test_a_cancel_of_a_task_queued_again_after_running_says_it_was_requeued(
        api: ApiClient, auth: dict[str, str], actors: dict[str, str], db: Db) -> None:
    # given a task that ran once and waits for its next attempt (preempted, say), one that
    # ran once and was paused while queued again, and one that never ran
    tasks = [await submit(api, auth) for _ in range(3)]
    await set_status(db, tasks[0]["id"], "queued", attempt=1)
    await set_status(db, tasks[1]["id"], "queued", attempt=1)
    assert (await api.post(f"/api/v1/tasks/{tasks[1]['id']}/pause", headers=auth)).status == 202

    # when each is cancelled
    outcomes = []
    for t in tasks:
        resp = await api.post(f"/api/v1/tasks/{t['id']}/cancel", headers=auth)
        assert resp.status in (200, 202), await resp.text()
        outcomes.append((await db.get_task(uuid.UUID(t["id"])))["outcome"])

    # then only the one that never ran reads never_started
    assert outcomes == ["requeued", "requeued", "never_started"]
