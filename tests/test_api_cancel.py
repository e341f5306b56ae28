"""Cancel, cancel-all and resume through the HTTP API: the first rung of the cancel ladder."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import redis.asyncio as aioredis

from shared.db import Db
from shared.keys import Keys
from shared.queues import message_ids
from shared.settings import Settings
from shared.tokens import BOOTSTRAP_NAME
from tests.fixtures_api import ApiClient, set_status


async def submit(api: ApiClient, auth: dict[str, str], queue: str | None = None) -> dict:
    body: dict[str, Any] = {"actor": "echo", "kwargs": {"text": "x"}}
    if queue:
        body["queue"] = queue
    resp = await api.post("/api/v1/tasks", json=body, headers=auth)
    assert resp.status == 202
    return await resp.json()


async def audits(db: Db) -> list[dict]:
    return [dict(r) for r in await db.pool.fetch("SELECT * FROM cancel_audit ORDER BY id")]


class Channel:
    """Collects what is published on one Redis channel while a test runs."""

    def __init__(self, redis: aioredis.Redis, name: str) -> None:
        self.pubsub = redis.pubsub(ignore_subscribe_messages=True)
        self.name = name

    async def next(self, timeout: float = 2.0) -> dict:
        deadline = asyncio.get_running_loop().time() + timeout
        while asyncio.get_running_loop().time() < deadline:
            message = await self.pubsub.get_message(timeout=0.1)
            if message is not None:
                return json.loads(message["data"])
        raise AssertionError(f"nothing published on {self.name}")


@pytest.fixture
async def cancel_events(redis: aioredis.Redis, keys: Keys) -> AsyncIterator[Channel]:
    channel = Channel(redis, keys.cancel_channel)
    await channel.pubsub.subscribe(keys.cancel_channel)
    yield channel
    await channel.pubsub.aclose()


async def test_cancel_of_a_queued_task_cancels_audits_and_announces(
        api: ApiClient, auth: dict[str, str], actors: dict[str, str], db: Db,
        redis: aioredis.Redis, keys: Keys, settings: Settings) -> None:
    # given
    task = await submit(api, auth)
    tid = uuid.UUID(task["id"])
    row = await db.get_task(tid)
    assert row is not None
    before = len(await audits(db))
    # a cancel of one task goes to that task's channel only, not to the whole fleet's
    cancel_events = Channel(redis, keys.task_cancel_channel(str(tid)))
    await cancel_events.pubsub.subscribe(keys.task_cancel_channel(str(tid)))
    fleet = Channel(redis, keys.cancel_channel)
    await fleet.pubsub.subscribe(keys.cancel_channel)

    # when
    resp = await api.post(f"/api/v1/tasks/{tid}/cancel", json={"reason": "wrong input"},
                          headers=auth)

    # then the row is cancelled, never started
    assert resp.status == 202
    body = await resp.json()
    assert body["status"] == "cancelled" and body["outcome"] == "never_started"
    me = BOOTSTRAP_NAME
    assert body["cancel"]["by"] == me and body["cancel"]["reason"] == "wrong input"
    assert body["cancel"]["forced"] is False
    stored = await db.get_task(tid)
    assert stored is not None and stored["status"] == "cancelled"
    # and audited
    new = (await audits(db))[before:]
    assert len(new) == 1
    audit = new[0]
    assert (audit["by"], audit["reason"], audit["forced"]) == (me, "wrong input", False)
    assert (audit["cancelled"], audit["cancelling"], audit["task_ids"]) == (1, 0, [tid])
    # and the fast paths know: the message id in the cancelled set, an event on the channel
    assert await redis.zscore(keys.cancelled, str(row["message_id"])) is not None
    event = await cancel_events.next()
    assert event["ids"] == [str(tid)] and event["force"] is False
    with pytest.raises(AssertionError, match="nothing published"):
        await fleet.next(timeout=0.5)
    await cancel_events.pubsub.aclose()
    await fleet.pubsub.aclose()


async def test_repeating_a_cancel_answers_200_and_changes_nothing(
        api: ApiClient, auth: dict[str, str], actors: dict[str, str], db: Db) -> None:
    task = await submit(api, auth)
    first = await api.post(f"/api/v1/tasks/{task['id']}/cancel", headers=auth)
    assert first.status == 202
    before = await audits(db)

    again = await api.post(f"/api/v1/tasks/{task['id']}/cancel", json={"reason": "again"},
                           headers=auth)

    assert again.status == 200
    assert await again.json() == await first.json()
    assert await audits(db) == before


async def test_concurrent_cancels_change_the_task_once(
        api: ApiClient, auth: dict[str, str], actors: dict[str, str], db: Db) -> None:
    task = await submit(api, auth)
    before = len(await audits(db))

    replies = await asyncio.gather(*(
        api.post(f"/api/v1/tasks/{task['id']}/cancel", headers=auth) for _ in range(5)))

    assert sorted(r.status for r in replies) == [200, 200, 200, 200, 202]
    assert len(await audits(db)) == before + 1


async def test_cancel_of_a_running_task_sets_a_deadline_and_force_pulls_it_in(
        api: ApiClient, auth: dict[str, str], actors: dict[str, str], db: Db,
        settings: Settings) -> None:
    # given a task a worker has claimed
    task = await submit(api, auth)
    await set_status(db, task["id"], "running", attempt=1, started_at=datetime.now(UTC))

    # when cancelled politely
    resp = await api.post(f"/api/v1/tasks/{task['id']}/cancel", headers=auth)

    # then it is cancelling, with the grace period as its deadline
    assert resp.status == 202
    body = await resp.json()
    assert body["status"] == "cancelling" and body["cancel"]["forced"] is False
    deadline = datetime.fromisoformat(body["cancel"]["deadline"])
    requested = datetime.fromisoformat(body["cancel"]["requested_at"])
    assert deadline - requested == timedelta(seconds=settings.cancel_grace)

    # when forced afterwards: the deadline becomes now
    forced = await api.post(f"/api/v1/tasks/{task['id']}/cancel", json={"force": True},
                            headers=auth)
    assert forced.status == 202
    body = await forced.json()
    assert body["cancel"]["forced"] is True
    assert datetime.fromisoformat(body["cancel"]["deadline"]) < deadline

    # and forcing twice is a repeat
    assert (await api.post(f"/api/v1/tasks/{task['id']}/cancel", json={"force": True},
                           headers=auth)).status == 200


@pytest.mark.parametrize("final", ["succeeded", "failed", "lost"])
async def test_cancel_of_a_finished_task_is_a_409_that_changes_nothing(
        api: ApiClient, auth: dict[str, str], actors: dict[str, str], db: Db,
        redis: aioredis.Redis, keys: Keys, final: str) -> None:
    task = await submit(api, auth)
    await set_status(db, task["id"], final, attempt=1, finished_at=datetime.now(UTC))
    row = await db.get_task(uuid.UUID(task["id"]))
    assert row is not None
    before = await audits(db)

    resp = await api.post(f"/api/v1/tasks/{task['id']}/cancel", json={"force": True},
                          headers=auth)

    assert resp.status == 409
    error = (await resp.json())["error"]
    assert error["code"] == "conflict" and error["details"] == {"status": final}
    assert await db.get_task(uuid.UUID(task["id"])) == row
    assert await audits(db) == before
    assert await redis.zscore(keys.cancelled, str(row["message_id"])) is None


async def test_cancel_all_counts_what_it_did(
        api: ApiClient, auth: dict[str, str], actors: dict[str, str], db: Db,
        settings: Settings, cancel_events: Channel) -> None:
    # given, on a queue of their own: 3 queued, 2 running, 1 cancelling, 1 succeeded
    queue = f"q-{uuid.uuid4().hex[:8]}"
    tasks = [await submit(api, auth, queue) for _ in range(7)]
    for t in tasks[3:5]:
        await set_status(db, t["id"], "running", attempt=1, started_at=datetime.now(UTC))
    await set_status(db, tasks[5]["id"], "cancelling", attempt=1, cancel_forced=False,
                     cancel_requested_at=datetime.now(UTC),
                     cancel_deadline=datetime.now(UTC) + timedelta(seconds=60))
    await set_status(db, tasks[6]["id"], "succeeded", attempt=1)
    other = await submit(api, auth)
    before = len(await audits(db))

    # when
    resp = await api.post("/api/v1/tasks/cancel-all", headers=auth,
                          json={"queue": queue, "force": True, "reason": "maintenance"})

    # then
    assert resp.status == 202
    body = await resp.json()
    assert {k: body[k] for k in ("cancelled", "cancelling", "hastened", "orphans")} == {
        "cancelled": 3, "cancelling": 2, "hastened": 1, "orphans": 0}
    assert body["took_ms"] >= 0
    # the queued ones are covered by the fence: a claim refuses each and records it cancelled
    # (the reaper's sweep would have, a moment later)
    for t in tasks[:3]:
        row = await db.get_task(uuid.UUID(t["id"]))
        assert await db.claim_task(row["id"], row["message_id"], "w@test", 1, 30) is None
    statuses = [(await db.get_task(uuid.UUID(t["id"])))["status"] for t in tasks]
    assert statuses == ["cancelled"] * 3 + ["cancelling"] * 3 + ["succeeded"]
    assert (await db.get_task(uuid.UUID(other["id"])))["status"] == "queued"
    new = (await audits(db))[before:]
    assert len(new) == 1 and new[0]["id"] == body["audit_id"]
    assert (new[0]["cancelled"], new[0]["cancelling"], new[0]["forced"]) == (3, 3, True)
    assert new[0]["by"] == BOOTSTRAP_NAME
    assert new[0]["reason"] == "maintenance" and new[0]["scope"]["queue"] == queue
    event = await cancel_events.next()
    assert event["all"] is True and event["queue"] == queue and event["force"] is True

    # and a second identical call finds nothing left to do
    again = await (await api.post("/api/v1/tasks/cancel-all", headers=auth,
                                  json={"queue": queue})).json()
    assert (again["cancelled"], again["cancelling"], again["hastened"]) == (0, 0, 0)


async def test_cancel_all_takes_an_empty_body(
        api: ApiClient, auth: dict[str, str], actors: dict[str, str], db: Db) -> None:
    task = await submit(api, auth)

    resp = await api.post("/api/v1/tasks/cancel-all", headers=auth)

    assert resp.status == 202
    assert (await resp.json())["cancelled"] >= 1
    row = await db.get_task(uuid.UUID(task["id"]))
    assert await db.claim_task(row["id"], row["message_id"], "w@test", 1, 30) is None
    assert (await db.get_task(uuid.UUID(task["id"])))["status"] == "cancelled"


async def test_resume_of_a_cancelled_task_queues_a_new_message(
        api: ApiClient, auth: dict[str, str], actors: dict[str, str], db: Db,
        redis: aioredis.Redis, keys: Keys) -> None:
    # given a cancelled task
    task = await submit(api, auth)
    tid = uuid.UUID(task["id"])
    assert (await api.post(f"/api/v1/tasks/{tid}/cancel", headers=auth)).status == 202
    old = (await db.get_task(tid))["message_id"]

    # when
    resp = await api.post(f"/api/v1/tasks/{tid}/resume", headers=auth)

    # then
    assert resp.status == 202
    body = await resp.json()
    assert body["status"] == "queued" and body["cancel"] is None and body["resumes"] == 1
    row = await db.get_task(tid)
    assert row["status"] == "queued" and row["message_id"] != old
    waiting = await message_ids(redis, keys, ["default"])
    assert str(row["message_id"]) in waiting and str(old) in waiting

    # and resuming again while queued is refused
    again = await api.post(f"/api/v1/tasks/{tid}/resume", headers=auth)
    assert again.status == 409
    assert (await db.get_task(tid))["message_id"] == row["message_id"]


async def test_cancel_and_resume_publish_one_change_event_each(
        api: ApiClient, auth: dict[str, str], actors: dict[str, str], redis: aioredis.Redis,
        keys: Keys, settings: Settings) -> None:
    # given a task and a watcher of the stream the dashboard reads
    task = await submit(api, auth)
    events = Channel(redis, keys.events_channel)
    await events.pubsub.subscribe(keys.events_channel)
    me = BOOTSTRAP_NAME

    # when it is cancelled, cancelled again (a repeat), and resumed
    assert (await api.post(f"/api/v1/tasks/{task['id']}/cancel", headers=auth)).status == 202
    assert (await api.post(f"/api/v1/tasks/{task['id']}/cancel", headers=auth)).status == 200
    assert (await api.post(f"/api/v1/tasks/{task['id']}/resume", headers=auth)).status == 202

    # then each change is published once, in the same shape as ever; the repeat is silent
    seen = [await events.next(), await events.next()]
    with pytest.raises(AssertionError, match="nothing published"):
        await events.next(timeout=0.5)
    await events.pubsub.aclose()
    for event in seen:
        assert isinstance(event.pop("at"), float)
    assert seen == [
        {"type": "task.cancel_requested", "task_id": task["id"], "status": "cancelled",
         "by": me, "forced": False},
        {"type": "task.resumed", "task_id": task["id"], "status": "queued", "by": me}]


async def test_cancel_and_resume_of_an_unknown_task_are_404(
        api: ApiClient, auth: dict[str, str]) -> None:
    missing = uuid.uuid4()
    for action in ("cancel", "resume"):
        resp = await api.post(f"/api/v1/tasks/{missing}/{action}", headers=auth)
        assert resp.status == 404
        assert (await resp.json())["error"] == {"code": "not_found",
                                                "message": f"no task {missing}"}
