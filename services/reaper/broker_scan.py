"""The broker scan: what only Celery itself knows, asked at a low rate.

Finds orphans (work executing or waiting in a worker with no row), executions the
registry does not list whose row is finished, and lost messages (rows queued for long
whose message is in no queue, no unacknowledged set and no worker).
"""

from __future__ import annotations

import time
import uuid

import structlog

from services.reaper.context import ReaperContext
from services.reaper.reconcile import Pass
from shared.queues import message_ids
from shared.states import Outcome
from shared.submit import publish

log = structlog.get_logger("reaper.broker_scan")


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
                    and row["status"] not in ("running", "cancelling"):
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
        rows = await ctx.db.stranded_queued(ctx.settings.lost_message_after)
        p.extra["lost_messages"] = 0
        if not rows:
            return 0
        queues = sorted({r["queue"] for r in rows})
        present = await message_ids(ctx.redis, ctx.keys, queues)
        waiting = await p.celery_waiting(ctx)
        present |= {req["id"] for items in waiting.values() for req in items}
        found = 0
        for row in rows:
            if str(row["message_id"]) in present:
                continue
            found += 1
            if row["requeues"] == 0:
                new = uuid.uuid4()
                if await ctx.db.requeue_message(row["id"], row["message_id"], new):
                    await publish(ctx.celery.celery, row["actor"], row["id"], new, row["queue"])
                    log.warning("reaper.message_requeued", task_id=str(row["id"]))
            elif await ctx.db.mark_queued_lost(row["id"], row["message_id"]):
                log.warning("reaper.message_lost", task_id=str(row["id"]))
                await ctx.publish_change(row["id"], "lost", outcome=Outcome.GONE)
        if found:
            ctx.metrics.findings.labels(rule="lost_messages").inc(found)
        p.extra["lost_messages"] = found
        return found
