"""Bad input gets a 4xx JSON error and changes nothing; strangers get 401/403."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis
from aiohttp import ClientResponse

from shared.db import Db
from shared.keys import Keys
from shared.settings import Settings
from tests.fixtures_api import ApiClient, count_tasks

ECHO = {"actor": "echo", "kwargs": {"text": "hi"}}


async def error_of(resp: ClientResponse, status: int) -> dict:
    assert resp.status == status, await resp.text()
    assert resp.content_type == "application/json"
    body = await resp.json()
    assert set(body) == {"error"} and isinstance(body["error"]["message"], str)
    return body["error"]


@pytest.fixture
async def unchanged(db: Db, redis: aioredis.Redis, keys: Keys,
                    actors: dict[str, str]) -> AsyncIterator[None]:
    """Asserts the test left no task row, no Celery message and no audit row behind."""
    async def snapshot() -> tuple[int, int, int, int]:
        audits = await db.pool.fetchval("SELECT count(*) FROM cancel_audit")
        cancelled = await db.pool.fetchval("SELECT count(*) FROM tasks WHERE status <> 'queued'")
        return (await count_tasks(db), await redis.llen(keys.celery_key("default")), audits,
                cancelled)

    before = await snapshot()
    yield
    assert await snapshot() == before


@pytest.mark.parametrize(("body", "status", "code"), [
    (b"{not json", 400, "invalid_json"),
    (b"", 400, "invalid_json"),
    (b"\xff\xfe", 400, "invalid_json"),
    (b'{"actor": "echo", "kwargs": {"text": NaN}}', 400, "invalid_json"),
    (b'{"actor": "echo", "kwargs": {"text": 1e999}}', 400, "invalid_json"),
    (b"[" * 100_000, 400, "invalid_json"),
    (b"[]", 400, "invalid_body"),
    (b'"echo"', 400, "invalid_body"),
    (b"null", 400, "invalid_body"),
    (b'{"kwargs": {"text": "x"}}', 400, "invalid_body"),
    (b'{"actor": 5}', 400, "invalid_body"),
    (b'{"actor": "echo\\u0000"}', 400, "invalid_body"),
    (b'{"actor": "no spaces allowed"}', 400, "invalid_body"),
    (b'{"actor": "echo", "kwargs": [1]}', 400, "invalid_body"),
    (b'{"actor": "echo", "kwargs": {"text": "a\\u0000b"}}', 400, "invalid_body"),
    (b'{"actor": "echo", "kwargs": {"text": "\\ud800"}}', 400, "invalid_body"),
    (b'{"actor": "echo", "kwargs": {"text": "x", "tags": ' + b"[" * 40 + b"]" * 40 + b"}}",
     400, "invalid_body"),
    (b'{"actor": "echo", "kwarg": {"text": "x"}}', 400, "invalid_body"),
    (b'{"actor": "echo", "queue": "a b"}', 400, "invalid_body"),
    (b'{"actor": "echo", "countdown": -1}', 400, "invalid_body"),
    (b'{"actor": "echo", "countdown": "10"}', 400, "invalid_body"),
    (b'{"actor": "echo", "countdown": true}', 400, "invalid_body"),
    (b'{"actor": "echo", "countdown": 1e300}', 400, "invalid_body"),
    (b'{"actor": "echo", "eta": "tomorrow"}', 400, "invalid_body"),
    (b'{"actor": "echo", "eta": "2030-01-01T00:00:00"}', 400, "invalid_body"),
    (b'{"actor": "echo", "eta": "2024-02-30T00:00:00Z"}', 400, "invalid_body"),
    (b'{"actor": "echo", "countdown": 5, "eta": "2030-01-01T00:00:00Z"}', 400, "invalid_body"),
    (b'{"actor": "echo", "parent_id": "not-a-uuid"}', 400, "invalid_body"),
    (b'{"actor": "echo", "parent_id": 7}', 400, "invalid_body"),
    (b'{"actor": "echo", "parent_id": null}', 400, "invalid_body"),
    (b'{"actor": "echo", "fail_fast": "yes"}', 400, "invalid_body"),
    (b'{"actor": "echo", "ref": "a"}', 400, "invalid_body"),
    (b'{"actor": "echo", "parent_ref": "a"}', 400, "invalid_body"),
    (b'{"actor": "nosuchactor", "kwargs": {}}', 422, "unknown_actor"),
])
async def test_bad_submit_is_rejected_and_creates_nothing(
        api: ApiClient, auth: dict[str, str], unchanged: None, body: bytes, status: int,
        code: str) -> None:
    resp = await api.post("/api/v1/tasks", data=body,
                          headers={**auth, "Content-Type": "application/json"})

    assert (await error_of(resp, status))["code"] == code


async def test_wrong_kwargs_get_422_naming_each_field(
        api: ApiClient, auth: dict[str, str], unchanged: None) -> None:
    resp = await api.post("/api/v1/tasks", headers=auth, json={
        "actor": "echo", "kwargs": {"times": "twice", "colour": "red"}})

    error = await error_of(resp, 422)
    assert error["code"] == "invalid_kwargs"
    assert error["details"] == {"text": "required", "times": "must be integer",
                                "colour": "unknown argument"}


async def test_body_over_the_limit_gets_413(
        api: ApiClient, auth: dict[str, str], settings: Settings, unchanged: None) -> None:
    padding = "x" * settings.max_body_bytes
    resp = await api.post("/api/v1/tasks", headers=auth,
                          json={"actor": "echo", "kwargs": {"text": padding}})

    assert (await error_of(resp, 413))["code"] == "payload_too_large"


@pytest.mark.parametrize(("method", "path"), [
    ("GET", "/api/v1/tasks/not-a-uuid"),
    ("GET", "/api/v1/tasks/12345/results"),
    ("POST", "/api/v1/tasks/zzz/cancel"),
    ("POST", "/api/v1/tasks/%00/resume"),
])
async def test_malformed_id_gets_400(api: ApiClient, auth: dict[str, str], unchanged: None,
                                     method: str, path: str) -> None:
    resp = await api.request(method, path, headers=auth)

    assert (await error_of(resp, 400))["code"] == "invalid_id"


@pytest.mark.parametrize(("method", "suffix"), [
    ("GET", ""), ("GET", "/results"), ("GET", "/tree"), ("POST", "/cancel"),
    ("POST", "/resume")])
async def test_unknown_id_gets_404(api: ApiClient, auth: dict[str, str], unchanged: None,
                                   method: str, suffix: str) -> None:
    resp = await api.request(method, f"/api/v1/tasks/{uuid.uuid4()}{suffix}", headers=auth)

    assert (await error_of(resp, 404))["code"] == "not_found"


@pytest.mark.parametrize("query", [
    {"status": "sleeping"}, {"limit": "0"}, {"limit": "501"}, {"limit": "ten"},
    {"cursor": "not-a-cursor!"}, {"cursor": "bm9wZQ"}, {"actor": "a\x00b"}, {"actor": "x y"},
    {"roots": "yes"}, {"roots": "1"}, {"roots": ""}, {"roots": "True"},
])
async def test_bad_list_query_gets_400(api: ApiClient, query: dict[str, str]) -> None:
    resp = await api.get("/api/v1/tasks", params=query)

    assert (await error_of(resp, 400))["code"] in {"invalid_query", "invalid_cursor"}


BATCH_ITEM = {"actor": "echo", "kwargs": {"text": "x"}}


@pytest.mark.parametrize(("body", "field"), [
    ({}, "tasks"),
    ({"tasks": []}, "tasks"),
    ({"tasks": "echo"}, "tasks"),
    ({"tasks": [BATCH_ITEM], "extra": 1}, "extra"),
    ({"tasks": [BATCH_ITEM, 5]}, "tasks[1]"),
    ({"tasks": [BATCH_ITEM, {"kwargs": {}}]}, "tasks[1].actor"),
    ({"tasks": [BATCH_ITEM, {**BATCH_ITEM, "queue": "a b"}]}, "tasks[1].queue"),
    ({"tasks": [{**BATCH_ITEM, "parent_id": "nope"}]}, "tasks[0].parent_id"),
    ({"tasks": [{**BATCH_ITEM, "fail_fast": 1}]}, "tasks[0].fail_fast"),
    ({"tasks": [{**BATCH_ITEM, "ref": 5}]}, "tasks[0].ref"),
    ({"tasks": [{**BATCH_ITEM, "ref": "r" * 201}]}, "tasks[0].ref"),
    ({"tasks": [{**BATCH_ITEM, "countdown": 1, "eta": "2030-01-01T00:00:00Z"}]}, "tasks[0].eta"),
    ({"tasks": [{**BATCH_ITEM, "parent_id": str(uuid.UUID(int=1)), "parent_ref": "a"}]},
     "tasks[0].parent_ref"),
    ({"tasks": [{**BATCH_ITEM, "kwarg": {}}]}, "tasks[0].kwarg"),
])
async def test_a_malformed_batch_gets_400_naming_the_field_and_creates_nothing(
        api: ApiClient, auth: dict[str, str], unchanged: None, body: dict, field: str) -> None:
    resp = await api.post("/api/v1/tasks:batch", json=body, headers=auth)

    error = await error_of(resp, 400)
    assert error["code"] == "invalid_body" and field in error["details"], error


@pytest.mark.parametrize(("query", "code"), [
    ("?limit=0", "invalid_query"), ("?limit=1001", "invalid_query"),
    ("?limit=many", "invalid_query"), ("?cursor=x", "invalid_cursor")])
async def test_a_malformed_tree_query_gets_400(api: ApiClient, auth: dict[str, str],
                                               actors: dict[str, str], query: str,
                                               code: str) -> None:
    task = await (await api.post("/api/v1/tasks", json=ECHO, headers=auth)).json()

    bad_id = await api.get("/api/v1/tasks/not-a-uuid/tree")
    bad_query = await api.get(f"/api/v1/tasks/{task['id']}/tree{query}")

    assert (await error_of(bad_id, 400))["code"] == "invalid_id"
    assert (await error_of(bad_query, 400))["code"] == code


async def test_unknown_route_and_method_answer_json(api: ApiClient, auth: dict[str, str],
                                                    unchanged: None) -> None:
    missing = await api.get("/api/v1/nothing-here")
    assert (await error_of(missing, 404))["code"] == "not_found"

    wrong = await api.delete(f"/api/v1/tasks/{uuid.uuid4()}", headers=auth)
    assert (await error_of(wrong, 405))["code"] == "method_not_allowed"
    assert "GET" in wrong.headers["Allow"]
    put = await api.put("/api/v1/tasks", headers=auth, json=ECHO)
    assert (await error_of(put, 405))["code"] == "method_not_allowed"


@pytest.mark.parametrize("body", [
    {"reason": "r" * 501}, {"force": "yes"}, {"reason": 7}, {"why": "typo"}, [1],
])
async def test_bad_cancel_body_gets_400_and_cancels_nothing(
        api: ApiClient, auth: dict[str, str], body: object, db: Db) -> None:
    task = await (await api.post("/api/v1/tasks", json=ECHO, headers=auth)).json()
    before = await db.pool.fetchval("SELECT count(*) FROM cancel_audit")

    one = await api.post(f"/api/v1/tasks/{task['id']}/cancel", json=body, headers=auth)
    every = await api.post("/api/v1/tasks/cancel-all", json=body, headers=auth)

    await error_of(one, 400)
    await error_of(every, 400)
    row = await db.get_task(uuid.UUID(task["id"]))
    assert row is not None and row["status"] == "queued"
    assert await db.pool.fetchval("SELECT count(*) FROM cancel_audit") == before


@pytest.mark.parametrize("body", [{"actor": "x y"}, {"queue": ""}, {"force": 1}])
async def test_bad_cancel_all_filters_get_400(api: ApiClient, auth: dict[str, str],
                                              unchanged: None, body: dict) -> None:
    resp = await api.post("/api/v1/tasks/cancel-all", json=body, headers=auth)

    assert (await error_of(resp, 400))["code"] == "invalid_body"


async def test_resume_takes_no_fields(api: ApiClient, auth: dict[str, str],
                                      unchanged: None) -> None:
    resp = await api.post(f"/api/v1/tasks/{uuid.uuid4()}/resume", json={"x": 1}, headers=auth)

    assert (await error_of(resp, 400))["code"] == "invalid_body"


MUTATIONS = [
    ("/api/v1/tasks", ECHO),
    ("/api/v1/tasks:batch", {"tasks": [ECHO]}),
    ("/api/v1/tasks/cancel-all", {}),
    (f"/api/v1/tasks/{uuid.UUID(int=3)}/cancel", {}),
    (f"/api/v1/tasks/{uuid.UUID(int=4)}/resume", {}),
]


@pytest.mark.parametrize(("path", "body"), MUTATIONS)
@pytest.mark.parametrize("header", [None, "Basic dXNlcjpwYXNz", "Bearer", "Bearer   ", "token"])
async def test_missing_or_malformed_token_gets_401(
        api: ApiClient, unchanged: None, path: str, body: dict, header: str | None) -> None:
    headers = {"Authorization": header} if header is not None else {}

    resp = await api.post(path, json=body, headers=headers)

    assert (await error_of(resp, 401))["code"] == "unauthorized"
    assert resp.headers["WWW-Authenticate"].startswith("Bearer")


@pytest.mark.parametrize(("path", "body"), MUTATIONS)
@pytest.mark.parametrize("token", ["wrong", "test-token", "tést-tøken"])
async def test_wrong_token_gets_403(api: ApiClient, unchanged: None, path: str, body: dict,
                                    token: str) -> None:
    resp = await api.post(path, json=body,
                          headers={"Authorization": f"Bearer {token}".encode().decode("latin-1")})

    assert (await error_of(resp, 403))["code"] == "forbidden"


async def test_a_queued_task_survives_unauthorised_cancels(
        api: ApiClient, auth: dict[str, str], settings: Settings, db: Db) -> None:
    task = await (await api.post("/api/v1/tasks", json=ECHO, headers=auth)).json()

    for headers, status in (({}, 401), ({"Authorization": "Bearer nope"}, 403)):
        resp = await api.post(f"/api/v1/tasks/{task['id']}/cancel", headers=headers)
        assert resp.status == status
        resp = await api.post("/api/v1/tasks/cancel-all", headers=headers)
        assert resp.status == status

    row = await db.get_task(uuid.UUID(task["id"]))
    assert row is not None and row["status"] == "queued"

