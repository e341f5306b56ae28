"""The fence sweeper: what a cancel-all covers, written down and taken out of Redis.

A cancel-all answers after writing one fence row; from then on no covered task can
start (the claim refuses it). This loop does the rest at its own pace, in short steps
that hold no lock for long: covered rows go to `cancelled` a batch at a time (SKIP
LOCKED, so no writer waits for the sweep and the sweep waits for no writer), and the
covered messages leave the broker's queues a window at a time.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

import structlog

from services.reaper.context import ReaperContext
from shared.db import Record
from shared.queues import queue_lists
from shared.states import TaskStatus
from shared.submit import QUEUED_AT_HEADER

log = structlog.get_logger("reaper.sweeper")

# Rows written per statement, and messages looked at per Redis call: each step stays around
# a hundred milliseconds at any backlog (see `make bench`, section scale). Two batches run
# at once (SKIP LOCKED keeps them apart): the work is the database's, on every core it has.
SWEEP_BATCH = 2500
SWEEP_LANES = 2
PURGE_WINDOW = 500
# How long one tick may work before yielding to the other loops.
TICK_BUDGET = 0.5
# A task inserted just before a fence may commit a moment after it: a fence is called swept
# only once a batch finds nothing this long after the fence was set.
SETTLE_SECONDS = 30.0

# One window of a queue, from its oldest end (kombu pushes on the left and pops on the
# right), `offset` messages in: the covered ones are marked and removed in one LREM that
# stops at the window. Covered means: our header says the task was queued before the
# fence, and the actor is in the fence's scope.
_PURGE = """
local len = redis.call('LLEN', KEYS[1])
local offset = tonumber(ARGV[1])
if offset >= len then return {0, 0, 1} end
local items = redis.call('LRANGE', KEYS[1], -(offset + tonumber(ARGV[2])), -(offset + 1))
local fence, actor, header = tonumber(ARGV[3]), ARGV[4], ARGV[5]
local marker = '\\0taskreaper:purged'
local removed, kept = 0, 0
for i = #items, 1, -1 do
  local ok, msg = pcall(cjson.decode, items[i])
  local covered = false
  if ok and type(msg) == 'table' and type(msg['headers']) == 'table' then
    local h = msg['headers']
    local queued = tonumber(h[header])
    if queued and queued < fence and (actor == '' or h['task'] == actor) then
      covered = true
      if type(h['id']) == 'string' then redis.call('ZREM', KEYS[2], h['id']) end
    end
  end
  if covered then
    redis.call('LSET', KEYS[1], -(offset + (#items - i) + 1), marker)
    removed = removed + 1
  else
    kept = kept + 1
  end
end
if removed > 0 then redis.call('LREM', KEYS[1], -removed, marker) end
local done = 0
if offset + #items >= len then done = 1 end
return {removed, kept, done}
"""


@dataclass
class _Purge:
    """Where the walk over one fence's queues stands (kept in memory: a new leader walks
    again from the start, which only costs time)."""

    lists: list[str]
    offsets: dict[str, int] = field(default_factory=dict)
    removed: int = 0


class FenceSweeper:
    name = "sweeper"

    def __init__(self, ctx: ReaperContext, *, batch: int = SWEEP_BATCH,
                 window: int = PURGE_WINDOW) -> None:
        self.ctx = ctx
        self.batch = batch
        self.window = window
        self._purges: dict[int, _Purge] = {}
        self._script = ctx.redis.register_script(_PURGE)

    async def tick(self) -> None:
        if not self.ctx.leader.is_leader:
            return
        fences = await self.ctx.db.open_fences()
        if not fences:
            self._purges.clear()
            return
        until = time.monotonic() + TICK_BUDGET
        for fence in fences:
            # The rows and the messages at once: one is PostgreSQL's work, the other Redis'.
            steps = []
            if fence["swept_at"] is None:
                steps.append(self._sweep(fence, until))
            if fence["purged_at"] is None:
                steps.append(self._purge(fence, until))
            await asyncio.gather(*steps)
            if time.monotonic() > until:
                return

    async def _sweep(self, fence: Record, until: float) -> None:
        lanes = await asyncio.gather(*(self._lane(fence, until) for _ in range(SWEEP_LANES)))
        swept = sum(n for n, _ in lanes)
        if all(finished for _, finished in lanes) and fence["age"] >= SETTLE_SECONDS:
            await self.ctx.db.fence_swept(fence["id"])
            log.info("reaper.fence_swept", fence=fence["id"], swept=fence["swept"] + swept,
                     covered=fence["covered"])

    async def _lane(self, fence: Record, until: float) -> tuple[int, bool]:
        """Batches until one comes back short (True: nothing left) or the tick is over."""
        ctx = self.ctx
        total = 0
        while True:
            started = time.perf_counter()
            n = await ctx.db.sweep_fence(fence, self.batch)
            ctx.metrics.sweep_seconds.observe(time.perf_counter() - started)
            total += n
            if n:
                ctx.metrics.swept.inc(n)
                await ctx.publish_event("tasks.swept", fence=fence["id"], status=TaskStatus.CANCELLED,
                                        swept=n)
            if n < self.batch:
                return total, True
            if time.monotonic() > until:
                return total, False

    async def _purge(self, fence: Record, until: float) -> None:
        ctx = self.ctx
        state = self._purges.get(fence["id"])
        if state is None:
            queues = [fence["queue"]] if fence["queue"] else list(fence["queues"])
            state = self._purges[fence["id"]] = _Purge(
                [key for q in queues for key in queue_lists(ctx.keys, q)])
        actor = fence["actor"] or ""
        while state.lists:
            key = state.lists[0]
            offset = state.offsets.get(key, 0)
            removed, kept, done = await self._script(
                keys=[key, ctx.keys.pending],
                args=[offset, self.window, repr(fence["at_epoch"]), actor, QUEUED_AT_HEADER])
            state.removed += int(removed)
            state.offsets[key] = offset + int(kept)
            if done:
                state.lists.pop(0)
            if time.monotonic() > until:
                return
        await ctx.db.fence_purged(fence["id"])
        self._purges.pop(fence["id"], None)
        ctx.metrics.purged.inc(state.removed)
        log.info("reaper.fence_purged", fence=fence["id"], messages=state.removed)
