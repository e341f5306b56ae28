"""Operating the API: health, readiness, metrics, the OpenAPI document, status and events."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from typing import Any

import aiohttp
import pytest
import redis.asyncio as aioredis
from aiohttp.test_utils import TestServer
from prometheus_client.parser import text_string_to_metric_families

from services.api.app import create_app
from services.api.auth import Access, need_of
from services.api.events import HUB
from shared.db import Db
from shared.keys import Keys
from shared.settings import Settings
from tests.fixtures_api import ApiClient, set_status
from tests.support import wait_for

DEAD_REDIS = "redis://127.0.0.1:1/0"
DEAD_POSTGRES = "postgresql://postgres@127.0.0.1:1/postgres"


async def test_healthz_and_readyz_when_all_is_well(api: ApiClient) -> None:
    assert (await api.get("/healthz")).status == 200
    ready = await api.get("/readyz")
    assert ready.status == 200
    assert (await ready.json())["checks"] == {"database": "ok", "redis": "ok"}


def broken(settings: Settings, outage: str) -> Settings:
    if outage == "redis down":
        return settings.with_(redis_url=DEAD_REDIS)
    if outage == "postgres down":
        return settings.with_(database_url=DEAD_POSTGRES)
    base = settings.database_url.rsplit("/", 1)[0]
    return settings.with_(database_url=f"{base}/no_such_database")


@pytest.mark.parametrize(("outage", "down"), [
    ("redis down", "redis"), ("postgres down", "database"), ("database missing", "database")])
async def test_an_outage_makes_readyz_503_but_the_process_stays_up(
        settings: Settings, aiohttp_client: Any, outage: str, down: str) -> None:
    api = await aiohttp_client(create_app(broken(settings, outage)))

    assert (await api.get("/healthz")).status == 200
    started = time.monotonic()
    ready = await api.get("/readyz")
    assert time.monotonic() - started < 2.5
    assert ready.status == 503
    error = (await ready.json())["error"]
    assert error["code"] == "not_ready" and down in error["message"]
    assert error["details"][down] != "ok"
    assert [k for k, v in error["details"].items() if v == "ok"] == (
        ["database"] if down == "redis" else ["redis"])


async def test_a_dead_database_answers_503_not_500(
        settings: Settings, aiohttp_client: Any, auth: dict[str, str]) -> None:
    api = await aiohttp_client(create_app(settings.with_(database_url=DEAD_POSTGRES)))

    for method, path, body in [
        ("GET", "/api/v1/tasks", None),
        ("GET", f"/api/v1/tasks/{uuid.uuid4()}", None),
        ("POST", "/api/v1/tasks", {"actor": "echo", "kwargs": {"text": "x"}}),
        ("POST", f"/api/v1/tasks/{uuid.uuid4()}/cancel", {}),
        ("POST", "/api/v1/tasks/cancel-all", {}),
        ("GET", "/api/v1/system/status", None),
    ]:
        resp = await api.request(method, path, json=body, headers=auth)
        assert resp.status == 503, (method, path, await resp.text())
        error = (await resp.json())["error"]
        assert error["code"] == "unavailable" and error["details"]["dependency"] == "database"


async def test_a_dead_redis_answers_503_for_submit_and_events(
        settings: Settings, aiohttp_client: Any, auth: dict[str, str], db: Db,
        actors: dict[str, str]) -> None:
    api = await aiohttp_client(create_app(settings.with_(redis_url=DEAD_REDIS)))
    before = await db.pool.fetchval("SELECT count(*) FROM tasks")

    submit = await api.post("/api/v1/tasks", json={"actor": "echo", "kwargs": {"text": "x"}},
                            headers=auth)
    events = await api.get("/api/v1/events", headers=auth)

    assert submit.status == 503 and events.status == 503
    # A task that could not be enqueued does not exist.
    assert await db.pool.fetchval("SELECT count(*) FROM tasks") == before


def samples(text: str) -> dict[tuple[str, frozenset], float]:
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


async def test_metrics_count_requests_by_route_submissions_and_cancels(
        api: ApiClient, auth: dict[str, str], actors: dict[str, str]) -> None:
    for _ in range(2):
        await api.get(f"/api/v1/tasks/{uuid.uuid4()}")
    task = await (await api.post("/api/v1/tasks", headers=auth,
                                 json={"actor": "echo", "kwargs": {"text": "x"}})).json()
    await api.post(f"/api/v1/tasks/{task['id']}/cancel", headers=auth)
    await api.get("/no/such/route")

    resp = await api.get("/metrics")

    assert resp.status == 200 and resp.content_type == "text/plain"
    got = samples(await resp.text())
    route = "/api/v1/tasks/{id}"
    assert got[("taskreaper_http_requests_total", frozenset(
        {"method": "GET", "route": route, "status": "404"}.items()))] == 2
    assert got[("taskreaper_http_requests_total", frozenset(
        {"method": "GET", "route": "unmatched", "status": "404"}.items()))] == 1
    assert got[("taskreaper_http_request_duration_seconds_count", frozenset(
        {"method": "GET", "route": route}.items()))] == 2
    assert got[("taskreaper_tasks_submitted_total", frozenset({"actor": "echo"}.items()))] == 1
    assert got[("taskreaper_cancel_requests_total", frozenset(
        {"scope": "one", "forced": "false"}.items()))] == 1
    assert got[("taskreaper_cancelled_tasks_total", frozenset(
        {"effect": "cancelled"}.items()))] == 1


async def test_openapi_describes_every_route_and_secures_every_mutation(
        api: ApiClient) -> None:
    resp = await api.get("/api/v1/openapi.json")
    assert resp.status == 200
    doc = await resp.json()

    served = {(r.method.lower(), r.resource.canonical) for r in api.app.router.routes()
              if r.method != "HEAD" and r.resource is not None}
    described = {(m, p) for p, ops in doc["paths"].items() for m in ops}
    assert described == served
    # Every operation says whether it needs a token as the role table guards it; these reads
    # are public (PUBLIC_READS), the event stream and every mutation are not.
    for path, ops in doc["paths"].items():
        for method, op in ops.items():
            need = need_of(method.upper(), path)
            secured = need is not Access.PUBLIC and need is not Access.READ
            assert ("security" in op) == secured, (method, path)
            assert secured == ({"401", "403"} <= set(op["responses"])), (method, path)
    assert "security" in doc["paths"]["/api/v1/events"]["get"]
    assert all("security" in op for op in doc["paths"]["/api/v1/tasks/cancel-all"].values())
    assert doc["components"]["securitySchemes"]["bearer"] == {"type": "http", "scheme": "bearer"}


async def test_system_status_reports_counts_queues_executions_and_the_reaper(
        api: ApiClient, auth: dict[str, str], actors: dict[str, str], db: Db,
        redis: aioredis.Redis, keys: Keys) -> None:
    # given: a running task with a live execution record, a running one without, a finished
    # one still registered, a registered id with no row, and an expired registration
    tasks = [await (await api.post("/api/v1/tasks", headers=auth, json={
        "actor": "crunch", "kwargs": {"rows": 1}})).json() for _ in range(3)]
    ok, unregistered, undead = (t["id"] for t in tasks)
    stranger = str(uuid.uuid4())
    await set_status(db, ok, "running", attempt=1)
    await set_status(db, unregistered, "running", attempt=1)
    await set_status(db, undead, "succeeded", attempt=1)
    now = time.time()
    for tid, node, expires in [(ok, "w1@host", now + 30), (undead, "w2@host", now + 30),
                               (stranger, "w2@host", now + 30), (str(uuid.uuid4()), "w1@host",
                                                                 now - 5)]:
        await redis.zadd(keys.executions, {tid: expires})
        await redis.hset(keys.execution_info, tid, json.dumps({
            "task_id": tid, "attempt": 1, "message_id": str(uuid.uuid4()), "node": node,
            "host": "host", "pid": 4242, "pid_started": now - 60, "started_at": now - 1}))
    await redis.hset(keys.workers, "w1@host", json.dumps({"host": "host", "pid": 4200}))
    await redis.set(keys.leader, "reaper-1")
    await redis.hset(keys.reaper_status, mapping={"reconciled_at": "1700000000.5", "role": "leader"})
    counts = await db.counts()

    # when
    resp = await api.get("/api/v1/system/status")

    # then
    assert resp.status == 200
    status = await resp.json()
    assert status["counts"] == counts and status["counts"]["running"] >= 2
    assert status["queues"]["batch"]["ready"] == await redis.llen(keys.celery_key("batch")) >= 3
    assert "default" in status["queues"] and status["unacked"] == 0
    executions = {e["task_id"]: e for e in status["executions"]}
    assert set(executions) == {ok, undead, stranger}
    assert executions[ok]["pid"] == 4242 and executions[ok]["expires"] == pytest.approx(now + 30)
    assert status["expired_executions"] == 1
    assert status["workers"] == [
        {"node": "w1@host", "host": "host", "pid": 4200, "executions": 1},
        {"node": "w2@host", "executions": 2}]
    assert status["reaper"] == {"leader": "reaper-1",
                                "status": {"reconciled_at": 1700000000.5, "role": "leader"}}
    assert status["inconsistencies"] == {"running_without_execution": [unregistered],
                                         "execution_of_terminal_task": [undead],
                                         "execution_without_task": [stranger]}


async def test_system_status_without_a_reaper(settings: Settings, aiohttp_client: Any) -> None:
    # A namespace nobody has written to yet.
    api = await aiohttp_client(create_app(settings.with_(key_prefix=f"empty-{uuid.uuid4().hex}")))

    status = await (await api.get("/api/v1/system/status")).json()

    assert status["reaper"] == {"leader": None, "status": None}
    assert status["executions"] == [] and status["unacked"] == 0


async def read_until(stream: aiohttp.StreamReader, wanted: str, timeout: float = 3.0) -> str:
    seen = ""
    async with asyncio.timeout(timeout):
        while wanted not in seen:
            line = await stream.readline()
            if not line:
                raise AssertionError(f"stream ended before {wanted!r}; got {seen!r}")
            seen += line.decode()
    return seen


async def test_events_relay_task_changes_with_keepalives(
        api: ApiClient, auth: dict[str, str], actors: dict[str, str], redis: aioredis.Redis,
        keys: Keys) -> None:
    resp = await api.get("/api/v1/events", headers=auth)
    assert resp.status == 200 and resp.content_type == "text/event-stream"
    await read_until(resp.content, ": connected\n\n")

    task = await (await api.post("/api/v1/tasks", headers=auth,
                                 json={"actor": "echo", "kwargs": {"text": "x"}})).json()
    seen = await read_until(resp.content, "\n\n")
    await redis.publish(keys.events_channel, "not json")
    await redis.publish(keys.events_channel, json.dumps({"type": "task.finished", "n": 1}))
    seen += await read_until(resp.content, "task.finished")
    seen += await read_until(resp.content, ": keepalive")

    frames = [f for f in seen.split("\n\n") if f.startswith("event:")]
    first = dict(line.split(": ", 1) for line in frames[0].splitlines())
    assert first["event"] == "task.submitted"
    assert json.loads(first["data"])["task_id"] == task["id"]
    assert "not json" not in seen
    resp.close()


async def test_events_stream_ends_when_the_client_leaves(
        api: ApiClient, auth: dict[str, str], redis: aioredis.Redis, keys: Keys) -> None:
    hub = api.app[HUB]
    resp = await api.get("/api/v1/events", headers=auth)
    await read_until(resp.content, ": connected\n\n")
    assert len(hub.streams) == 1
    assert (await redis.pubsub_numsub(keys.events_channel))[0][1] == 1

    resp.close()

    async def ended() -> bool:
        return not hub.streams

    await wait_for(ended, timeout=3, what="the stream to end")
    # The process keeps its one subscription for the next stream.
    assert (await redis.pubsub_numsub(keys.events_channel))[0][1] == 1


async def test_events_stream_ends_when_the_app_shuts_down(
        settings: Settings, auth: dict[str, str]) -> None:
    server = TestServer(create_app(settings, sse_keepalive=0.3))
    await server.start_server()
    async with aiohttp.ClientSession() as session:
        resp = await session.get(server.make_url("/api/v1/events"), headers=auth)
        await read_until(resp.content, ": connected\n\n")

        started = time.monotonic()
        await server.close()

        assert time.monotonic() - started < 3
        assert await resp.content.read() in (b"", b": keepalive\n\n")
        assert resp.content.at_eof()
