"""The reaper's rules on in-memory fakes: what each one decides, read back from the rows,
the registry, the workers and the events, without a server or a process."""

from __future__ import annotations

import inspect
import json
import time
import uuid
from typing import Any

import pytest
import redis.asyncio as aioredis

from services.reaper.broker_scan import BrokerScan
from services.reaper.celery_ops import CeleryOps
from services.reaper.context import ReaperContext
from services.reaper.executor import CancelExecutor
from services.reaper.leader import LeaderLock
from services.reaper.metrics import ReaperMetrics
from services.reaper.reconcile import Pass, Reconciler, StaleRegistry, Undead, Zombies
from services.reaper.sweeper import _PURGE, FenceSweeper
from shared.db import Db
from shared.keys import Keys
from shared.queues import queue_lists
from shared.registry import Entry, live_executions, register
from shared.settings import Settings
from shared.submit import QUEUED_AT_HEADER
from tests.fakes import FakeDb, FakeRedis, FakeWorkers, ago, now

pytestmark = pytest.mark.unit

SETTINGS = Settings(heartbeat_timeout=3.0, kill_margin=0.5, leader_ttl=2.0,
                    lost_message_after=5.0, history_retention_days=30)


def reaper(settings: Settings = SETTINGS, *, leader: bool = True) -> ReaperContext:
    redis = FakeRedis()
    keys = Keys("unit")
    lock = LeaderLock(redis, keys.leader, settings.leader_ttl, "reaper-1")  # type: ignore[arg-type]
    lock.is_leader = leader
    return ReaperContext(settings=settings, db=FakeDb(), redis=redis,  # type: ignore[arg-type]
                         celery=FakeWorkers(), keys=keys, leader=lock,  # type: ignore[arg-type]
                         metrics=ReaperMetrics())


async def registered(ctx: ReaperContext, row: dict[str, Any], *, node: str = "w1@host",
                     pid: int = 4242, attempt: int | None = None, ttl: float = 10.0) -> None:
    """The registry entry a sidecar writes for the row's execution (a negative ttl: it
    stopped beating that long ago)."""
    await register(ctx.redis, ctx.keys, Entry(
        task_id=str(row["id"]), attempt=row["attempt"] if attempt is None else attempt,
        message_id=str(row["message_id"]), node=node, host="host", pid=pid,
        pid_started=1.0, started_at=time.time()), ttl)


async def events(ctx: ReaperContext, run: Any) -> list[dict[str, Any]]:
    """The events published on the events channel while `run` is awaited."""
    pubsub = ctx.redis.pubsub(ignore_subscribe_messages=True)
    await pubsub.subscribe(ctx.keys.events_channel)
    await run
    seen = []
    while (message := await pubsub.get_message(timeout=0)) is not None:
        seen.append(json.loads(message["data"]))
    await pubsub.aclose()
    return seen


def kills(ctx: ReaperContext, result: str) -> float:
    return ctx.metrics.registry.get_sample_value("taskreaper_kills_total",
                                                 {"result": result}) or 0.0


# -- the fakes keep to what they stand in for ----------------------------------------------------


@pytest.mark.parametrize("fake, real", [(FakeDb, Db), (FakeWorkers, CeleryOps),
                                        (FakeRedis, aioredis.Redis)])
def test_each_fake_method_has_the_real_ones_name_and_parameters(fake: type, real: type) -> None:
    arranging = {"add_task", "add_fence", "execute", "runs"}  # for tests, not the code
    for name, method in vars(fake).items():
        if name.startswith("_") or not callable(method) or name in arranging:
            continue
        assert hasattr(real, name), f"{real.__name__} has no {name}"
        if fake is FakeRedis:
            continue  # redis-py spells most parameters out only in its docs
        ours = list(inspect.signature(method).parameters)
        theirs = list(inspect.signature(getattr(real, name)).parameters)
        assert ours == theirs, f"{name}: {ours} != {theirs}"


# -- zombies: stale heartbeats -----------------------------------------------------------------


async def test_a_stale_execution_nobody_runs_is_lost_and_announced() -> None:
    ctx = reaper()
    stale = ctx.db.add_task(status="running", attempt=1, started_at=ago(60),
                            heartbeat_at=ago(10), worker="w1@host", pid=11)
    fresh = ctx.db.add_task(status="running", attempt=1, started_at=ago(60),
                            heartbeat_at=ago(0.5))
    never_beat = ctx.db.add_task(status="running", attempt=1, started_at=ago(3600))
    seen = await events(ctx, Zombies().run(ctx, Pass()))
    for row in (stale, never_beat):
        after = await ctx.db.get_task(row["id"])
        assert (after["status"], after["outcome"]) == ("lost", "gone")
        assert after["finished_at"] is not None
    assert (await ctx.db.get_task(fresh["id"]))["status"] == "running"
    assert {(e["task_id"], e["status"], e["outcome"]) for e in seen} == {
        (str(stale["id"]), "lost", "gone"), (str(never_beat["id"]), "lost", "gone")}


async def test_a_silent_execution_a_worker_still_runs_is_not_a_zombie() -> None:
    # given a row that stopped beating, but whose message a worker executes (GIL held)
    ctx = reaper()
    row = ctx.db.add_task(status="running", attempt=1, heartbeat_at=ago(10))
    await registered(ctx, row, node="w1@host", ttl=-5)
    ctx.celery.execute("w1@host", row["id"], row["message_id"])
    # when the rule runs, then it finds nothing and the row stays running
    assert await Zombies().run(ctx, Pass()) == 0
    assert (await ctx.db.get_task(row["id"]))["status"] == "running"


async def test_a_live_registry_entry_keeps_a_silent_row_running() -> None:
    # given a row whose DB heartbeat is late while its registry entry is fresh, and no
    # worker answering for it (a broadcast would have found nothing)
    ctx = reaper()
    row = ctx.db.add_task(status="running", attempt=1, heartbeat_at=ago(10))
    await registered(ctx, row, ttl=10)
    assert await Zombies().run(ctx, Pass()) == 0
    assert (await ctx.db.get_task(row["id"]))["status"] == "running"


async def test_a_stale_cancelling_row_ends_cancelled_and_is_never_resumed() -> None:
    ctx = reaper()
    await ctx.db.upsert_actor("resilient", "default", {}, {"auto_resume": 3})
    row = ctx.db.add_task(actor="resilient", status="cancelling", attempt=1,
                          heartbeat_at=ago(10))
    assert await Zombies().run(ctx, Pass()) == 1
    after = await ctx.db.get_task(row["id"])
    assert (after["status"], after["outcome"], after["resumes"]) == ("cancelled", "gone", 0)
    assert ctx.celery.celery.sent == []


async def test_auto_resume_requeues_a_lost_execution_until_its_allowance_is_spent() -> None:
    # given an actor allowed one automatic resume, and its execution gone silent
    ctx = reaper()
    await ctx.db.upsert_actor("resilient", "batch", {}, {"auto_resume": 1})
    row = ctx.db.add_task(actor="resilient", queue="batch", status="running", attempt=1,
                          heartbeat_at=ago(10))
    # when the rule runs
    seen = await events(ctx, Zombies().run(ctx, Pass()))
    # then the row is queued again under a new message, and that message is published
    after = await ctx.db.get_task(row["id"])
    assert (after["status"], after["resumes"], after["heartbeat_at"]) == ("queued", 1, None)
    assert after["message_id"] != row["message_id"]
    [sent] = ctx.celery.celery.sent
    assert (sent["name"], sent["id"], sent["queue"]) == ("resilient", str(after["message_id"]),
                                                         "batch")
    assert sent["kwargs"] == {"task_id": str(row["id"])}
    assert sent["headers"][QUEUED_AT_HEADER] == pytest.approx(after["queued_at"].timestamp())
    assert [(e["status"], e.get("resumed")) for e in seen] == [("queued", True)]
    # when its second attempt dies as well, then the allowance is spent: lost
    ctx.db.tasks[row["id"]].update(status="running", attempt=2, heartbeat_at=ago(10))
    assert await Zombies().run(ctx, Pass()) == 1
    final = await ctx.db.get_task(row["id"])
    assert (final["status"], final["resumes"]) == ("lost", 1)
    assert len(ctx.celery.celery.sent) == 1


# -- undead: registered executions whose row says otherwise ------------------------------------


@pytest.mark.parametrize("status, row_attempt, finished_ago", [
    ("succeeded", 1, 5.0),  # the row ended long enough ago
    ("cancelled", 1, 5.0),
    ("running", 2, None),  # a newer attempt owns the row
    ("lost", 2, 0.0),  # a newer attempt, even one that just ended
])
async def test_an_execution_its_row_disowns_is_killed_on_its_node(
        status: str, row_attempt: int, finished_ago: float | None) -> None:
    ctx = reaper()
    row = ctx.db.add_task(status=status, attempt=row_attempt,
                          finished_at=None if finished_ago is None else ago(finished_ago))
    await registered(ctx, row, node="w1@host", pid=77, attempt=1)
    ctx.celery.execute("w1@host", row["id"], row["message_id"], pid=77)
    assert await Undead().run(ctx, Pass()) == 1
    assert not ctx.celery.runs(row["message_id"])
    assert kills(ctx, "killed") == 1


@pytest.mark.parametrize("status, finished_ago", [("running", None), ("cancelling", None),
                                                  ("succeeded", 0.1)])
async def test_the_current_attempt_and_one_that_just_ended_are_left_alone(
        status: str, finished_ago: float | None) -> None:
    ctx = reaper()
    row = ctx.db.add_task(status=status, attempt=1,
                          finished_at=None if finished_ago is None else ago(finished_ago))
    await registered(ctx, row, attempt=1)
    ctx.celery.execute("w1@host", row["id"], row["message_id"])
    assert await Undead().run(ctx, Pass()) == 0
    assert ctx.celery.runs(row["message_id"])


async def test_a_kill_its_node_never_answers_is_counted_refused() -> None:
    ctx = reaper()
    row = ctx.db.add_task(status="succeeded", attempt=1, finished_at=ago(5))
    await registered(ctx, row, node="w1@host")
    ctx.celery.execute("w1@host", row["id"], row["message_id"])
    ctx.celery.silent.add("w1@host")
    assert await Undead().run(ctx, Pass()) == 1
    assert (kills(ctx, "refused"), kills(ctx, "killed")) == (1, 0)
    assert ctx.celery.runs(row["message_id"])


async def test_entries_that_stopped_beating_long_ago_are_pruned() -> None:
    ctx = reaper()
    rows = [ctx.db.add_task(status="running", attempt=1) for _ in range(3)]
    await registered(ctx, rows[0], ttl=10)  # beating
    await registered(ctx, rows[1], ttl=-1)  # just missed a beat
    await registered(ctx, rows[2], ttl=-(SETTINGS.heartbeat_timeout * 2 + 1))  # long gone
    assert set(await live_executions(ctx.redis, ctx.keys)) == {str(rows[0]["id"])}
    assert await StaleRegistry().run(ctx, Pass()) == 1
    left = await live_executions(ctx.redis, ctx.keys, include_expired=True)
    assert set(left) == {str(rows[0]["id"]), str(rows[1]["id"])}
    assert str(rows[2]["id"]) not in ctx.redis.hashes[ctx.keys.execution_info]


# -- the cancel executor: due cancellations ------------------------------------------------------


def cancelling(ctx: ReaperContext, *, silent_for: float = 0.5, attempt: int = 1,
               due: float = 5.0) -> dict[str, Any]:
    return ctx.db.add_task(status="cancelling", attempt=attempt, started_at=ago(60),
                           heartbeat_at=ago(silent_for), cancel_deadline=ago(due),
                           cancel_reason="user")


async def test_a_due_cancel_is_killed_on_its_node_and_settled_killed() -> None:
    ctx = reaper()
    row = cancelling(ctx)
    await registered(ctx, row, node="w1@host", pid=77)
    ctx.celery.execute("w1@host", row["id"], row["message_id"], pid=77)
    seen = await events(ctx, CancelExecutor(ctx).escalate_due())
    after = await ctx.db.get_task(row["id"])
    assert (after["status"], after["outcome"]) == ("cancelled", "killed")
    assert not ctx.celery.runs(row["message_id"])
    assert [(e["status"], e["outcome"]) for e in seen] == [("cancelled", "killed")]


async def test_a_due_cancel_not_yet_past_its_margin_waits() -> None:
    ctx = reaper()
    row = cancelling(ctx, due=SETTINGS.kill_margin / 2)
    ctx.celery.execute("w1@host", row["id"], row["message_id"])
    assert await CancelExecutor(ctx).escalate_due() == 0
    assert (await ctx.db.get_task(row["id"]))["status"] == "cancelling"
    assert ctx.celery.runs(row["message_id"])


@pytest.mark.parametrize("entry_attempt, status", [
    (2, "cancelled"),  # the node that runs this attempt says it is not there: gone
    (1, "cancelling"),  # an older attempt's entry proves nothing: asked again next tick
])
async def test_only_the_node_of_this_attempt_can_say_the_execution_is_gone(
        entry_attempt: int, status: str) -> None:
    ctx = reaper()
    row = cancelling(ctx, attempt=2)
    await registered(ctx, row, node="w1@host", attempt=entry_attempt)
    ctx.celery.execute("w1@host", uuid.uuid4(), uuid.uuid4())  # w1 answers, busy elsewhere
    await CancelExecutor(ctx).escalate_due()
    after = await ctx.db.get_task(row["id"])
    assert after["status"] == status
    assert after["outcome"] == ("gone" if status == "cancelled" else None)


async def test_without_a_registry_entry_only_a_long_silence_settles_a_due_cancel() -> None:
    # given a due cancel with no registry entry, and one worker answering that it does
    # not run it (a slow host might not have answered at all)
    ctx = reaper()
    row = cancelling(ctx, silent_for=1.0)
    ctx.celery.execute("w2@other", uuid.uuid4(), uuid.uuid4())
    executor = CancelExecutor(ctx)
    await executor.escalate_due()
    assert (await ctx.db.get_task(row["id"]))["status"] == "cancelling"
    # when the row has been silent longer than the heartbeat timeout, then it is gone
    ctx.db.tasks[row["id"]]["heartbeat_at"] = ago(SETTINGS.heartbeat_timeout + 1)
    await executor.escalate_due()
    after = await ctx.db.get_task(row["id"])
    assert (after["status"], after["outcome"]) == ("cancelled", "gone")


async def test_each_cancelled_message_is_revoked_once_and_a_new_leader_looks_back_briefly(
        ) -> None:
    ctx = reaper()
    t = time.time()
    ancient = t - (SETTINGS.history_retention_days * 86400 + 60)
    await ctx.redis.zadd(ctx.keys.cancelled, {"m-ancient": ancient, "m-hour": t - 3600,
                                              "m-recent": t - 1})
    executor = CancelExecutor(ctx)
    # a follower revokes nothing
    ctx.leader.is_leader = False
    await executor.tick()
    assert ctx.celery.revoked == []
    # a new leader re-sends what was cancelled shortly before it took over, not everything
    ctx.leader.is_leader = True
    await executor.tick()
    assert ctx.celery.revoked == ["m-recent"]
    # and later only what is new
    await ctx.redis.zadd(ctx.keys.cancelled, {"m-new": time.time()})
    await executor.tick()
    await executor.tick()
    assert ctx.celery.revoked == ["m-recent", "m-new"]
    # entries past the retention period are dropped from the set
    assert "m-ancient" not in ctx.redis.zsets[ctx.keys.cancelled]
    assert "m-hour" in ctx.redis.zsets[ctx.keys.cancelled]


# -- the fence sweeper ---------------------------------------------------------------------------


def fenced_backlog(ctx: ReaperContext, *, fence_age: float, purged: bool = True
                   ) -> tuple[int, list[uuid.UUID], list[uuid.UUID]]:
    """A fence on actor `distill` and the rows around it: (fence, covered, spared)."""
    fence = ctx.db.add_fence(at=ago(fence_age), actor="distill", reason="maintenance",
                             queues=["default"], covered=5,
                             purged_at=now() if purged else None)
    before = ago(fence_age + 60)
    covered = [ctx.db.add_task(queued_at=before)["id"] for _ in range(5)]
    spared = [ctx.db.add_task()["id"],  # queued after the fence
              ctx.db.add_task(actor="other", queued_at=before)["id"],  # out of scope
              ctx.db.add_task(status="running", attempt=1, queued_at=before)["id"]]
    return fence, covered, spared


async def test_a_fence_sweeps_every_covered_row_and_nothing_else() -> None:
    ctx = reaper()
    fence, covered, spared = fenced_backlog(ctx, fence_age=60)
    await FenceSweeper(ctx, batch=2).tick()
    for tid in covered:
        row = await ctx.db.get_task(tid)
        assert (row["status"], row["outcome"], row["cancel_reason"]) == (
            "cancelled", "never_started", "maintenance")
    assert [(await ctx.db.get_task(t))["status"] for t in spared] == ["queued", "queued",
                                                                      "running"]
    assert ctx.db.fences[fence]["swept"] == 5
    assert ctx.db.fences[fence]["swept_at"] is not None
    assert await ctx.db.open_fences() == []


async def test_a_young_fence_stays_open_for_rows_that_commit_late() -> None:
    # given a fence set a moment ago, its covered rows swept
    ctx = reaper()
    fence, covered, _ = fenced_backlog(ctx, fence_age=1)
    sweeper = FenceSweeper(ctx, batch=2)
    await sweeper.tick()
    assert ctx.db.fences[fence]["swept_at"] is None
    # when a row queued before the fence commits only now, then the next tick takes it
    late = ctx.db.add_task(queued_at=ago(2))
    await sweeper.tick()
    assert (await ctx.db.get_task(late["id"]))["status"] == "cancelled"
    assert ctx.db.fences[fence]["swept"] == 6


async def test_a_follower_sweeps_nothing() -> None:
    ctx = reaper(leader=False)
    _, covered, _ = fenced_backlog(ctx, fence_age=60)
    await FenceSweeper(ctx).tick()
    assert {(await ctx.db.get_task(t))["status"] for t in covered} == {"queued"}


async def test_the_purge_walks_each_list_of_the_fences_queues_then_calls_it_purged() -> None:
    # given covered and uncovered messages in the fence's queue (and its priority lists),
    # and a covered-looking message in a queue the fence does not name
    ctx = reaper()
    fence, _, _ = fenced_backlog(ctx, fence_age=60, purged=False)
    at = ctx.db.fences[fence]["at"].timestamp()
    default, other = queue_lists(ctx.keys, "default"), queue_lists(ctx.keys, "other")
    lists: dict[str, list[tuple[float, str]]] = {
        default[0]: [(at + 1, "distill"), (at - 9, "crunch")] + [(at - 9, "distill")] * 7,
        default[1]: [(at - 9, "distill")] * 2,
        other[0]: [(at - 9, "distill")]}

    async def purge(keys: list[str], args: list[Any]) -> list[int]:
        """The purge script's contract: one window from `offset`, covered ones removed."""
        items = lists.get(keys[0], [])
        offset, window, fence_at, actor = int(args[0]), int(args[1]), float(args[2]), args[3]
        size = len(items)
        if offset >= size:
            return [0, 0, 1]
        seen = items[offset:offset + window]
        kept = [m for m in seen if not (m[0] < fence_at and actor in ("", m[1]))]
        items[offset:offset + window] = kept
        return [len(seen) - len(kept), len(kept), int(offset + len(seen) >= size)]

    ctx.redis.scripts[_PURGE] = purge
    sweeper = FenceSweeper(ctx, window=2)
    await sweeper.tick()
    # then only uncovered messages remain in the fence's queue, the other queue is untouched
    assert lists[default[0]] == [(at + 1, "distill"), (at - 9, "crunch")]
    assert lists[default[1]] == []
    assert lists[other[0]] == [(at - 9, "distill")]
    assert ctx.db.fences[fence]["purged_at"] is not None
    assert ctx.metrics.registry.get_sample_value("taskreaper_fence_purged_messages_total") == 9


# -- one reconcile pass --------------------------------------------------------------------------


async def test_a_pass_runs_every_rule_and_records_its_findings() -> None:
    ctx = reaper()
    row = ctx.db.add_task(status="running", attempt=1, heartbeat_at=ago(10))
    findings = await Reconciler(ctx).tick()
    assert findings == {"zombies": 1, "undead": 0, "trees": 0, "stale_registry": 0,
                        "retention": 0, "tallies": 0}
    assert (await ctx.db.get_task(row["id"]))["status"] == "lost"
    status = ctx.redis.hashes[ctx.keys.reaper_status]
    assert (status["leader"], status["found:zombies"]) == ("reaper-1", "1")


async def test_a_failing_rule_is_reported_and_the_others_still_run() -> None:
    class Broken:
        name = "broken"

        async def run(self, ctx: ReaperContext, p: Pass) -> int:
            raise RuntimeError("boom")

    ctx = reaper()
    row = ctx.db.add_task(status="running", attempt=1, heartbeat_at=ago(10))
    assert await Reconciler(ctx, (Broken(), Zombies())).tick() == {"broken": -1, "zombies": 1}
    assert (await ctx.db.get_task(row["id"]))["status"] == "lost"


async def test_a_follower_runs_no_rule() -> None:
    ctx = reaper(leader=False)
    row = ctx.db.add_task(status="running", attempt=1, heartbeat_at=ago(10))
    assert await Reconciler(ctx).tick() == {}
    assert (await ctx.db.get_task(row["id"]))["status"] == "running"


async def test_retention_deletes_only_what_ended_before_the_period() -> None:
    ctx = reaper()
    old = ctx.db.add_task(status="succeeded", finished_at=ago(31 * 86400))
    recent = ctx.db.add_task(status="succeeded", finished_at=ago(29 * 86400))
    findings = await Reconciler(ctx).tick()
    assert findings["retention"] == 1
    assert await ctx.db.get_task(old["id"]) is None
    assert await ctx.db.get_task(recent["id"]) is not None


# -- the broker scan -----------------------------------------------------------------------------


async def test_a_queued_row_whose_message_vanished_is_sent_again_once_then_lost() -> None:
    ctx = reaper()
    stranded = ctx.db.add_task(enqueued_at=ago(60), queued_at=ago(60))
    waiting = ctx.db.add_task(enqueued_at=ago(60), queued_at=ago(60))
    await ctx.redis.zadd(ctx.keys.pending, {str(waiting["message_id"]): time.time() - 60})
    ctx.db.add_fence(at=ago(90), swept_at=now(), purged_at=now())  # older than both rows
    scan = BrokerScan(ctx)
    # when the scan runs, the row whose message is nowhere gets a new one
    await scan.tick()
    after = await ctx.db.get_task(stranded["id"])
    assert (after["status"], after["requeues"]) == ("queued", 1)
    assert [m["id"] for m in ctx.celery.celery.sent] == [str(after["message_id"])]
    # and a row whose message is still pending is left as it was
    assert await ctx.db.get_task(waiting["id"]) == waiting
    # when the new message vanishes as well, then the next scan (asked for at once, as a
    # cancel-all does) finds the row lost
    ctx.db.tasks[stranded["id"]]["enqueued_at"] = ago(60)
    await ctx.redis.set(ctx.keys.scan_request, 1)
    seen = await events(ctx, scan.tick())
    final = await ctx.db.get_task(stranded["id"])
    assert (final["status"], final["outcome"]) == ("lost", "gone")
    assert [(e["task_id"], e["status"]) for e in seen] == [(str(stranded["id"]), "lost")]
    assert len(ctx.celery.celery.sent) == 1


async def test_a_fenced_row_is_the_sweepers_not_lost() -> None:
    ctx = reaper()
    row = ctx.db.add_task(enqueued_at=ago(60), queued_at=ago(60))
    ctx.db.add_fence(at=ago(30))
    await BrokerScan(ctx).tick()
    assert await ctx.db.get_task(row["id"]) == row
    assert ctx.celery.celery.sent == []


async def test_work_a_worker_holds_without_a_live_row_is_revoked_and_killed() -> None:
    # given a worker executing a message whose task has no row, another whose row ended,
    # and holding a reserved message whose task has no row
    ctx = reaper()
    finished = ctx.db.add_task(status="succeeded", attempt=1, finished_at=ago(5))
    current = ctx.db.add_task(status="running", attempt=1)
    orphan = ctx.celery.execute("w1@host", uuid.uuid4(), uuid.uuid4())
    ctx.celery.execute("w1@host", finished["id"], finished["message_id"])
    ctx.celery.execute("w1@host", current["id"], current["message_id"])
    ctx.celery.waiting["w1@host"] = [{"id": "m-reserved", "name": "distill",
                                      "kwargs": {"task_id": str(uuid.uuid4())}}]
    # when the scan runs
    await BrokerScan(ctx).tick()
    # then the orphans are revoked, the executing ones killed, the current one untouched
    assert sorted(ctx.celery.revoked) == sorted([orphan["id"], "m-reserved"])
    assert not ctx.celery.runs(orphan["id"]) and not ctx.celery.runs(finished["message_id"])
    assert ctx.celery.runs(current["message_id"])
    status = ctx.redis.hashes[ctx.keys.reaper_status]
    assert (status["found:orphans"], status["found:undead_unregistered"]) == ("2", "1")

