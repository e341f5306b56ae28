"""The broker scan: what only Celery itself knows, asked at a low rate.

Finds orphans (work executing or waiting in a worker with no row), executions the
registry does not list whose row is finished, and lost messages (rows queued for long
whose message is in no queue, no unacknowledged set and no worker).
"""

from __future__ import annotations

import time
import uuid
from typing import Any

import structlog

from services.reaper.context import ReaperContext
from services.reaper.reconcile import Pass
from shared.states import EXECUTING, Outcome, TaskStatus
from shared.submit import publish

log = structlog.get_logger("reaper.broker_scan")

# Stranded rows looked at per scan: the cost of a pass does not grow with the backlog.
LOST_PAGE = 500


class BrokerScan:
    """What only Celery itself knows, asked at a low rate in a loop of its own (broadcasts
    wait up to a second for replies, and must not slow the reconcile pass):
    orphans (executing or waiting with no row: revoked, and killed if executing), undead
    executions our registry does not list, and lost messages (rows queued for a long time
    whose message is nowhere: re-enqueued once, then `lost`)."""

    name = "broker_scan"

    def __init__(self, ctx: ReaperContext) -> None:
        self.ctx = ctx
        self._last = 0.0
        # Where the lost-message rule's walk over stranded rows goes on from.
        self._cursor: tuple[Any, uuid.UUID] | None = None

    async def tick(self) -> None:
        """Runs often; scans when due or when a cancel-all asked for it."""
        ctx = self.ctx
        if not ctx.leader.is_leader:
            return
        due = time.time() - self._last >= ctx.settings.orphan_scan_interval
        if not due and not await ctx.redis.getdel(ctx.keys.scan_request):
            return
        self._last = time.time()
        p = Pass()
        found = await self._celery_side(ctx, p)
        found += await self._lost_messages(ctx, p)
        await ctx.redis.hset(ctx.keys.reaper_status, mapping={
            "last_scan_at": p.started, **{f"found:{k}": v for k, v in p.extra.items()}})

    async def _celery_side(self, ctx: ReaperContext, p: Pass) -> int:
        active = await p.celery_active(ctx)
        waiting = await p.celery_waiting(ctx)
        requests = [(req, True) for req in active.values()]
        requests += [({**req, "node": node}, False)
                     for node, items in waiting.items() for req in items]
        ids = []
        for req, _ in requests:
            tid = (req.get("kwargs") or {}).get("task_id")
            try:
                ids.append(uuid.UUID(str(tid)))
            except ValueError:
                pass
        rows = {str(r["id"]): r for r in await ctx.db.active_by_ids(ids)} if ids else {}
        orphans = 0
        undead = 0
        revoke: list[str] = []
        for req, executing in requests:
            tid = str((req.get("kwargs") or {}).get("task_id"))
            row = rows.get(tid)
            if row is None:
                orphans += 1
                revoke.append(req["id"])
                if executing:
                    await ctx.celery.kill(message_id=req["id"], task_id=None, node=req["node"])
                log.warning("reaper.orphan", message_id=req["id"], task=req.get("name"),
                            node=req["node"], executing=executing)
            elif executing and str(row["message_id"]) == req["id"] \
                    and row["status"] not in EXECUTING:
                undead += 1
                await ctx.celery.kill(message_id=req["id"], task_id=tid, node=req["node"])
                log.warning("reaper.undead", task_id=tid, node=req["node"],
                            row_status=row["status"], via="inspect")
        await ctx.celery.revoke(revoke)
        if orphans:
            ctx.metrics.findings.labels(rule="orphans").inc(orphans)
        if undead:
            ctx.metrics.findings.labels(rule="undead").inc(undead)
        p.extra["orphans"] = orphans
        p.extra["undead_unregistered"] = undead
        return orphans + undead

    async def _lost_messages(self, ctx: ReaperContext, p: Pass) -> int:
        """A page of the rows queued for long, oldest first, each pass on from the last: is
        its message still published and untaken? One indexed query and one Redis command
        per page, whatever the size of the queues."""
        older = ctx.settings.lost_message_after
        rows = await ctx.db.stranded_queued(older, self._cursor, LOST_PAGE)
        self._cursor = (rows[-1]["enqueued_at"], rows[-1]["id"]) if len(rows) == LOST_PAGE \
            else None
        p.extra["lost_messages"] = 0
        if not rows:
            return 0
        scores = await ctx.redis.zmscore(ctx.keys.pending, [str(r["message_id"]) for r in rows])
        found = 0
        for row, score in zip(rows, scores, strict=True):
            if score is not None:
                continue
            found += 1
            if row["requeues"] == 0:
                new = await ctx.db.requeue_message(row["id"], row["message_id"], uuid.uuid4())
                if new is not None:
                    await publish(ctx.celery.celery, row["actor"], row["id"], new["message_id"],
                                  row["queue"], queued_at=new["queued_at"])
                    log.warning("reaper.message_requeued", task_id=str(row["id"]))
            elif await ctx.db.mark_queued_lost(row["id"], row["message_id"]):
                log.warning("reaper.message_lost", task_id=str(row["id"]))
                await ctx.publish_change(row["id"], TaskStatus.LOST, outcome=Outcome.GONE)
        if found:
            ctx.metrics.findings.labels(rule="lost_messages").inc(found)
        p.extra["lost_messages"] = found
        return found
