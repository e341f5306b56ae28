"""Submitting, listing and reading tasks through the HTTP API."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import pytest
import redis.asyncio as aioredis
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from services.api.errors import error_middleware
from shared.db import Db
from shared.errors import TaskNotFound
from shared.keys import Keys
from shared.queues import message_ids
from tests.fixtures_api import ApiClient, set_status


async def submit(api: ApiClient, auth: dict[str, str], **body: object) -> dict:
    resp = await api.post("/api/v1/tasks", json=body, headers=auth)
    assert resp.status == 202, await resp.text()
    return await resp.json()


async def test_submit_creates_a_queued_row_and_a_celery_message(
        api: ApiClient, auth: dict[str, str], actors: dict[str, str], db: Db,
        redis: aioredis.Redis, keys: Keys) -> None:
    # when
    resp = await api.post("/api/v1/tasks", json={"actor": "echo", "kwargs": {"text": "hi"}},
                          headers=auth)
    # then
    assert resp.status == 202
    task = await resp.json()
    assert resp.headers["Location"] == f"/api/v1/tasks/{task['id']}"
    assert task["status"] == "queued" and task["actor"] == "echo" and task["queue"] == "default"
    # Defaults come from the actor's signature.
    assert task["kwargs"] == {"text": "hi", "times": 1, "tags": None}
    assert task["cancel"] is None and task["attempt"] == 0
    assert task["progress"] == {"done": 0, "failed": 0, "total": None, "percent": None,
                                "current_chunk": None, "eta_seconds": None}
    row = await db.get_task(uuid.UUID(task["id"]))
    assert row is not None and row["status"] == "queued"
    assert str(row["message_id"]) in await message_ids(redis, keys, ["default"])


async def test_submit_uses_the_actor_queue_or_the_one_asked_for(
        api: ApiClient, auth: dict[str, str], actors: dict[str, str], redis: aioredis.Redis,
        keys: Keys, db: Db) -> None:
    on_actor_queue = await submit(api, auth, actor="crunch", kwargs={"rows": 3})
    elsewhere = await submit(api, auth, actor="crunch", kwargs={"rows": 3}, queue="urgent")

    assert on_actor_queue["queue"] == "batch" and elsewhere["queue"] == "urgent"
    urgent = await message_ids(redis, keys, ["urgent"])
    row = await db.get_task(uuid.UUID(elsewhere["id"]))
    assert row is not None and urgent == {str(row["message_id"])}


async def test_countdown_and_eta_schedule_the_task(
        api: ApiClient, auth: dict[str, str], actors: dict[str, str]) -> None:
    before = datetime.now(UTC)
    delayed = await submit(api, auth, actor="echo", kwargs={"text": "x"}, countdown=120)
    at = (before + timedelta(hours=2)).replace(microsecond=0)
    scheduled = await submit(api, auth, actor="echo", kwargs={"text": "x"},
                             eta=at.isoformat().replace("+00:00", "Z"))

    delay = datetime.fromisoformat(delayed["eta"]) - before
    assert timedelta(seconds=119) < delay < timedelta(seconds=125)
    assert datetime.fromisoformat(scheduled["eta"]) == at


async def test_get_returns_the_task_and_404_for_an_unknown_id(
        api: ApiClient, auth: dict[str, str], actors: dict[str, str]) -> None:
    task = await submit(api, auth, actor="echo", kwargs={"text": "x"})

    resp = await api.get(f"/api/v1/tasks/{task['id']}")
    assert resp.status == 200
    assert await resp.json() == task

    missing = await api.get(f"/api/v1/tasks/{uuid.uuid4()}")
    assert missing.status == 404
    assert (await missing.json())["error"]["code"] == "not_found"


async def test_list_filters_and_pages_through_every_task_once(
        api: ApiClient, auth: dict[str, str], actors: dict[str, str], db: Db) -> None:
    # given seven crunch tasks among others, one of them failed
    mine = [(await submit(api, auth, actor="crunch", kwargs={"rows": i}))["id"]
            for i in range(7)]
    await submit(api, auth, actor="echo", kwargs={"text": "other"})
    await set_status(db, mine[0], "failed")

    # when paging through with limit 3
    seen: list[str] = []
    pages = 0
    cursor: str | None = None
    while True:
        params = {"actor": "crunch", "limit": "3", **({"cursor": cursor} if cursor else {})}
        resp = await api.get("/api/v1/tasks", params=params)
        assert resp.status == 200
        page = await resp.json()
        pages += 1
        seen += [t["id"] for t in page["items"]]
        assert all(t["actor"] == "crunch" for t in page["items"])
        cursor = page["next"]
        if cursor is None:
            break

    # then newest first, each exactly once; the earlier crunch tasks of this module too
    crunch_total = await db.pool.fetchval("SELECT count(*) FROM tasks WHERE actor = 'crunch'")
    assert len(seen) == len(set(seen)) == crunch_total
    assert pages == -(-crunch_total // 3)
    assert seen[:7] == mine[::-1]

    failed = await (await api.get("/api/v1/tasks", params={"status": "failed"})).json()
    assert [t["id"] for t in failed["items"]] == [mine[0]]
    assert failed["next"] is None


async def test_results_lists_saved_chunks_in_order(
        api: ApiClient, auth: dict[str, str], actors: dict[str, str], db: Db) -> None:
    task = await submit(api, auth, actor="crunch", kwargs={"rows": 2})
    await set_status(db, task["id"], "running", attempt=1)
    tid = uuid.UUID(task["id"])
    assert await db.save_result(tid, 1, 1, True, {"words": 4})
    assert await db.save_result(tid, 1, 0, False, {"error": "boom"})

    resp = await api.get(f"/api/v1/tasks/{task['id']}/results")

    assert resp.status == 200
    body = await resp.json()
    assert body["task_id"] == task["id"]
    assert [(i["chunk"], i["ok"], i["result"], i["attempt"]) for i in body["items"]] == [
        (0, False, {"error": "boom"}, 1), (1, True, {"words": 4}, 1)]
    missing = await api.get(f"/api/v1/tasks/{uuid.uuid4()}/results")
    assert missing.status == 404


async def test_progress_reports_percent_and_eta(
        api: ApiClient, auth: dict[str, str], actors: dict[str, str], db: Db) -> None:
    task = await submit(api, auth, actor="crunch", kwargs={"rows": 8})
    await set_status(db, task["id"], "running", attempt=1)
    assert await db.heartbeat(uuid.UUID(task["id"]), 1, done=3, failed=1, total=8, current=4,
                              eta_seconds=12.5)

    got = await (await api.get(f"/api/v1/tasks/{task['id']}")).json()

    assert got["progress"] == {"done": 3, "failed": 1, "total": 8, "percent": 50.0,
                               "current_chunk": 4, "eta_seconds": 12.5}
    assert got["heartbeat_at"] is not None and got["status"] == "running"


async def test_actors_lists_the_catalogue(api: ApiClient, actors: dict[str, str]) -> None:
    resp = await api.get("/api/v1/actors")

    assert resp.status == 200
    items = {a["name"]: a for a in (await resp.json())["items"]}
    assert {"echo", "crunch"} <= set(items)
    assert items["crunch"]["queue"] == "batch"
    assert items["echo"]["params"]["times"] == {
        "min": 1, "max": 5, "types": ["integer"], "nullable": False, "required": False,
        "default": 1}


@pytest.mark.unit
@pytest.mark.parametrize("raised, status, code", [
    (TaskNotFound(uuid.UUID(int=7)), 404, "not_found"),
    # A lookup that failed somewhere inside is a bug of ours, never the client's "not found".
    (KeyError("status"), 500, "internal_error"),
])
async def test_only_the_domain_says_not_found(raised: Exception, status: int, code: str) -> None:
    async def handler(request: web.Request) -> web.Response:
        raise raised

    app = web.Application(middlewares=[error_middleware])
    app.router.add_get("/thing", handler)
    async with TestClient(TestServer(app)) as client:
        resp = await client.get("/thing")
        assert resp.status == status
        assert (await resp.json())["error"]["code"] == code
