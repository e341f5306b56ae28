"""The fence sweeper's own rules on in-memory fakes: batches sized by how long the last one
took, and a fence called swept only once a look over its whole range finds nothing left."""

from __future__ import annotations

import asyncio
import dataclasses
from typing import Any

import pytest

from services.reaper import sweeper as sweeper_module
from services.reaper.sweeper import MAX_BATCH, MIN_BATCH, FenceSweeper
from tests.fakes import ago
from tests.test_unit_reaper import reaper

pytestmark = pytest.mark.unit


async def test_a_slow_batch_shrinks_the_next_ones_and_quick_ones_grow_them_again(
        monkeypatch: pytest.MonkeyPatch) -> None:
    # given a fence over many covered rows, and statements that take 4 times their target
    monkeypatch.setattr(sweeper_module, "BATCH_SECONDS", 0.01)
    ctx = reaper()
    fence = ctx.db.add_fence(at=ago(60), actor="distill", queues=["default"], purged_at=ago(1))
    for _ in range(200):
        ctx.db.add_task(queued_at=ago(120))
    asked: list[int] = []
    delay = 0.04
    sweep = ctx.db.sweep_fence_range

    async def timed(fence: dict[str, Any], batch: int, **kwargs: Any) -> Any:
        asked.append(batch)
        await asyncio.sleep(delay)
        # A few rows each, as if that were all the batch found room for: many batches.
        step = await sweep(fence, min(batch, 3), **kwargs)
        return dataclasses.replace(step, taken=batch if step.taken == 3 else step.taken)

    ctx.db.sweep_fence_range = timed  # type: ignore[method-assign]
    sweeper = FenceSweeper(ctx, batch=1600)
    # when a tick runs them, then each slow batch halves the size of the next one asked
    await sweeper.tick()
    assert asked[:3] == [1600, 1600, 800]  # the two lanes' first batches went out at once
    assert all(b == max(a // 2, MIN_BATCH) for a, b in zip(asked[2:], asked[3:], strict=False))
    assert asked[-1] == MIN_BATCH
    # and when statements get quick, the batches grow back, twice at most each time
    delay = 0.0
    asked.clear()
    await sweeper.tick()
    assert all(b <= 2 * a for a, b in zip(asked, asked[1:], strict=False))
    assert asked[-1] > MIN_BATCH and max(asked) <= MAX_BATCH
    assert ctx.db.fences[fence]["swept"] > 0


async def test_an_old_fence_stays_open_while_a_covered_row_was_out_of_the_walks_reach() -> None:
    # given a fence a minute old, and one of its covered rows hidden from the first walk (as
    # a row someone holds is skipped)
    ctx = reaper()
    fence = ctx.db.add_fence(at=ago(60), actor="distill", queues=["default"], purged_at=ago(1))
    rows = [ctx.db.add_task(queued_at=ago(120))["id"] for _ in range(4)]
    held = {rows[2]: ctx.db.tasks[rows[2]]}
    sweep = ctx.db.sweep_fence_range

    async def skipping(fence: dict[str, Any], batch: int, **kwargs: Any) -> Any:
        hidden = {k: ctx.db.tasks.pop(k) for k in held if k in ctx.db.tasks}
        try:
            return await sweep(fence, batch, **kwargs)
        finally:
            ctx.db.tasks.update(hidden)

    ctx.db.sweep_fence_range = skipping  # type: ignore[method-assign]
    sweeper = FenceSweeper(ctx)
    # when the first walk is over, then the fence is not swept: the look over its range saw
    # the row left queued
    await sweeper.tick()
    assert [ctx.db.tasks[r]["status"] for r in rows] == ["cancelled"] * 2 + ["queued"] + [
        "cancelled"]
    assert ctx.db.fences[fence]["swept_at"] is None
    # when the row is within reach again, then the next walk takes it and the fence is swept
    held.clear()
    await sweeper.tick()
    assert ctx.db.tasks[rows[2]]["status"] == "cancelled"
    assert ctx.db.fences[fence]["swept_at"] is not None
    assert ctx.db.fences[fence]["swept"] == 4


async def test_one_lane_walks_while_the_messages_are_purged_and_two_once_they_are() -> None:
    # given a fence over many covered rows whose messages are still in the broker (their
    # purge takes a while), and batches that take a few rows each
    ctx = reaper()
    fence = ctx.db.add_fence(at=ago(60), actor="distill", queues=["default"])
    for _ in range(300):
        ctx.db.add_task(queued_at=ago(120))
    lanes: list[bool] = []
    sweep = ctx.db.sweep_fence_range

    async def recorded(fence: dict[str, Any], batch: int, **kwargs: Any) -> Any:
        lanes.append(kwargs.get("descending", False))
        await asyncio.sleep(0.01)
        step = await sweep(fence, min(batch, 3), **kwargs)
        return dataclasses.replace(step, taken=batch if step.taken == 3 else step.taken)

    async def purge(keys: list[str], args: list[Any]) -> list[int]:
        await asyncio.sleep(0.1)  # each of the queue's lists, empty
        return [0, 0, 1]

    ctx.db.sweep_fence_range = recorded  # type: ignore[method-assign]
    ctx.redis.scripts[sweeper_module._PURGE] = purge
    sweeper = FenceSweeper(ctx)
    # when a tick runs while the purge does, then only the ascending lane walks
    await sweeper.tick()
    assert lanes and not any(lanes)
    assert ctx.db.fences[fence]["purged_at"] is not None
    # when the next tick runs, the messages gone, then the descending lane walks too
    lanes.clear()
    await sweeper.tick()
    assert True in lanes and False in lanes
