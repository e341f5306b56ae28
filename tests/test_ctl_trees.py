"""taskctl and job trees, against real PostgreSQL and Redis (no worker needed: the trees are
made by the batch submit and their rows moved by hand): `taskctl tree`, `waiting` counted as
active by `status` and the monitor, and a root's cancel reporting its descendants."""

from __future__ import annotations

import json
import re
import uuid
from datetime import UTC, datetime

import pytest

from shared.batch import Item, submit_batch
from shared.broker import make_celery
from shared.db import Db
from shared.settings import Settings
from shared.tree_view import aggregate_json
from shared.trees import ChildSpec
from tests.test_ctl_helpers import arun_ctl, publish_actors

NAMES = ("root", "a", "b", "c", "g")


@pytest.fixture
async def catalogue(db: Db) -> None:
    await publish_actors(db)


async def _set(db: Db, task_id: uuid.UUID, status: str, *, done: int, total: int | None,
               started_ago: float | None = None) -> None:
    await db.pool.execute(
        "UPDATE tasks SET status = $2, done = $3, total = $4,"
        " started_at = CASE WHEN $5::float8 IS NULL THEN NULL"
        "   ELSE now() - make_interval(secs => $5::float8) END,"
        " finished_at = CASE WHEN $2 = 'succeeded' THEN now() END WHERE id = $1",
        task_id, status, done, total, started_ago)


async def make_tree(settings: Settings, db: Db, *, root_status: str = "waiting"
                    ) -> dict[str, uuid.UUID]:
    """root -> a, b, c (oldest first), a -> g. The root's own code is done (`waiting` by
    default), a is half way, b succeeded, c and g have not started."""
    def spec() -> ChildSpec:
        return ChildSpec("distill", {"chunks": 4}, queue="parked")

    celery = make_celery(settings)
    try:
        made = await submit_batch(db, celery, settings, [
            Item(spec(), ref="root"), Item(spec(), ref="a", parent_ref="root"),
            Item(spec(), ref="b", parent_ref="root"), Item(spec(), ref="c", parent_ref="root"),
            Item(spec(), ref="g", parent_ref="a")])
    finally:
        celery.close()
    ids = dict(zip(NAMES, (r["id"] for r in made), strict=True))
    # One batch's rows share a creation time (and go by id); spaced out, a is the oldest.
    for i, name in enumerate("abc", 1):
        await db.pool.execute("UPDATE tasks SET created_at = created_at"
                              " + make_interval(secs => $2) WHERE id = $1", ids[name], i / 1000)
    await _set(db, ids["root"], root_status, done=2, total=2, started_ago=30)
    await _set(db, ids["a"], "running", done=2, total=4, started_ago=20)
    await _set(db, ids["b"], "succeeded", done=3, total=3, started_ago=25)
    return ids


def _line(text: str, task_id: uuid.UUID) -> str:
    return next(line for line in text.splitlines() if str(task_id)[:8] in line)


async def test_tree_shows_path_nodes_states_and_totals(settings: Settings, db: Db,
                                                       catalogue: None) -> None:
    # given a root waiting on three children, one of which has a child of its own
    ids = await make_tree(settings, db)
    # when the operator looks at the root's tree
    out = await arun_ctl(settings, "tree", str(ids["root"]))
    # then every node is there with its short id, its state and its progress
    assert out.returncode == 0, out.stderr
    text = out.stdout
    assert "this task is a root" in text
    assert str(ids["root"]) in text  # the node asked for, in full
    for name, status, progress in (("a", "running", "2/4"), ("b", "succeeded", "3/3"),
                                   ("c", "queued", "0/?"), ("g", "queued", "0/?")):
        line = _line(text, ids[name])
        assert status in line and progress in line, line
    # the children oldest first, as the API pages them, and g right under its parent a
    kids = [r["id"] for r in await db.children_page(ids["root"], None, 10)]
    assert kids == [ids[n] for n in "abc"]
    order = [text.index(str(ids[n])[:8]) for n in ("root", "a", "g", "b", "c")]
    assert order == sorted(order), text
    # the root and a carry their subtree's totals: 5 nodes / 2 nodes, by state, percent
    root_line = _line(text, ids["root"])
    assert "tree: 5 nodes" in root_line and "1 running" in root_line
    assert "2 queued" in root_line and "1 waiting" in root_line and "1 succeeded" in root_line
    assert "tree: 2 nodes (1 running, 1 queued)" in _line(text, ids["a"])
    assert "tree:" not in _line(text, ids["b"])

    # and the JSON form holds the same totals as the API's tree view computes them
    out = await arun_ctl(settings, "tree", str(ids["root"]), "--json")
    assert out.returncode == 0, out.stderr
    view = json.loads(out.stdout)
    expected = aggregate_json(await db.tree_aggregate(ids["root"]), datetime.now(UTC))
    got = view["task"]["aggregate"]
    assert got["by_status"] == expected["by_status"] == {"waiting": 1, "running": 1,
                                                         "succeeded": 1, "queued": 2}
    assert (got["done"], got["total"], got["percent"]) == (expected["done"], expected["total"],
                                                          expected["percent"])
    assert got["eta_seconds"] is not None and got["eta_seconds"] > 0
    assert [c["id"] for c in view["task"]["children"]] == [str(k) for k in kids]
    [a] = [c for c in view["task"]["children"] if c["id"] == str(ids["a"])]
    assert [c["id"] for c in a["children"]] == [str(ids["g"])]

    # and from the grandchild, its ancestors make the path, root first
    out = await arun_ctl(settings, "tree", str(ids["g"]))
    assert out.returncode == 0, out.stderr
    path = out.stdout.splitlines()[0]
    assert re.search(rf"{str(ids['root'])[:8]} waiting › .*{str(ids['a'])[:8]} running › "
                     r"this task", path), path


async def test_tree_bounds_summarise_what_they_hide(settings: Settings, db: Db,
                                                    catalogue: None) -> None:
    ids = await make_tree(settings, db)
    # --limit 1: the root shows its oldest child and counts the other two
    out = await arun_ctl(settings, "tree", str(ids["root"]), "--limit", "1")
    assert out.returncode == 0, out.stderr
    assert str(ids["a"])[:8] in out.stdout and str(ids["g"])[:8] in out.stdout
    assert str(ids["b"])[:8] not in out.stdout and str(ids["c"])[:8] not in out.stdout
    assert "… 2 more" in out.stdout
    # the totals still count the whole tree
    assert "tree: 5 nodes" in _line(out.stdout, ids["root"])
    # --depth 1: the children, not the grandchild, which is counted under its parent
    out = await arun_ctl(settings, "tree", str(ids["root"]), "--depth", "1", "--json")
    assert out.returncode == 0, out.stderr
    a = json.loads(out.stdout)["task"]["children"][0]
    assert (a["id"], a["children"], a["deeper"]) == (str(ids["a"]), [], 1)
    assert a["aggregate"]["nodes"] == 2
    out = await arun_ctl(settings, "tree", str(ids["root"]), "--depth", "0")
    assert "… 3 children below --depth" in out.stdout


@pytest.mark.parametrize("args, message", [
    (["00000000-0000-4000-8000-000000000000"], "no task with id"),
    (["not-a-task"], "not a task id"),
    (["00000000-0000-4000-8000-000000000000", "--depth", "-1"], "must be between"),
    (["00000000-0000-4000-8000-000000000000", "--limit", "0"], "must be between"),
])
async def test_tree_refuses_unknown_ids_and_bad_bounds_with_exit_2(
        settings: Settings, args: list[str], message: str) -> None:
    out = await arun_ctl(settings, "tree", *args)
    assert out.returncode == 2, out.stdout + out.stderr
    assert message in out.stderr and "Traceback" not in out.stderr


async def test_status_and_monitor_count_waiting_as_active(settings: Settings, db: Db,
                                                          catalogue: None) -> None:
    # given a tree whose root waits for its children
    ids = await make_tree(settings, db)
    # when status runs
    out = await arun_ctl(settings, "status", "--json")
    assert out.returncode == 0, out.stderr
    status = json.loads(out.stdout)
    counts = await db.counts()
    # then waiting is counted, and among the active tasks
    assert status["counts"] == counts and counts["waiting"] >= 1
    active = sum(counts[s] for s in ("queued", "running", "cancelling", "pausing", "waiting"))
    assert status["active"] == active
    pretty = await arun_ctl(settings, "status")
    assert re.search(rf"active \(all but paused and ended\)\D+{active}\b", pretty.stdout), \
        pretty.stdout
    # and the monitor counts it, lists the waiting root with its tree, and a's own row (a is
    # running, not a root) carries no tree
    frame = await arun_ctl(settings, "monitor", "--once")
    assert frame.returncode == 0, frame.stderr
    assert f"waiting {counts['waiting']}" in frame.stdout
    root_line = _line(frame.stdout, ids["root"])
    # the tree: 2 + 2 + 3 chunks worked of 2 + 4 + 3 known and 6 for the two not started
    assert "waiting" in root_line and "3 children 46.7%" in root_line, root_line
    assert "children" not in _line(frame.stdout, ids["a"])


async def test_a_running_root_shows_its_tree_in_the_monitor(settings: Settings, db: Db,
                                                            catalogue: None) -> None:
    ids = await make_tree(settings, db, root_status="running")
    frame = await arun_ctl(settings, "monitor", "--once")
    assert frame.returncode == 0, frame.stderr
    line = _line(frame.stdout, ids["root"])
    assert "running" in line and "3 children 46.7%" in line, line
    await arun_ctl(settings, "cancel", str(ids["root"]), "--force")


async def test_cancel_of_a_root_reports_its_descendants(settings: Settings, db: Db,
                                                        catalogue: None) -> None:
    # given a waiting root: a runs, b succeeded, c and g are queued
    ids = await make_tree(settings, db)
    # when the operator cancels the root
    out = await arun_ctl(settings, "cancel", str(ids["root"]), "--json")
    # then the reply counts the descendants it stopped, by the state each reached
    assert out.returncode == 0, out.stderr
    reply = json.loads(out.stdout)
    assert reply["status"] == "cancelled" and reply["changed"] is True
    assert reply["descendants"] == {"total": 3, "cancelled": 2, "cancelling": 1}
    states = {n: (await db.get_task(ids[n]))["status"] for n in NAMES}
    assert states == {"root": "cancelled", "a": "cancelling", "b": "succeeded",
                      "c": "cancelled", "g": "cancelled"}
    # and repeating it says nothing is left below
    again = await arun_ctl(settings, "cancel", str(ids["root"]))
    assert again.returncode == 0, again.stderr
    assert "nothing to do" in again.stdout and "no unfinished descendant" in again.stdout

    # and `monitor kill` of a running root says the same on one line
    ids = await make_tree(settings, db, root_status="running")
    killed = await arun_ctl(settings, "monitor", "kill", str(ids["root"]))
    assert killed.returncode == 0, killed.stderr
    assert str(ids["root"]) in killed.stdout
    assert "3 unfinished descendants too: 2 cancelled, 1 cancelling" in killed.stdout
    assert (await db.get_task(ids["a"]))["cancel_forced"] is True
