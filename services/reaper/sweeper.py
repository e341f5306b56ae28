"""The fence sweeper: what a cancel-all covers, written down and taken out of Redis.

A cancel-all answers after writing one fence row; from then on no covered task can
start (the claim refuses it). This loop does the rest at its own pace, in short steps
that hold no lock for long: covered rows go to `cancelled` a batch at a time (SKIP
LOCKED, so no writer waits for the sweep and the sweep waits for no writer), and the
covered messages leave the broker's queues a window at a time (`purge`), both at once:
one is PostgreSQL's work, the other Redis'.

The rows are walked in (queued_at, id) order, each batch going on after the last row the
one before took: one lane from the oldest covered row up, and once the messages are purged a
second one from the fence down, until they meet. A batch is sized by how long the last one
took, so that none holds its rows for much longer than `BATCH_SECONDS` however busy the
machine is.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import timedelta

import structlog

from services.reaper.context import ReaperContext
from services.reaper.purge import PURGE_SCRIPT as _PURGE
from services.reaper.purge import PURGE_WINDOW, FencePurge
from shared.db import Record
from shared.db.cancels import Edge, SweepStep
from shared.states import TaskStatus

log = structlog.get_logger("reaper.sweeper")

# Rows a batch statement writes: the first batch's, and the bounds of the later ones, whose
# size follows the time the last one took toward BATCH_SECONDS (see `make bench`, section
# scale: a statement's transaction holds its rows locked for that long).
SWEEP_BATCH = 500
# Lanes walking at once, from either end of the covered range: the work is the database's,
# on every core it has. While the fence's messages are being purged, one: Redis works on
# another core then (on one host, the only other one), and a second lane would mostly
# contend with the first for the table's end.
SWEEP_LANES = 2
MIN_BATCH, MAX_BATCH = 100, 20_000
BATCH_SECONDS = 0.04
# How long one tick may work before yielding to the other loops.
TICK_BUDGET = 0.5
# A task inserted just before a fence may commit a moment after it: until a fence is this
# old, each tick walks again the rows queued this long before it; then one look over the
# whole range, without a lock, decides whether it is swept.
SETTLE_SECONDS = 30.0

_Batch = Callable[[int], Awaitable[SweepStep]]


@dataclass
class _Walk:
    """One walk over a fence's covered range (kept in memory: a new leader walks again from
    the start, which only costs time). `after` is the last row the ascending lane took,
    `before` the last one the descending lane took: every row between is still to do. A
    lane whose batch comes back short found nothing between them but rows the other lane's
    batch holds, which that batch writes, or rows someone else holds, which a later look
    over the range finds: this walk's queued rows are done."""

    after: Edge | None = None
    before: Edge | None = None
    queued_done: bool = False
    paused_after: Edge | None = None
    paused_done: bool = False

    @property
    def done(self) -> bool:
        return self.queued_done and self.paused_done


class FenceSweeper:
    name = "sweeper"

    def __init__(self, ctx: ReaperContext, *, batch: int = SWEEP_BATCH, lanes: int = SWEEP_LANES,
                 window: int = PURGE_WINDOW) -> None:
        self.ctx = ctx
        self.batch = float(batch)
        self.lanes = lanes
        self.window = window
        self._walks: dict[int, _Walk] = {}
        self._purges: dict[int, FencePurge] = {}
        self._script = ctx.redis.register_script(_PURGE)

    async def tick(self) -> None:
        if not self.ctx.leader.is_leader:
            return
        fences = await self.ctx.db.open_fences()
        if not fences:
            self._walks.clear()
            self._purges.clear()
            return
        until = time.monotonic() + TICK_BUDGET
        for fence in fences:
            steps = []
            if fence["swept_at"] is None:
                lanes = 1 if fence["purged_at"] is None else self.lanes
                steps.append(self._sweep(fence, lanes, until))
            if fence["purged_at"] is None:
                steps.append(self._purge(fence, until))
            await asyncio.gather(*steps)
            if time.monotonic() > until:
                return

    # -- the rows ---------------------------------------------------------------------------

    async def _sweep(self, fence: Record, lanes: int, until: float) -> None:
        ctx = self.ctx
        walk = self._walks.get(fence["id"]) or self._walk(fence["id"])
        if not walk.done:
            swept = sum(await asyncio.gather(*(self._lane(fence, walk, down, until)
                                               for down in (False, True)[:lanes])))
            if not walk.queued_done or time.monotonic() > until:
                await self._counted(fence, swept)
                return
            swept += await self._paused(fence, walk, until)
            await self._counted(fence, swept)
            if not walk.done:
                return
        if fence["age"] < SETTLE_SECONDS:
            # The next tick walks the last moments before the fence again: a row queued then
            # may have committed after this walk passed it.
            self._walk(fence["id"], (fence["at"] - timedelta(seconds=SETTLE_SECONDS),
                                     uuid.UUID(int=0)))
        elif await ctx.db.fence_leftovers(fence):
            self._walk(fence["id"])
        else:
            self._walks.pop(fence["id"], None)
            await ctx.db.fence_swept(fence["id"])
            log.info("reaper.fence_swept", fence=fence["id"], swept=fence["swept"],
                     covered=fence["covered"])

    def _walk(self, fence_id: int, after: Edge | None = None) -> _Walk:
        """A new walk over the fence's range, or over its part after `after`."""
        walk = self._walks[fence_id] = _Walk(after=after, paused_after=after)
        return walk

    async def _lane(self, fence: Record, walk: _Walk, down: bool, until: float) -> int:
        """Batches of queued rows from one end of what is left, until the lane meets the
        other one or the tick is over."""
        total = 0
        while not walk.queued_done:
            step, asked = await self._step(fence, lambda n: self.ctx.db.sweep_fence_range(
                fence, n, descending=down, after=walk.after, before=walk.before))
            total += step.swept
            if step.edge is not None:
                if down:
                    walk.before = step.edge
                else:
                    walk.after = step.edge
            if step.taken < asked:
                walk.queued_done = True
            if time.monotonic() > until:
                break
        return total

    async def _paused(self, fence: Record, walk: _Walk, until: float) -> int:
        """The covered paused rows, oldest first, once the queued ones are done."""
        total = 0
        while not walk.paused_done:
            step, asked = await self._step(fence, lambda n: self.ctx.db.sweep_fence_range(
                fence, n, paused=True, after=walk.paused_after))
            total += step.swept
            walk.paused_after = step.edge or walk.paused_after
            walk.paused_done = step.taken < asked
            if time.monotonic() > until:
                break
        return total

    async def _step(self, fence: Record, run: _Batch) -> tuple[SweepStep, int]:
        """One batch statement, sized by the last one's time; with the size it was asked."""
        ctx = self.ctx
        asked = int(self.batch)
        started = time.perf_counter()
        step = await run(asked)
        took = time.perf_counter() - started
        ctx.metrics.sweep_seconds.observe(took)
        # Toward BATCH_SECONDS, at most doubling or halving at a time: one statement slowed
        # by a busy machine moves the size a step, not to an extreme.
        factor = min(2.0, max(0.5, BATCH_SECONDS / max(took, 1e-3)))
        self.batch = min(float(MAX_BATCH), max(float(MIN_BATCH), self.batch * factor))
        if step.swept:
            ctx.metrics.swept.inc(step.swept)
            await ctx.publish_event("tasks.swept", fence=fence["id"],
                                    status=TaskStatus.CANCELLED, swept=step.swept)
        return step, asked

    async def _counted(self, fence: Record, swept: int) -> None:
        """A tick's rows counted on the fence in one write, not one per batch: the lanes'
        batches then share no row."""
        if swept:
            await self.ctx.db.fence_progress(fence["id"], swept)

    # -- the messages -------------------------------------------------------------------------

    async def _purge(self, fence: Record, until: float) -> None:
        ctx = self.ctx
        state = self._purges.get(fence["id"])
        if state is None:
            state = self._purges[fence["id"]] = FencePurge.of(fence, ctx.keys)
        if not await state.walk(self._script, fence, ctx.keys.pending, window=self.window,
                                until=until):
            return
        await ctx.db.fence_purged(fence["id"])
        self._purges.pop(fence["id"], None)
        ctx.metrics.purged.inc(state.removed)
        log.info("reaper.fence_purged", fence=fence["id"], messages=state.removed)
