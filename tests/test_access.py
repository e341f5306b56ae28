"""Who may call what: every route of the app against no token, a revoked token, a viewer, an
operator and an admin; the exact 401 / 403 / 2xx, and a refused call changes nothing."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
import redis.asyncio as aioredis
from aiohttp.test_utils import TestClient

from services.api.app import create_app
from services.api.auth import ROUTE_ACCESS, Access, need_of, route_key
from shared.db import Db
from shared.keys import Keys
from shared.settings import Settings
from shared.tokens import Role, Tokens
from tests.fixtures_api import make_token, set_status

ECHO = {"actor": "echo", "kwargs": {"text": "hi"}}
NODE = "matrix@host"
PRINCIPALS = ["none", "revoked", "viewer", "operator", "admin"]
_RANK = {"viewer": 0, "operator": 1, "admin": 2}


@dataclass
class World:
    api: TestClient
    db: Db
    redis: aioredis.Redis
    keys: Keys
    admin: dict[str, str]
    headers: dict[str, dict[str, str]] = field(default_factory=dict)
    made: int = 0

    async def task(self, status: str | None = None) -> str:
        resp = await self.api.post("/api/v1/tasks", json=ECHO, headers=self.admin)
        assert resp.status == 202, await resp.text()
        tid = (await resp.json())["id"]
        if status is not None:
            await set_status(self.db, tid, status)
        return tid

    def name(self) -> str:
        self.made += 1
        return f"made-{self.made}-{uuid.uuid4().hex[:6]}"


Sample = Callable[[World], Awaitable[tuple[str, Any]]]


async def published(pubsub: Any, within: float) -> list[str]:
    """What the channel carried until it was quiet for `within` seconds."""
    out = []
    while (message := await pubsub.get_message(timeout=within)) is not None:
        if message["type"] == "message":
            out.append(message["data"])
    return out


async def _at(path: str, body: Any = None) -> tuple[str, Any]:
    return path, body


async def _task_path(w: World, suffix: str = "", status: str | None = None,
                     body: Any = None) -> tuple[str, Any]:
    return f"/api/v1/tasks/{await w.task(status)}{suffix}", body


async def _revocable(w: World) -> tuple[str, Any]:
    name = w.name()
    await Tokens(w.db).create(name, "viewer", by="test")
    return f"/api/v1/tokens/{name}", None


# Who may make each call (the contract, stated here apart from services/api/auth.py, which
# must agree), and a request the route answers with a 2xx when the caller may make it. A
# route without a line here fails test_the_matrix_covers_every_route.
PUBLIC, READ = Access.PUBLIC, Access.READ
VIEWER, OPERATOR, ADMIN = Role.VIEWER, Role.OPERATOR, Role.ADMIN
SAMPLES: dict[tuple[str, str], tuple[Access | Role, Sample]] = {
    ("GET", "/healthz"): (PUBLIC, lambda w: _at("/healthz")),
    ("GET", "/readyz"): (PUBLIC, lambda w: _at("/readyz")),
    ("GET", "/metrics"): (PUBLIC, lambda w: _at("/metrics")),
    ("GET", "/"): (PUBLIC, lambda w: _at("/")),
    ("GET", "/static/{}"): (PUBLIC, lambda w: _at("/static/app.css")),
    ("GET", "/api/v1/states"): (PUBLIC, lambda w: _at("/api/v1/states")),
    ("GET", "/api/v1/openapi.json"): (READ, lambda w: _at("/api/v1/openapi.json")),
    ("GET", "/api/v1/tasks"): (READ, lambda w: _at("/api/v1/tasks?limit=5")),
    ("GET", "/api/v1/tasks/{}"): (READ, lambda w: _task_path(w)),
    ("GET", "/api/v1/tasks/{}/results"): (READ, lambda w: _task_path(w, "/results")),
    ("GET", "/api/v1/tasks/{}/tree"): (READ, lambda w: _task_path(w, "/tree")),
    ("GET", "/api/v1/actors"): (READ, lambda w: _at("/api/v1/actors")),
    ("GET", "/api/v1/system/status"): (READ, lambda w: _at("/api/v1/system/status")),
    ("GET", "/api/v1/events"): (VIEWER, lambda w: _at("/api/v1/events")),
    ("POST", "/api/v1/events/ticket"): (VIEWER, lambda w: _at("/api/v1/events/ticket")),
    ("POST", "/api/v1/tasks"): (OPERATOR, lambda w: _at("/api/v1/tasks", ECHO)),
    ("POST", "/api/v1/tasks:batch"): (
        OPERATOR, lambda w: _at("/api/v1/tasks:batch", {"tasks": [
            {**ECHO, "ref": "root"}, {**ECHO, "parent_ref": "root"}]})),
    ("POST", "/api/v1/tasks/{}/cancel"): (
        OPERATOR, lambda w: _task_path(w, "/cancel", body={"reason": "matrix"})),
    ("POST", "/api/v1/tasks/cancel-all"): (
        OPERATOR, lambda w: _at("/api/v1/tasks/cancel-all", {"actor": "crunch"})),
    ("POST", "/api/v1/tasks/{}/resume"): (
        OPERATOR, lambda w: _task_path(w, "/resume", "cancelled")),
    ("POST", "/api/v1/tasks/{}/pause"): (OPERATOR, lambda w: _task_path(w, "/pause")),
    ("POST", "/api/v1/tasks/pause-all"): (
        OPERATOR, lambda w: _at("/api/v1/tasks/pause-all", {"actor": "crunch"})),
    ("POST", "/api/v1/tasks/resume-all"): (
        OPERATOR, lambda w: _at("/api/v1/tasks/resume-all", {"actor": "crunch"})),
    ("POST", "/api/v1/workers/{}/drain"): (
        OPERATOR, lambda w: _at(f"/api/v1/workers/{NODE}/drain")),
    ("GET", "/api/v1/tokens"): (ADMIN, lambda w: _at("/api/v1/tokens")),
    ("POST", "/api/v1/tokens"): (
        ADMIN, lambda w: _at("/api/v1/tokens", {"name": w.name(), "role": "viewer"})),
    ("DELETE", "/api/v1/tokens/{}"): (ADMIN, _revocable),
}


def served_routes(api: TestClient) -> list[tuple[str, str]]:
    return sorted({(r.method, r.resource.canonical) for r in api.app.router.routes()
                   if r.method != "HEAD" and r.resource is not None})


def expected(principal: str, need: Access | Role) -> int | None:
    """The status a call must get, or None for any 2xx."""
    if need is Access.PUBLIC:
        return None
    if principal == "none":
        return 401
    if principal == "revoked":
        return 403
    needed = Role.VIEWER if need is Access.READ else need
    assert isinstance(needed, Role)
    return None if _RANK[principal] >= _RANK[needed.value] else 403


async def snapshot(w: World) -> tuple[Any, ...]:
    """What any call could change: task rows, audits, fences, tokens, queued messages."""
    tasks = await w.db.pool.fetch(
        "SELECT id, status, attempt, cancel_requested_at, pause_requested_at, message_id "
        "FROM tasks ORDER BY id")
    counts = await w.db.pool.fetchrow(
        "SELECT (SELECT count(*) FROM cancel_audit) AS audits, "
        "(SELECT count(*) FROM cancel_fences) AS fences")
    tokens = await w.db.pool.fetch(
        "SELECT name, role, revoked_at FROM api_tokens ORDER BY id")
    queues = [await w.redis.llen(w.keys.celery_key(q)) for q in ("default", "batch")]
    return ([tuple(r) for r in tasks], tuple(counts), [tuple(r) for r in tokens], queues)


@pytest.fixture
async def world(settings: Settings, aiohttp_client: Any, db: Db, redis: aioredis.Redis,
                keys: Keys, actors: dict[str, str], auth: dict[str, str]
                ) -> AsyncIterator[World]:
    app = create_app(settings.with_(public_reads=False, rate_limit=0), sse_keepalive=0.3)
    w = World(await aiohttp_client(app), db, redis, keys, auth)
    suffix = uuid.uuid4().hex[:6]
    for role in ("viewer", "operator", "admin"):
        w.headers[role] = await make_token(db, f"{role}-{suffix}", role)
    w.headers["revoked"] = await make_token(db, f"gone-{suffix}", "operator")
    await Tokens(db).revoke(f"gone-{suffix}", by="test")
    w.headers["none"] = {}
    # A worker that listens, so a drain the caller may ask for reaches someone.
    await redis.hset(keys.workers, NODE, "{}")
    worker = redis.pubsub()
    await worker.subscribe(keys.node_drain_channel(NODE))
    yield w
    await worker.aclose()


async def call(w: World, method: str, path: str, body: Any, headers: dict[str, str]) -> int:
    resp = await w.api.request(method, path, json=body, headers=headers)
    status = resp.status
    if status < 400:
        assert resp.headers.get("X-Content-Type-Options") == "nosniff"
    resp.close()  # an event stream would run on
    return status


def test_every_route_has_an_access_rule(settings: Settings) -> None:
    app = create_app(settings)
    routes = {(r.method, r.resource.canonical) for r in app.router.routes()
              if r.method != "HEAD" and r.resource is not None}
    missing = sorted(r for r in routes if route_key(*r) not in ROUTE_ACCESS)
    assert not missing, f"routes without a line in services/api/auth.py ROUTE_ACCESS: {missing}"


async def test_the_matrix_covers_every_route(world: World) -> None:
    missing = [r for r in served_routes(world.api) if route_key(*r) not in SAMPLES]
    assert not missing, f"routes without a line in SAMPLES: {missing}"
    # and the role table says what this contract says, route by route
    differ = [(r, need_of(*r), SAMPLES[route_key(*r)][0]) for r in served_routes(world.api)
              if need_of(*r) != SAMPLES[route_key(*r)][0]]
    assert not differ, f"ROUTE_ACCESS disagrees with the contract: {differ}"


@pytest.mark.parametrize("principal", PRINCIPALS)
async def test_route_by_role_matrix(world: World, principal: str) -> None:
    events = world.redis.pubsub()
    await events.subscribe(world.keys.events_channel)
    wrong = []
    try:
        for method, canonical in served_routes(world.api):
            need, sample = SAMPLES[route_key(method, canonical)]
            path, body = await sample(world)
            want = expected(principal, need)
            await published(events, 0.01)  # what the sample's own setup announced
            before = await snapshot(world) if want is not None else None
            got = await call(world, method, path, body, world.headers[principal])
            if want is None:
                if not 200 <= got < 300:
                    wrong.append((method, path, "2xx", got))
                continue
            if got != want:
                wrong.append((method, path, want, got))
            if await snapshot(world) != before:
                wrong.append((method, path, "unchanged", "changed"))
            if await published(events, 0.05):
                wrong.append((method, path, "no event", "event"))
    finally:
        await events.aclose()
    assert not wrong, "\n".join(f"{m} {p}: expected {w}, got {g}" for m, p, w, g in wrong)


async def test_a_forced_action_needs_an_admin(world: World) -> None:
    # given a queued task and an operator
    tid = await world.task()
    before = await snapshot(world)

    # when the operator forces a cancel, of the task or of everything
    one = await world.api.post(f"/api/v1/tasks/{tid}/cancel", json={"force": True},
                               headers=world.headers["operator"])
    every = await world.api.post("/api/v1/tasks/cancel-all", json={"force": True},
                                 headers=world.headers["operator"])

    # then both are refused for the role, and nothing changed
    for resp in (one, every):
        assert resp.status == 403
        error = (await resp.json())["error"]
        assert error["code"] == "insufficient_role" and error["details"]["needed"] == "admin"
    assert await snapshot(world) == before
    # and an admin may, the operator without force too
    assert (await world.api.post(f"/api/v1/tasks/{tid}/cancel", json={"force": False},
                                 headers=world.headers["operator"])).status == 202
    assert (await world.api.post(f"/api/v1/tasks/{await world.task()}/cancel",
                                 json={"force": True},
                                 headers=world.headers["admin"])).status == 202


async def test_audit_rows_and_events_name_the_tokens_owner(world: World) -> None:
    # given an operator called alice
    alice = await make_token(world.db, "alice", "operator")
    tid = await world.task()
    events = world.redis.pubsub()
    await events.subscribe(world.keys.events_channel)
    await published(events, 0.05)

    # when she cancels a task
    cancelled = await (await world.api.post(f"/api/v1/tasks/{tid}/cancel", headers=alice)).json()
    announced = await published(events, 0.3)
    await events.aclose()

    # then the row, the audit and the event name her
    assert cancelled["cancel"]["by"] == "alice"
    audit = await world.db.pool.fetchval(
        "SELECT by FROM cancel_audit WHERE $1 = ANY(task_ids)", uuid.UUID(tid))
    assert audit == "alice"
    assert any('"by": "alice"' in data for data in announced), announced


async def test_a_revoked_token_is_refused_from_the_next_request_on(world: World) -> None:
    # given a viewer reading
    bob = await make_token(world.db, "bob", "viewer")
    assert (await world.api.get("/api/v1/tasks", headers=bob)).status == 200

    # when an admin revokes it through the API
    resp = await world.api.delete("/api/v1/tokens/bob", headers=world.headers["admin"])
    assert resp.status == 200 and (await resp.json())["name"] == "bob"

    # then its next request is refused, and it is no longer listed
    again = await world.api.get("/api/v1/tasks", headers=bob)
    assert again.status == 403 and (await again.json())["error"]["code"] == "forbidden"
    listed = await (await world.api.get("/api/v1/tokens", headers=world.headers["admin"])).json()
    assert "bob" not in {t["name"] for t in listed["items"]}


async def test_a_new_token_is_shown_once_and_stored_hashed(world: World) -> None:
    resp = await world.api.post("/api/v1/tokens", json={"name": "carol", "role": "operator"},
                                headers=world.headers["admin"])
    assert resp.status == 201
    made = await resp.json()
    assert made["role"] == "operator" and made["secret"].startswith("trk_")
    stored = await world.db.pool.fetchrow("SELECT * FROM api_tokens WHERE name = 'carol'")
    assert made["secret"] not in {str(v) for v in stored.values()}
    listed = await (await world.api.get("/api/v1/tokens", headers=world.headers["admin"])).json()
    assert "secret" not in next(t for t in listed["items"] if t["name"] == "carol")
    # the secret works, with its role
    carol = {"Authorization": f"Bearer {made['secret']}"}
    assert (await world.api.post("/api/v1/tasks", json=ECHO, headers=carol)).status == 202
    assert (await world.api.get("/api/v1/tokens", headers=carol)).status == 403
    # and a second live token of that name, or one named like the bootstrap admin, is refused
    for name, status in (("carol", 409), ("admin", 400)):
        again = await world.api.post("/api/v1/tokens", json={"name": name, "role": "viewer"},
                                     headers=world.headers["admin"])
        assert again.status == status, await again.text()


async def test_public_reads_open_reads_only(settings: Settings, aiohttp_client: Any,
                                            auth: dict[str, str]) -> None:
    api = await aiohttp_client(create_app(settings.with_(public_reads=True)))

    assert (await api.get("/api/v1/tasks")).status == 200
    assert (await api.get("/api/v1/system/status")).status == 200
    # mutations and event streams still need a token
    assert (await api.post("/api/v1/tasks", json=ECHO)).status == 401
    assert (await api.get("/api/v1/events")).status == 401
    assert (await api.get("/api/v1/tokens")).status == 401


async def test_mutations_are_rate_limited_per_token(
        settings: Settings, aiohttp_client: Any, db: Db, actors: dict[str, str],
        auth: dict[str, str]) -> None:
    # given a limit of two calls in a burst, then one a second
    api = await aiohttp_client(create_app(settings.with_(rate_limit=1.0, rate_burst=2)))
    dave = await make_token(db, "dave", "operator")

    # when dave submits three times at once
    statuses = [(await api.post("/api/v1/tasks", json=ECHO, headers=dave)).status
                for _ in range(2)]
    third = await api.post("/api/v1/tasks", json=ECHO, headers=dave)

    # then the third waits, told for how long; reads and other tokens are not held up
    assert statuses == [202, 202]
    assert third.status == 429 and (await third.json())["error"]["code"] == "rate_limited"
    assert int(third.headers["Retry-After"]) >= 1
    assert (await api.get("/api/v1/tasks", headers=dave)).status == 200
    assert (await api.post("/api/v1/tasks", json=ECHO, headers=auth)).status == 202
    await asyncio.sleep(1.05)
    assert (await api.post("/api/v1/tasks", json=ECHO, headers=dave)).status == 202


async def test_taskctl_makes_lists_and_revokes_tokens(world: World, settings: Settings) -> None:
    from tests.test_ctl_helpers import arun_ctl

    # when an operator's token is made on the host
    made = await arun_ctl(settings, "token", "create", "--name", "erin", "--role", "operator")
    assert made.returncode == 0, made.stderr
    erin = {"Authorization": f"Bearer {made.stdout.strip()}"}

    # then it works with its role, and the list names it without its secret
    assert (await world.api.post("/api/v1/tasks", json=ECHO, headers=erin)).status == 202
    listed = await arun_ctl(settings, "token", "list", "--json")
    assert listed.returncode == 0, listed.stderr
    assert made.stdout.strip() not in listed.stdout and '"erin"' in listed.stdout

    # when it is revoked there, the API refuses it from the next request on
    gone = await arun_ctl(settings, "token", "revoke", "erin")
    assert gone.returncode == 0, gone.stderr
    assert (await world.api.get("/api/v1/tasks", headers=erin)).status == 403
    # and bad input is a usage error, not a traceback
    for args in (["revoke", "erin"], ["create", "--name", "admin", "--role", "viewer"]):
        out = await arun_ctl(settings, "token", *args)
        assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr


async def test_the_dashboard_reads_with_its_token_and_listens_with_a_ticket(
        settings: Settings, tmp_path: Any, actors: dict[str, str]) -> None:
    # The browser and the API process are driven with blocking calls: nothing else runs.
    from selenium.webdriver.common.by import By

    from tests.test_dashboard import browser_errors, eventually, http, launch_chromium, start_api

    # given the API with private reads, and a queued task
    proc, url = start_api(settings.with_(public_reads=False), tmp_path / "api.log")
    browser = launch_chromium(tmp_path / "profile")
    try:
        status, task = http("POST", f"{url}/api/v1/tasks",
                            {"actor": "echo", "kwargs": {"text": "x"}, "countdown": 3600},
                            settings.api_token)
        assert status == 202, task

        # when the page opens without a token, it shows nothing and asks for one
        browser.get(url + "/")
        banner = browser.find_element(By.ID, "token-banner")
        assert banner.is_displayed()
        eventually(lambda: browser.find_element(By.ID, "live-text").text == "Needs a token",
                   timeout=10, what="the stream waiting for a token")
        assert browser.find_elements(By.CSS_SELECTOR, "tr.task-row") == []
        # (its first reads learnt that reads need a token: refused, and not tried again)
        assert all("401" in e for e in browser_errors(browser))

        # when the token is entered
        browser.find_element(By.ID, "token-input").send_keys(settings.api_token)
        browser.find_element(By.ID, "token-save").click()

        # then the tasks load with it and the stream opens through a ticket
        eventually(lambda: browser.find_elements(
            By.CSS_SELECTOR, f'tr.task-row[data-id="{task["id"]}"]'), timeout=10,
            what="the task's row")
        eventually(lambda: browser.find_element(By.ID, "live").get_attribute("data-state")
                   == "open", timeout=10, what="the live stream")
        assert browser_errors(browser) == []
    finally:
        browser.quit()
        proc.stop()
