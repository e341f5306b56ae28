"""Job trees through the HTTP API: children under a parent_id, whole trees in one batch, the
tree view, the refusals that create nothing, and a root's cancel, pause and resume acting on
its queued children. No worker runs: every task stays where the API put it."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Any

import jsonschema_rs
import pytest
import redis.asyncio as aioredis
from aiohttp import ClientResponse

from services.api.app import create_app
from shared.db import Db
from shared.keys import Keys
from shared.queues import message_ids
from shared.settings import Settings
from tests.fixtures_api import ApiClient, count_tasks, set_status

ECHO = {"actor": "echo", "kwargs": {"text": "hi"}}
BATCH = "/api/v1/tasks:batch"


def item(ref: str | None = None, parent_ref: str | None = None, **extra: Any) -> dict:
    out: dict[str, Any] = {**ECHO, **extra}
    if ref is not None:
        out["ref"] = ref
    if parent_ref is not None:
        out["parent_ref"] = parent_ref
    return out


async def conforming(api: ApiClient, resp: ClientResponse, schema: str) -> Any:
    """The answer's JSON, checked against the named schema of the served document."""
    body = await resp.json()
    doc = await (await api.get("/api/v1/openapi.json")).json()
    jsonschema_rs.validate({"$ref": f"#/components/schemas/{schema}",
                            "components": doc["components"]}, body)
    return body


async def accepted(api: ApiClient, auth: dict[str, str], tasks: list[dict],
                   **top: Any) -> dict:
    resp = await api.post(BATCH, json={"tasks": tasks, **top}, headers=auth)
    assert resp.status == 202, await resp.text()
    return await conforming(api, resp, "BatchResult")


async def submitted(api: ApiClient, auth: dict[str, str], **body: Any) -> dict:
    resp = await api.post("/api/v1/tasks", json={**ECHO, **body}, headers=auth)
    assert resp.status == 202, await resp.text()
    return await conforming(api, resp, "Task")


async def task(api: ApiClient, tid: str) -> dict:
    resp = await api.get(f"/api/v1/tasks/{tid}")
    assert resp.status == 200
    return await resp.json()


async def refused(resp: ClientResponse, status: int, code: str) -> dict:
    assert resp.status == status, await resp.text()
    error = (await resp.json())["error"]
    assert error["code"] == code, error
    return error


async def footprint(db: Db, redis: aioredis.Redis, keys: Keys) -> tuple[Any, ...]:
    """What a call that makes tasks leaves: rows, children counted, messages waiting."""
    children = await db.pool.fetchval("SELECT coalesce(sum(children), 0) FROM tasks")
    return (await count_tasks(db), children,
            len(await message_ids(redis, keys, ["default", "batch"])))


@pytest.fixture
async def nothing_made(db: Db, redis: aioredis.Redis, keys: Keys,
                       actors: dict[str, str]) -> AsyncIterator[None]:
    """Asserts the test's refused calls left no row, no message and no new child count."""
    before = await footprint(db, redis, keys)
    yield
    assert await footprint(db, redis, keys) == before


# -- the batch -------------------------------------------------------------------------------

async def test_a_batch_of_roots_queues_each_one(
        api: ApiClient, auth: dict[str, str], actors: dict[str, str], db: Db,
        redis: aioredis.Redis, keys: Keys) -> None:
    # given
    before = await count_tasks(db)

    # when three roots are sent in one call
    made = await accepted(api, auth, [item(), item(kwargs={"text": "two"}),
                                      {"actor": "crunch", "kwargs": {"rows": 3}}])

    # then all three are queued, in the order asked, none in a tree
    assert made["count"] == 3 and await count_tasks(db) == before + 3
    assert [t["actor"] for t in made["tasks"]] == ["echo", "echo", "crunch"]
    assert [t["queue"] for t in made["tasks"]] == ["default", "default", "batch"]
    assert all(t["status"] == "queued" and t["parent_id"] is None and t["ref"] is None
               for t in made["tasks"])
    rows = [await task(api, t["id"]) for t in made["tasks"]]
    assert [r["kwargs"]["text"] for r in rows[:2]] == ["hi", "two"]
    assert all(r["tree"] is None and r["status"] == "queued" for r in rows)
    # and each has its message on its queue
    waiting = await message_ids(redis, keys, ["default", "batch"])
    for t in made["tasks"]:
        row = await db.get_task(uuid.UUID(t["id"]))
        assert row is not None and str(row["message_id"]) in waiting


async def test_a_batch_builds_a_tree_by_ref(
        api: ApiClient, auth: dict[str, str], actors: dict[str, str], db: Db) -> None:
    # when a root and three children are sent, a child first and a grandchild among them
    made = await accepted(api, auth, [
        item(ref="a", parent_ref="root"),
        item(ref="root", fail_fast=True),
        item(parent_ref="a"),
        item(ref="b", parent_ref="root"),
        item(parent_ref="root"),
    ])

    # then every entry is made, answered in the order sent, with its ref
    ids = [t["id"] for t in made["tasks"]]
    a, root, grandchild, b, c = ids
    assert [t["ref"] for t in made["tasks"]] == ["a", "root", None, "b", None]
    # and the rows say where each one sits
    assert (await task(api, root))["tree"] == {
        "parent_id": None, "root_id": root, "depth": 0, "children": 3, "fail_fast": True}
    for child in (a, b, c):
        assert (await task(api, child))["tree"] == {
            "parent_id": root, "root_id": root, "depth": 1,
            "children": 1 if child == a else 0, "fail_fast": False}
    assert (await task(api, grandchild))["tree"] == {
        "parent_id": a, "root_id": root, "depth": 2, "children": 0, "fail_fast": False}


async def test_a_batch_under_a_default_parent(
        api: ApiClient, auth: dict[str, str], actors: dict[str, str]) -> None:
    # given a task already queued
    parent = await submitted(api, auth)

    # when a batch names it as the parent of entries that name none themselves
    made = await accepted(api, auth, [item(ref="x"), item(parent_ref="x"), item()],
                          parent_id=parent["id"])

    # then those two are its children, and the other hangs under the first
    x, under_x, second = (t["id"] for t in made["tasks"])
    assert (await task(api, parent["id"]))["tree"]["children"] == 2
    assert (await task(api, x))["tree"]["parent_id"] == parent["id"]
    assert (await task(api, second))["tree"]["parent_id"] == parent["id"]
    assert (await task(api, under_x))["tree"] == {
        "parent_id": x, "root_id": parent["id"], "depth": 2, "children": 0,
        "fail_fast": False}


async def test_the_batch_answer_names_each_new_tasks_parent(
        api: ApiClient, auth: dict[str, str], actors: dict[str, str]) -> None:
    parent = await submitted(api, auth)

    made = await accepted(api, auth, [item(ref="x"), item(parent_ref="x"),
                                      item(parent_id=parent["id"])])

    x = made["tasks"][0]["id"]
    assert [t["parent_id"] for t in made["tasks"]] == [None, x, parent["id"]]


async def test_a_child_submitted_under_a_parent_id_joins_its_tree(
        api: ApiClient, auth: dict[str, str], actors: dict[str, str]) -> None:
    # given a root and a child of it
    root = await submitted(api, auth)
    child = await submitted(api, auth, parent_id=root["id"])

    # when a grandchild is submitted under the child, failing fast
    grandchild = await submitted(api, auth, parent_id=child["id"], fail_fast=True)

    # then each answer and each row say where it sits
    assert child["tree"] == {"parent_id": root["id"], "root_id": root["id"], "depth": 1,
                             "children": 0, "fail_fast": False}
    assert grandchild["tree"] == {"parent_id": child["id"], "root_id": root["id"], "depth": 2,
                                  "children": 0, "fail_fast": True}
    assert grandchild["status"] == "queued" and grandchild["kwargs"]["text"] == "hi"
    assert (await task(api, root["id"]))["tree"]["children"] == 1
    assert (await task(api, child["id"]))["tree"]["children"] == 1


# -- refusals: nothing is made ---------------------------------------------------------------

async def test_an_unknown_parent_is_a_422_and_makes_nothing(
        api: ApiClient, auth: dict[str, str], nothing_made: None) -> None:
    stranger = str(uuid.uuid4())

    one = await api.post("/api/v1/tasks", json={**ECHO, "parent_id": stranger}, headers=auth)
    many = await api.post(BATCH, json={"tasks": [item(), item(parent_id=stranger)]},
                          headers=auth)
    default = await api.post(BATCH, json={"tasks": [item()], "parent_id": stranger},
                             headers=auth)
    by_ref = await api.post(BATCH, json={"tasks": [item(), item(parent_ref="nobody")]},
                            headers=auth)

    for resp in (one, many, default, by_ref):
        await refused(resp, 422, "unknown_parent")


@pytest.mark.parametrize(("state", "code"), [
    ("cancelled", "parent_finished"), ("succeeded", "parent_finished"),
    ("failed", "parent_finished"), ("lost", "parent_finished"),
    ("cancelling", "parent_cancelling"),
])
async def test_a_parent_that_ended_or_is_being_cancelled_is_a_409(
        api: ApiClient, auth: dict[str, str], actors: dict[str, str], db: Db,
        redis: aioredis.Redis, keys: Keys, state: str, code: str) -> None:
    # given a parent in that state
    parent = await submitted(api, auth)
    await set_status(db, parent["id"], state)
    before = await footprint(db, redis, keys)

    # when children are asked for under it, alone or in a batch
    one = await api.post("/api/v1/tasks", json={**ECHO, "parent_id": parent["id"]},
                         headers=auth)
    many = await api.post(BATCH, json={"tasks": [item(), item(parent_id=parent["id"])]},
                          headers=auth)

    # then both are refused and nothing was made
    for resp in (one, many):
        await refused(resp, 409, code)
    assert await footprint(db, redis, keys) == before


async def test_a_parent_cancelled_through_the_api_takes_no_children(
        api: ApiClient, auth: dict[str, str], actors: dict[str, str], db: Db,
        redis: aioredis.Redis, keys: Keys) -> None:
    parent = await submitted(api, auth)
    assert (await api.post(f"/api/v1/tasks/{parent['id']}/cancel", headers=auth)).status == 202
    before = await footprint(db, redis, keys)

    resp = await api.post("/api/v1/tasks", json={**ECHO, "parent_id": parent["id"]},
                          headers=auth)

    await refused(resp, 409, "parent_finished")
    assert await footprint(db, redis, keys) == before


@pytest.mark.parametrize(("tasks", "code"), [
    ([item(), item(ref="a", parent_ref="b"), item(ref="b", parent_ref="a")], "cycle"),
    ([item(ref="self", parent_ref="self")], "cycle"),
    ([item(ref="a"), item(ref="a")], "duplicate_ref"),
    ([item(ref="a"), item(parent_ref="a"), {"actor": "nosuchactor"}], "unknown_actor"),
    ([item(ref="a"), item(parent_ref="a", kwargs={"times": 2})], "invalid_kwargs"),
])
async def test_a_batch_that_cannot_be_made_whole_makes_nothing(
        api: ApiClient, auth: dict[str, str], nothing_made: None, tasks: list[dict],
        code: str) -> None:
    resp = await api.post(BATCH, json={"tasks": tasks}, headers=auth)

    await refused(resp, 422, code)


@pytest.fixture
async def small(settings: Settings, aiohttp_client: Any) -> ApiClient:
    """The API with small trees and batches: depth 2, two children a parent, four a batch."""
    return await aiohttp_client(create_app(settings.with_(
        tree_max_depth=2, tree_max_children=2, batch_max_tasks=4)))


async def test_a_tree_too_deep_is_a_422_and_makes_nothing(
        small: ApiClient, auth: dict[str, str], actors: dict[str, str], db: Db,
        redis: aioredis.Redis, keys: Keys) -> None:
    # given a root, a child and a grandchild: as deep as allowed
    made = await accepted(small, auth, [item(ref="0"), item(ref="1", parent_ref="0"),
                                        item(parent_ref="1")])
    deepest = made["tasks"][2]["id"]
    before = await footprint(db, redis, keys)

    # when one more level is asked for, under it or all in one batch
    under = await small.post("/api/v1/tasks", json={**ECHO, "parent_id": deepest},
                             headers=auth)
    in_batch = await small.post(BATCH, json={"tasks": [item(parent_id=deepest)]},
                                headers=auth)
    chain = await small.post(BATCH, json={"tasks": [
        item(ref="0"), item(ref="1", parent_ref="0"), item(ref="2", parent_ref="1")],
        "parent_id": made["tasks"][0]["id"]}, headers=auth)

    # then each is refused, and nothing was made
    for resp in (under, in_batch, chain):
        await refused(resp, 422, "tree_too_deep")
    assert await footprint(db, redis, keys) == before


async def test_too_many_children_is_a_422_and_makes_nothing(
        small: ApiClient, auth: dict[str, str], actors: dict[str, str], db: Db,
        redis: aioredis.Redis, keys: Keys) -> None:
    # given a parent with one child
    made = await accepted(small, auth, [item(ref="p"), item(parent_ref="p")])
    parent = made["tasks"][0]["id"]
    before = await footprint(db, redis, keys)

    # when two more are asked for at once, or three under a new root (four tasks: within
    # the batch limit)
    two_more = await small.post(BATCH, json={"tasks": [item(), item()], "parent_id": parent},
                                headers=auth)
    new_root = await small.post(BATCH, json={"tasks": [
        item(ref="r"), *(item(parent_ref="r") for _ in range(3))]}, headers=auth)

    # then both are refused, and nothing was made
    for resp in (two_more, new_root):
        await refused(resp, 422, "too_many_children")
    assert await footprint(db, redis, keys) == before
    # and one more alone still fits
    assert (await small.post("/api/v1/tasks", json={**ECHO, "parent_id": parent},
                             headers=auth)).status == 202


async def test_a_batch_over_the_limit_is_a_400_and_makes_nothing(
        small: ApiClient, auth: dict[str, str], nothing_made: None) -> None:
    resp = await small.post(BATCH, json={"tasks": [item() for _ in range(5)]}, headers=auth)

    error = await refused(resp, 400, "invalid_body")
    assert "tasks" in error["details"] and "BATCH_MAX_TASKS" in error["details"]["tasks"]


async def test_a_null_default_parent_is_a_400(
        api: ApiClient, auth: dict[str, str], actors: dict[str, str], db: Db,
        redis: aioredis.Redis, keys: Keys) -> None:
    before = await footprint(db, redis, keys)

    resp = await api.post(BATCH, json={"tasks": [item()], "parent_id": None}, headers=auth)

    error = await refused(resp, 400, "invalid_body")
    assert "parent_id" in error["details"]
    assert await footprint(db, redis, keys) == before


# -- the tree view ---------------------------------------------------------------------------

async def test_the_tree_view_pages_children_and_counts_the_subtree(
        api: ApiClient, auth: dict[str, str], actors: dict[str, str], db: Db) -> None:
    # given a root with five children, one of which has two of its own, in several states
    made = await accepted(api, auth, [
        item(ref="root"), *(item(ref=f"c{i}", parent_ref="root") for i in range(5)),
        item(parent_ref="c0"), item(parent_ref="c0")])
    ids = [t["id"] for t in made["tasks"]]
    root, children, grandchildren = ids[0], ids[1:6], ids[6:]
    await set_status(db, children[1], "running", attempt=1, done=3, failed=1, total=10)
    await set_status(db, children[2], "succeeded", attempt=1, done=4, total=4)
    await set_status(db, grandchildren[0], "failed", attempt=1)

    # when its children are read two at a time
    pages, cursor = [], None
    while True:
        query = {"limit": "2", **({"cursor": cursor} if cursor else {})}
        resp = await api.get(f"/api/v1/tasks/{root}/tree", params=query)
        assert resp.status == 200, await resp.text()
        page = await conforming(api, resp, "TaskTree")
        pages.append(page)
        cursor = page["next"]
        if cursor is None:
            break

    # then the pages hold every child once (one batch made them at one instant: the id
    # orders them), and stop
    assert [len(p["items"]) for p in pages] == [2, 2, 1]
    seen = [c for p in pages for c in p["items"]]
    assert [c["id"] for c in seen] == sorted(children, key=uuid.UUID)
    assert {c["id"]: c["tree"]["children"] for c in seen} == {
        c: 2 if c == children[0] else 0 for c in children}
    first = pages[0]
    assert first["task"]["id"] == root and first["ancestors"] == []
    # and the totals cover the root and everything under it
    totals = first["aggregate"]
    assert totals["nodes"] == 8 and totals["depth"] == 2
    assert totals["by_status"] == {"queued": 5, "running": 1, "succeeded": 1, "failed": 1}
    assert totals["active"] == 6
    assert (totals["done"], totals["failed"]) == (7, 1)


async def test_a_leafs_tree_view_names_its_ancestors_nearest_first(
        api: ApiClient, auth: dict[str, str], actors: dict[str, str], db: Db) -> None:
    # given a root, a child and a grandchild that has worked half its chunks
    made = await accepted(api, auth, [item(ref="r"), item(ref="c", parent_ref="r"),
                                      item(parent_ref="c")])
    root, child, leaf = (t["id"] for t in made["tasks"])
    await set_status(db, leaf, "running", attempt=1, done=2, total=4)

    # when the grandchild's tree is read
    resp = await api.get(f"/api/v1/tasks/{leaf}/tree")

    # then it names its ancestors, has no children, and totals itself alone
    assert resp.status == 200, await resp.text()
    view = await conforming(api, resp, "TaskTree")
    assert view["task"]["id"] == leaf and view["task"]["tree"]["root_id"] == root
    assert view["ancestors"] == [{"id": child, "actor": "echo", "status": "queued"},
                                 {"id": root, "actor": "echo", "status": "queued"}]
    assert view["items"] == [] and view["next"] is None
    totals = view["aggregate"]
    assert (totals["nodes"], totals["by_status"], totals["active"]) == (1, {"running": 1}, 1)
    assert (totals["done"], totals["total"], totals["percent"]) == (2, 4, 50.0)


async def test_the_tree_view_of_an_unknown_task_is_a_404(api: ApiClient) -> None:
    resp = await api.get(f"/api/v1/tasks/{uuid.uuid4()}/tree")

    await refused(resp, 404, "not_found")


# -- a root's cancel, pause and resume -------------------------------------------------------

async def tree_of_four(api: ApiClient, auth: dict[str, str]) -> tuple[str, list[str]]:
    made = await accepted(api, auth, [item(ref="root"), *(item(parent_ref="root")
                                                          for _ in range(3))])
    ids = [t["id"] for t in made["tasks"]]
    return ids[0], ids[1:]


async def test_a_cancel_of_the_root_cancels_its_queued_children(
        api: ApiClient, auth: dict[str, str], actors: dict[str, str], db: Db) -> None:
    # given a root and three queued children
    root, children = await tree_of_four(api, auth)
    before = await db.pool.fetchval("SELECT max(id) FROM cancel_audit") or 0

    # when the root is cancelled
    resp = await api.post(f"/api/v1/tasks/{root}/cancel", json={"reason": "wrong input"},
                          headers=auth)

    # then the root and every child are cancelled by the time the answer is back
    assert resp.status == 202 and (await resp.json())["status"] == "cancelled"
    for child in children:
        row = await task(api, child)
        assert row["status"] == "cancelled", row
        assert row["cancel"]["reason"] == "wrong input" and row["outcome"] == "never_started"
        claim = await db.get_task(uuid.UUID(child))
        assert claim is not None
        assert await db.claim_task(uuid.UUID(child), claim["message_id"], "w@t", 1, 30) is None
    # and one audit row covers the subtree
    new = await db.pool.fetch("SELECT * FROM cancel_audit WHERE id > $1", before)
    subtree = [a for a in new if "tree" in (a["scope"] or {})]
    assert len(subtree) == 1 and subtree[0]["scope"]["tree"] == root
    assert subtree[0]["cancelled"] == 3 and subtree[0]["reason"] == "wrong input"


async def test_a_pause_and_resume_of_the_root_hold_and_release_its_children(
        api: ApiClient, auth: dict[str, str], actors: dict[str, str], db: Db,
        redis: aioredis.Redis, keys: Keys) -> None:
    # given a root and three queued children
    root, children = await tree_of_four(api, auth)

    # when the root is paused
    paused = await api.post(f"/api/v1/tasks/{root}/pause", json={"reason": "window"},
                            headers=auth)

    # then its queued children are paused with it
    assert paused.status == 202 and (await paused.json())["status"] == "paused"
    for child in children:
        row = await task(api, child)
        assert row["status"] == "paused" and row["pause"]["reason"] == "window", row

    # when the root is resumed
    resumed = await api.post(f"/api/v1/tasks/{root}/resume", headers=auth)

    # then it and its children are queued again, each under a message that is waiting
    assert resumed.status == 202 and (await resumed.json())["status"] == "queued"
    waiting = await message_ids(redis, keys, ["default"])
    for tid in (root, *children):
        row = await task(api, tid)
        assert row["status"] == "queued" and row["pause"] is None, row
        stored = await db.get_task(uuid.UUID(tid))
        assert stored is not None and str(stored["message_id"]) in waiting


async def test_the_roots_filter_lists_roots_only(
        api: ApiClient, auth: dict[str, str], actors: dict[str, str]) -> None:
    root, children = await tree_of_four(api, auth)

    roots = await (await api.get("/api/v1/tasks", params={"roots": "true", "limit": "500"})
                   ).json()
    every = await (await api.get("/api/v1/tasks", params={"roots": "false", "limit": "500"})
                   ).json()

    listed = {t["id"] for t in roots["items"]}
    assert root in listed and not listed & set(children)
    assert all(t["tree"] is None or t["tree"]["parent_id"] is None for t in roots["items"])
    assert {root, *children} <= {t["id"] for t in every["items"]}
