"""What every answer of the API is held to: security headers, CORS only for configured
origins, a path's own methods, readiness without exception text, and responses of bounded
size (the list without kwargs, pages that stop at a byte budget)."""

from __future__ import annotations

import re
import uuid
from typing import Any

import pytest

from services.api.app import create_app
from services.api.serialize import CURSOR_PATTERN
from shared.db import Db
from shared.settings import Settings
from tests.fixtures_api import ApiClient

ECHO = {"actor": "echo", "kwargs": {"text": "hi"}}
SECURITY = {"X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer",
            "X-Frame-Options": "DENY"}

pytestmark = pytest.mark.usefixtures("actors")


@pytest.mark.parametrize(("method", "path", "status"), [
    ("GET", "/api/v1/tasks", 200), ("GET", "/healthz", 200), ("GET", "/metrics", 200),
    ("GET", f"/api/v1/tasks/{uuid.UUID(int=1)}", 404), ("GET", "/no/such/thing", 404),
    ("POST", "/api/v1/tasks", 401), ("PUT", "/api/v1/tasks", 405),
    ("GET", "/static/app.css", 200), ("GET", "/", 200)])
async def test_every_answer_carries_the_security_headers(
        api: ApiClient, method: str, path: str, status: int) -> None:
    resp = await api.request(method, path)
    assert resp.status == status
    for name, value in SECURITY.items():
        assert resp.headers[name] == value, name
    assert "frame-ancestors 'none'" in resp.headers["Content-Security-Policy"]


async def test_the_dashboard_keeps_its_own_strict_policy(api: ApiClient) -> None:
    page = await api.get("/")
    policy = page.headers["Content-Security-Policy"]
    assert "script-src 'self'" in policy and "default-src 'none'" in policy
    assert page.headers["Cache-Control"] == "no-cache"


async def test_the_event_stream_carries_them_too(api: ApiClient, auth: dict[str, str]) -> None:
    resp = await api.get("/api/v1/events", headers=auth)
    assert resp.status == 200
    assert all(resp.headers[name] == value for name, value in SECURITY.items())
    resp.close()


async def test_cors_is_off_unless_origins_are_configured(
        settings: Settings, aiohttp_client: Any, auth: dict[str, str]) -> None:
    origin = {"Origin": "https://ops.example"}
    closed = await aiohttp_client(create_app(settings))
    resp = await closed.get("/api/v1/tasks", headers=origin)
    assert "Access-Control-Allow-Origin" not in resp.headers

    opened = await aiohttp_client(create_app(settings.with_(cors_origins="https://ops.example")))
    allowed = await opened.get("/api/v1/tasks", headers=origin)
    other = await opened.get("/api/v1/tasks", headers={"Origin": "https://evil.example"})
    preflight = await opened.options("/api/v1/tasks/cancel-all", headers={
        **origin, "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization"})

    assert allowed.headers["Access-Control-Allow-Origin"] == "https://ops.example"
    assert "Access-Control-Allow-Origin" not in other.headers
    assert preflight.status == 204
    assert preflight.headers["Access-Control-Allow-Origin"] == "https://ops.example"
    assert "Authorization" in preflight.headers["Access-Control-Allow-Headers"]


async def test_a_literal_path_answers_only_its_own_methods(api: ApiClient,
                                                           auth: dict[str, str]) -> None:
    options = await api.options("/api/v1/tasks/cancel-all")
    get = await api.get("/api/v1/tasks/cancel-all", headers=auth)

    assert options.status == 204 and options.headers["Allow"] == "OPTIONS, POST"
    assert get.status == 405 and get.headers["Allow"] == "OPTIONS, POST"
    assert (await get.json())["error"]["code"] == "method_not_allowed"
    # a task id in the same place still reads as one
    tid = uuid.uuid4()
    assert (await api.options(f"/api/v1/tasks/{tid}")).headers["Allow"] == "GET, HEAD, OPTIONS"


async def test_readyz_names_what_is_down_never_the_error(settings: Settings,
                                                         aiohttp_client: Any) -> None:
    api = await aiohttp_client(create_app(settings.with_(
        redis_url="redis://secret-user:hunter2@127.0.0.1:1/0")))

    resp = await api.get("/readyz")

    assert resp.status == 503
    error = (await resp.json())["error"]
    assert error["details"] == {"database": "ok", "redis": "down"}
    assert "hunter2" not in await resp.text() and "Error" not in await resp.text()


async def submit(api: ApiClient, auth: dict[str, str], text: str) -> str:
    resp = await api.post("/api/v1/tasks", headers=auth,
                          json={"actor": "echo", "kwargs": {"text": text}})
    assert resp.status == 202, await resp.text()
    return (await resp.json())["id"]


async def test_the_list_carries_no_kwargs_and_the_detail_does(
        api: ApiClient, auth: dict[str, str]) -> None:
    tid = await submit(api, auth, "a document " * 1000)

    listed = await (await api.get("/api/v1/tasks?actor=echo&limit=5")).json()
    detail = await (await api.get(f"/api/v1/tasks/{tid}")).json()

    item = next(i for i in listed["items"] if i["id"] == tid)
    assert "kwargs" not in item
    assert detail["kwargs"]["text"].startswith("a document")
    assert {k: v for k, v in detail.items() if k != "kwargs"} == item


async def test_a_page_stops_at_the_byte_budget_and_goes_on_from_there(
        settings: Settings, aiohttp_client: Any, auth: dict[str, str], db: Db) -> None:
    # given tasks whose errors make each summary about 600 bytes, and a 4 KiB budget
    api = await aiohttp_client(create_app(settings.with_(max_response_bytes=4096)))
    actor = f"pg{uuid.uuid4().hex[:8]}"
    await db.upsert_actor(actor, "default", {"text": {"types": ["string"], "required": True,
                                                      "nullable": False}}, {})
    made = []
    for _ in range(20):
        resp = await api.post("/api/v1/tasks", headers=auth,
                              json={"actor": actor, "kwargs": {"text": "x"}})
        made.append((await resp.json())["id"])
    await db.pool.execute("UPDATE tasks SET error = repeat('e', 2000) WHERE actor = $1", actor)

    # when the list is read page by page, asking for all of them at once
    seen: list[str] = []
    cursor = None
    while True:
        query = f"/api/v1/tasks?actor={actor}&limit=500" + (f"&cursor={cursor}" if cursor else "")
        resp = await api.get(query)
        body = await resp.read()
        page = await resp.json()
        assert len(body) <= 4096 and page["items"]
        assert all(len(i["error"]) == 500 for i in page["items"])  # the start of it only
        seen += [i["id"] for i in page["items"]]
        cursor = page["next"]
        if cursor is None:
            break
        assert re.fullmatch(CURSOR_PATTERN, cursor)

    # then every task came exactly once, newest first, over several pages
    assert seen == list(reversed(made))


async def test_results_come_a_page_at_a_time(
        api: ApiClient, auth: dict[str, str], db: Db) -> None:
    tid = await submit(api, auth, "x")
    await db.pool.execute(
        "INSERT INTO task_results (task_id, chunk, attempt, result) "
        "SELECT $1, n, 1, jsonb_build_object('n', n) FROM generate_series(0, 1499) n",
        uuid.UUID(tid))

    first = await (await api.get(f"/api/v1/tasks/{tid}/results")).json()
    rest = await (await api.get(f"/api/v1/tasks/{tid}/results?start={first['next']}")).json()

    assert [i["chunk"] for i in first["items"]] == list(range(1000)) and first["next"] == 1000
    assert [i["chunk"] for i in rest["items"]] == list(range(1000, 1500))
    assert rest["next"] is None and rest["task_id"] == tid


@pytest.mark.parametrize("eta", ["0001-01-01T00:00:00+05:00", "9999-12-31T23:00:00-05:00",
                                 "2016-12-31T23:59:60Z"])
async def test_any_date_time_the_schema_allows_is_a_valid_eta(
        api: ApiClient, auth: dict[str, str], eta: str) -> None:
    resp = await api.post("/api/v1/tasks", headers=auth, json={**ECHO, "eta": eta})
    assert resp.status == 202, await resp.text()
