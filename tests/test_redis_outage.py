"""The API while its Redis is down: what was committed in PostgreSQL answers as committed,
what needed Redis before anything changed answers 503, and nothing answers 500.

Redis carries two kinds of traffic for the API. The Celery message of a submit or a resume
is part of the operation: without it nothing may change. The cancel event, the cancelled
set, the orphan scan request and the task change events are news about a change the DB
already holds: losing them delays the news, it does not undo the change.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import pytest
from aiohttp import ClientResponse
from redis.asyncio.connection import AbstractConnection

from services.api.app import create_app
from services.api.state import REDIS
from shared.db import Db
from shared.settings import Settings
from tests.faults import RedisServer
from tests.fixtures_api import ApiClient, count_tasks, set_status


@pytest.fixture
async def outage_api(settings: Settings, private_redis: RedisServer,
                     aiohttp_client: Any) -> ApiClient:
    """The production app in front of a Redis of the test's own, which the test may kill."""
    return await aiohttp_client(create_app(settings.with_(redis_url=private_redis.url),
                                           sse_keepalive=0.3))


async def submit(api: ApiClient, auth: dict[str, str], queue: str | None = None) -> dict:
    body: dict[str, Any] = {"actor": "echo", "kwargs": {"text": "x"}}
    if queue is not None:
        body["queue"] = queue
    resp = await api.post("/api/v1/tasks", json=body, headers=auth)
    assert resp.status == 202, await resp.text()
    return await resp.json()


async def running(api: ApiClient, auth: dict[str, str], db: Db, queue: str | None = None
                  ) -> dict:
    """A task as a worker leaves it once it has claimed it; no worker is needed."""
    task = await submit(api, auth, queue)
    await set_status(db, task["id"], "running", attempt=1, started_at=datetime.now(UTC))
    return task


async def status_of(db: Db, task_id: str) -> str:
    row = await db.get_task(uuid.UUID(task_id))
    assert row is not None, task_id
    return row["status"]


async def unavailable(resp: ClientResponse, dependency: str) -> None:
    """The contract's answer for an outage before anything changed."""
    assert resp.status == 503, await resp.text()
    assert resp.headers["Retry-After"] == "1"
    error = (await resp.json())["error"]
    assert error["code"] == "unavailable", error
    assert error["details"] == {"dependency": dependency}


async def test_cancel_of_a_running_task_is_202_when_redis_dies_under_it(
        outage_api: ApiClient, auth: dict[str, str], actors: dict[str, str], db: Db,
        private_redis: RedisServer) -> None:
    # given two running tasks
    first, second = [await running(outage_api, auth, db) for _ in range(2)]
    # and then Redis dies
    private_redis.stop()

    # when the first is cancelled
    resp = await outage_api.post(f"/api/v1/tasks/{first['id']}/cancel",
                                 json={"reason": "outage drill"}, headers=auth)

    # then the committed cancel is what the client hears: workers learn it from their DB poll
    assert resp.status == 202, await resp.text()
    body = await resp.json()
    assert body["id"] == first["id"] and body["status"] == "cancelling"
    assert body["cancel"]["reason"] == "outage drill"
    assert await status_of(db, first["id"]) == "cancelling"
    assert await status_of(db, second["id"]) == "running"
    # and repeating it reports where the first one got to
    again = await outage_api.post(f"/api/v1/tasks/{first['id']}/cancel", headers=auth)
    assert again.status == 200, await again.text()
    assert (await again.json())["status"] == "cancelling"


async def test_cancel_of_a_queued_task_is_202_with_redis_down(
        outage_api: ApiClient, auth: dict[str, str], actors: dict[str, str], db: Db,
        private_redis: RedisServer) -> None:
    # given a queued task, and Redis gone
    task = await submit(outage_api, auth)
    private_redis.stop()

    # when
    resp = await outage_api.post(f"/api/v1/tasks/{task['id']}/cancel", headers=auth)

    # then it never starts: the claim reads the DB, which says cancelled
    assert resp.status == 202, await resp.text()
    body = await resp.json()
    assert body["id"] == task["id"] and body["status"] == "cancelled"
    assert await status_of(db, task["id"]) == "cancelled"


async def test_submit_with_the_broker_down_is_503_and_leaves_no_row(
        outage_api: ApiClient, auth: dict[str, str], actors: dict[str, str], db: Db,
        private_redis: RedisServer) -> None:
    # given the broker gone
    private_redis.stop()
    before = await count_tasks(db)

    # when
    resp = await outage_api.post("/api/v1/tasks", json={"actor": "echo", "kwargs": {"text": "x"}},
                                 headers=auth)

    # then the client may retry, and a task that could not be enqueued does not exist
    await unavailable(resp, "broker")
    assert await count_tasks(db) == before


async def test_cancel_all_is_202_with_redis_down(
        outage_api: ApiClient, auth: dict[str, str], actors: dict[str, str], db: Db,
        private_redis: RedisServer) -> None:
    # given one queued and one running task on a queue of their own, and Redis gone
    queue = f"q-{uuid.uuid4().hex[:8]}"
    queued = await submit(outage_api, auth, queue)
    active = await running(outage_api, auth, db, queue)
    private_redis.stop()

    # when
    resp = await outage_api.post("/api/v1/tasks/cancel-all", json={"queue": queue},
                                 headers=auth)

    # then the committed cancel is the answer
    assert resp.status == 202, await resp.text()
    assert isinstance((await resp.json())["audit_id"], int)
    assert await status_of(db, active["id"]) == "cancelling"
    # and the queued one is covered: its claim is refused and records it cancelled
    row = await db.get_task(uuid.UUID(queued["id"]))
    assert await db.claim_task(row["id"], row["message_id"], "w@test", 1, 30) is None
    assert await status_of(db, queued["id"]) == "cancelled"


async def cancelled_task(api: ApiClient, auth: dict[str, str], db: Db) -> dict:
    task = await submit(api, auth)
    assert (await api.post(f"/api/v1/tasks/{task['id']}/cancel", headers=auth)).status == 202
    assert await status_of(db, task["id"]) == "cancelled"
    return task


async def test_resume_with_the_broker_down_is_503(
        outage_api: ApiClient, auth: dict[str, str], actors: dict[str, str], db: Db,
        private_redis: RedisServer) -> None:
    # given a cancelled task, and the broker gone
    task = await cancelled_task(outage_api, auth, db)
    private_redis.stop()

    # when
    resp = await outage_api.post(f"/api/v1/tasks/{task['id']}/resume", headers=auth)

    # then
    await unavailable(resp, "broker")


async def test_resume_with_the_broker_down_changes_nothing(
        outage_api: ApiClient, auth: dict[str, str], actors: dict[str, str], db: Db,
        private_redis: RedisServer) -> None:
    # given a cancelled task, and the broker gone
    task = await cancelled_task(outage_api, auth, db)
    before = await db.get_task(uuid.UUID(task["id"]))
    private_redis.stop()

    # when
    resp = await outage_api.post(f"/api/v1/tasks/{task['id']}/resume", headers=auth)

    # then a 503 means the client may retry: the row is as it was
    await unavailable(resp, "broker")
    assert await db.get_task(uuid.UUID(task["id"])) == before


async def test_readyz_and_status_are_503_with_redis_down(
        outage_api: ApiClient, private_redis: RedisServer) -> None:
    # given an API that has been talking to Redis
    assert (await outage_api.get("/readyz")).status == 200
    private_redis.stop()

    # when
    ready = await outage_api.get("/readyz")
    status = await outage_api.get("/api/v1/system/status")

    # then
    assert ready.status == 503, await ready.text()
    error = (await ready.json())["error"]
    assert error["code"] == "not_ready"
    assert error["details"]["database"] == "ok" and error["details"]["redis"] != "ok"
    # the status board is built from Redis: without it there is nothing true to show
    await unavailable(status, "redis")


@pytest.fixture
async def exhausted_pool(outage_api: ApiClient) -> AsyncIterator[list[AbstractConnection]]:
    """Every connection of the API's Redis pool checked out, as a hundred open event streams
    would hold them; a smaller limit gets there with fewer sockets."""
    pool = outage_api.app[REDIS].connection_pool
    pool.max_connections = 2
    held = [await pool.get_connection() for _ in range(pool.max_connections)]
    yield held
    for connection in held:
        await pool.release(connection)


async def test_submit_is_202_when_the_redis_pool_is_exhausted(
        outage_api: ApiClient, auth: dict[str, str], actors: dict[str, str], db: Db,
        exhausted_pool: list[AbstractConnection]) -> None:
    # given no free connection in the API's Redis pool; the broker has its own

    # when
    resp = await outage_api.post("/api/v1/tasks", json={"actor": "echo", "kwargs": {"text": "x"}},
                                 headers=auth)

    # then the task exists and is enqueued; only its change event was lost
    assert resp.status == 202, await resp.text()
    body = await resp.json()
    assert await status_of(db, body["id"]) == "queued"
