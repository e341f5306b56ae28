"""The cancel executor: revokes cancelled messages in Celery and enforces deadlines.

A `cancelling` (or `pausing`) row past its deadline plus the margin belongs to an execution
that neither cooperated nor was ended by its own watchdog (a pool process stuck holding
its GIL). It is killed through the worker on its host, never signalled directly, and the
row ends as its stop says: `cancelled`, or `paused` with its checkpoint for a pause.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import structlog

from services.reaper.context import ReaperContext
from shared.db.rows import DueCancel
from shared.pausing import send_requeued
from shared.registry import LiveExecution, live_executions
from shared.states import Outcome, TaskStatus

log = structlog.get_logger("reaper.executor")


class CancelExecutor:
    def __init__(self, ctx: ReaperContext) -> None:
        self.ctx = ctx
        # Revokes are only the fast path (claims refuse cancelled work whatever Celery
        # does): a replica that becomes leader re-sends the ones since shortly before it
        # took over (the lock's TTL covers the gap left by the previous leader), not every
        # one since it started.
        self._revoked_until: float | None = None

    async def tick(self) -> None:
        if not self.ctx.leader.is_leader:
            self._revoked_until = None
            return
        if self._revoked_until is None:
            self._revoked_until = time.time() - 2 * self.ctx.settings.leader_ttl
        await self.revoke_new()
        await self.escalate_due()

    async def revoke_new(self) -> None:
        """One broadcast for every message cancelled since the last tick."""
        ctx = self.ctx
        fresh: list[Any] = await ctx.redis.zrangebyscore(ctx.keys.cancelled, f"({self._revoked_until}",
                                              "+inf", withscores=True)
        if not fresh:
            return
        ids = [m.decode() if isinstance(m, bytes) else m for m, _ in fresh]
        await ctx.celery.revoke(ids)
        self._revoked_until = max(score for _, score in fresh)
        ctx.metrics.revoked.inc(len(ids))
        log.info("reaper.revoked", count=len(ids))
        retention = ctx.settings.history_retention_days * 86400
        await ctx.redis.zremrangebyscore(ctx.keys.cancelled, "-inf", time.time() - retention)

    async def escalate_due(self) -> int:
        ctx = self.ctx
        rows = await ctx.db.due_cancellations(ctx.settings.kill_margin)
        if not rows:
            return 0
        live = await live_executions(ctx.redis, ctx.keys, include_expired=True)
        await asyncio.gather(*(self.kill_and_settle(r, live.get(str(r.id))) for r in rows))
        return len(rows)

    async def kill_and_settle(self, row: DueCancel, entry: LiveExecution | None) -> str | None:
        ctx = self.ctx
        if entry is not None and entry.attempt != row.attempt:
            entry = None
        replies = await ctx.celery.kill(
            message_id=str(row.message_id), task_id=str(row.id),
            node=entry.node if entry else None, pid=entry.pid if entry else None,
            pid_started=entry.pid_started if entry else None)
        silent = float(row.silent_for or 0) > self.ctx.settings.heartbeat_timeout
        outcome = self._verdict(replies, entry, silent)
        if outcome is None:
            log.info("reaper.kill_pending", task_id=str(row.id), replies=replies)
            return None
        ctx.metrics.kills.labels(result=outcome).inc()
        status = await ctx.db.mark_dead(row.id, row.attempt, outcome)
        if status == TaskStatus.QUEUED:  # a pause resumed while it stopped
            await send_requeued(ctx.db, ctx.celery.celery, row.id)
        if status:
            log.warning("reaper.escalated", task_id=str(row.id), attempt=row.attempt,
                        outcome=outcome, status=status, node=entry.node if entry else None)
            await ctx.publish_change(row.id, status, outcome=outcome)
        return status

    @staticmethod
    def _verdict(replies: list[dict[str, Any]], entry: LiveExecution | None,
                 silent: bool) -> str | None:
        if any(r.get("killed") for r in replies):
            return Outcome.KILLED
        if entry is not None and replies:
            return Outcome.GONE  # the worker that ran it answered: it is not there
        if silent and (entry is None or not entry.alive):
            # No live registration and no heartbeat for too long: nothing runs it. Replies
            # of other workers alone prove nothing (a slow host may not have answered).
            return Outcome.GONE
        return None  # try again on the next tick
