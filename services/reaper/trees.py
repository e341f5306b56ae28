"""The reaper's tree rules: what a tree's own writers left undone, settled each pass.

- A waiting parent whose children have all ended is settled (its last child's worker
  died between recording its end and looking at its parent, or the child ended by a path
  that does not look: the reaper marking it lost, a cancel-all sweep).
- Unfinished children under a parent that is cancelled or being cancelled are cancelled
  with their subtree (a subtree cancel cut short between its two transactions, or a child
  spawned while its parent's cancel committed). Their claims refuse them anyway; this
  makes the rows say so.

It also writes each busy tree's heartbeat log line (see tree_log.py).
"""

from __future__ import annotations

from services.reaper.context import ReaperContext
from services.reaper.tree_log import TreeHeartbeats
from shared.states import CancelReason
from shared.tree_control import TreeControl
from shared.trees import settle_up

# Parents looked at per pass, each rule.
PAGE = 200


class Trees:
    name = "trees"

    def __init__(self) -> None:
        self.beats = TreeHeartbeats()

    async def run(self, ctx: ReaperContext, p: object) -> int:
        celery = ctx.celery.celery
        await self.beats.run(ctx)
        found = 0
        for parent in await ctx.db.waiting_settled(PAGE):
            found += bool(await settle_up(ctx.db, celery, parent))
        orphaned = await ctx.db.orphaned_parents(PAGE)
        if orphaned:
            control = TreeControl(ctx.settings, ctx.db, ctx.redis, celery)
            for parent in orphaned:
                changed = await control.cancel(parent, by="reaper", force=False,
                                               reason=CancelReason.PARENT_CANCELLED)
                found += len(changed.rows) + changed.swept
        return found
