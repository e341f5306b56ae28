"""A subtree's cancel, pause and resume: one transaction, one change event.

Each runs after the fence lock (see fence_lock in queries.sql), as every writer of many
rows does: it never closes a cycle with cancel-all, pause-all or another subtree. The node
itself is handled by the one-task path first (cancel_one, pause_one), which is what makes
it atomic in effect: from that commit on, no descendant can start (the claim walks to the
nearest stopped ancestor); this then writes every descendant's own state at once.
"""

from __future__ import annotations

import json
import time
import uuid
from collections import defaultdict
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

import redis.asyncio as aioredis
import structlog
from celery import Celery

from shared.db import Db, Record
from shared.events import encode
from shared.keys import Keys
from shared.settings import Settings
from shared.states import TaskStatus
from shared.submit import Message, publish_many

log = structlog.get_logger("trees")

# Never-started nodes written `cancelled` per statement of a subtree cancel's sweep.
SWEEP_BATCH = 2000


@dataclass
class SubtreeChange:
    """What a subtree operation did to the node's descendants, by the state each reached."""

    node: uuid.UUID
    rows: list[Record] = field(default_factory=list)
    # Never-started descendants written `cancelled` after the answer's transaction, and
    # whether that is still going on (run after the answer).
    swept: int = 0
    sweeping: bool = False

    def count(self, status: TaskStatus) -> int:
        return sum(1 for r in self.rows if r["status"] == status)

    @property
    def summary(self) -> dict[str, int]:
        counts: dict[str, int] = defaultdict(int)
        for r in self.rows:
            counts[r["status"]] += 1
        if self.swept:
            counts[TaskStatus.CANCELLED] += self.swept
        return dict(counts)


class TreeControl:
    def __init__(self, settings: Settings, db: Db, redis: aioredis.Redis, celery: Celery, *,
                 defer: Callable[[Coroutine[Any, Any, Any]], Any] | None = None) -> None:
        # Runs a subtree cancel's sweep after the answer (the API's background tasks); None
        # runs it before `cancel` returns.
        self.defer = defer
        self.settings = settings
        self.db = db
        self.redis = redis
        self.celery = celery
        self.keys = Keys(settings.key_prefix)

    async def cancel(self, node: uuid.UUID, *, by: str, reason: str | None, force: bool,
                     root: uuid.UUID | None = None,
                     audit_scope: dict[str, str] | None = None) -> SubtreeChange:
        """Every unfinished descendant of `node`. What answers, in one transaction: each
        execution under it goes to `cancelling` (the grace of a single cancel) and each
        waiting parent ends `cancelled`, audited as one row and announced at once. Then the
        never-started descendants are written `cancelled` in short batches: after the answer
        when a `defer` runs them (the API's), else before returning. From the node's own
        cancel no descendant can start anyway (the claim walks to its stopped ancestor), and
        the reaper sweeps what a sweep cut short left behind."""
        grace = 0.0 if force else self.settings.cancel_grace
        out = SubtreeChange(node)
        if root is None:
            root = await self.db.root_of(node)
        async with self.db.transaction() as conn:
            await self.db.lock_fences(conn)
            out.rows = await self.db.cancel_subtree(conn, node, root=root, reason=reason, by=by,
                                                    forced=force, grace=grace)
            scope = audit_scope or {"tree": str(node)}
            audit = await self.db.insert_audit(
                conn, by=by, reason=reason, scope=scope, forced=force,
                cancelled=out.count(TaskStatus.CANCELLED),
                cancelling=out.count(TaskStatus.CANCELLING),
                task_ids=[r["id"] for r in out.rows if r["status"] == TaskStatus.CANCELLING]
            ) if out.rows else None
        if out.rows:
            await self._announce(out.rows, {"force": force, "reason": reason}, encode(
                "tree.cancel_requested", task_id=str(node), by=by, forced=force, **out.summary))
        sweep = self._sweep(node, root, audit["id"] if audit is not None else None, scope,
                            by=by, reason=reason, force=force)
        if self.defer is not None:
            out.sweeping = True
            self.defer(sweep)
        else:
            out.swept = await sweep
        log.info("tree.cancel_requested", task_id=str(node), by=by, forced=force,
                 reason=reason, swept=out.swept, sweeping=out.sweeping, **out.summary)
        return out

    async def _sweep(self, node: uuid.UUID, root: uuid.UUID, audit_id: int | None,
                     scope: dict[str, str], *, by: str, reason: str | None, force: bool) -> int:
        """The never-started descendants to `cancelled`, SWEEP_BATCH rows a statement, each
        its own short transaction; their messages are dropped by the claim when a worker
        takes them (no revoke per message: a tree of thousands would flood every worker)."""
        swept = 0
        while True:
            n = await self.db.sweep_subtree(node, root=root, reason=reason, by=by,
                                            forced=force, limit=SWEEP_BATCH)
            swept += n
            if n < SWEEP_BATCH:
                break
        if swept and audit_id is not None:
            await self.db.audit_add_cancelled(audit_id, swept)
        elif swept:  # nothing was running: this is the whole of what the cancel did
            async with self.db.transaction() as conn:
                await self.db.insert_audit(conn, by=by, reason=reason, scope=scope,
                                           forced=force, cancelled=swept, cancelling=0,
                                           task_ids=[])
        if swept:
            await self._publish(encode("tree.swept", task_id=str(node), cancelled=swept))
        return swept

    async def pause(self, node: uuid.UUID, *, by: str, reason: str | None) -> SubtreeChange:
        out = SubtreeChange(node)
        async with self.db.transaction() as conn:
            await self.db.lock_fences(conn)
            out.rows = await self.db.pause_subtree(conn, node, reason=reason, by=by,
                                                   grace=self.settings.cancel_grace)
            if out.rows:
                await self.db.insert_audit(
                    conn, by=by, reason=reason,
                    scope={"action": "pause", "tree": str(node), **out.summary}, forced=False,
                    cancelled=0, cancelling=0, task_ids=[])
        if out.rows:
            await self._announce(out.rows, {"reason": "pause"}, encode(
                "tree.pause_requested", task_id=str(node), by=by, **out.summary))
            log.info("tree.pause_requested", task_id=str(node), by=by, **out.summary)
        return out

    async def resume(self, node: uuid.UUID, *, by: str | None,
                     own: Record | None = None) -> SubtreeChange:
        """Every descendant that stopped short of success queued again from its checkpoint
        (one still pausing is queued once stopped). `own`: the node's own resumed row, when
        the caller resumed it, to be enqueued with the rest."""
        out = SubtreeChange(node)
        async with self.db.transaction() as conn:
            await self.db.lock_fences(conn)
            out.rows = await self.db.resume_subtree(conn, node)
            pending = await self.db.resume_subtree_pausing(conn, node)
        # After the commit: a claim must find each row queued (a message read before would be
        # dropped as not claimable). Should the broker fail now, the reaper's lost-message
        # rule publishes them again.
        messages = [Message(r["actor"], r["id"], r["message_id"], r["queue"], r["eta"],
                            r["queued_at"]) for r in out.rows]
        if messages:
            await publish_many(self.celery, messages)
        if out.rows or pending:
            await self._publish(encode("tree.resumed", task_id=str(node), by=by,
                                       queued=len(out.rows), pausing=len(pending)))
            log.info("tree.resumed", task_id=str(node), by=by, queued=len(out.rows),
                     pausing=len(pending))
        return out

    async def _announce(self, rows: list[Record], fields: dict[str, object], change: str) -> None:
        """Each stopped execution's own channel, each worker's channel once with its ids, the
        message ids a worker may drop unclaimed, and one change event: one round trip."""
        stopping = [r for r in rows if r["status"] in (TaskStatus.CANCELLING, TaskStatus.PAUSING)]
        by_node: dict[str, list[str]] = defaultdict(list)
        for r in stopping:
            if r["worker"]:
                by_node[r["worker"]].append(str(r["id"]))
        dropped = [str(r["message_id"]) for r in rows if r["was"] in ("queued", "paused")
                   and r["status"] in (TaskStatus.CANCELLED, TaskStatus.PAUSED)]
        try:
            async with self.redis.pipeline(transaction=False) as pipe:
                if dropped:
                    now = time.time()
                    pipe.zadd(self.keys.cancelled, dict.fromkeys(dropped, now))
                for r in stopping:
                    pipe.publish(self.keys.task_cancel_channel(str(r["id"])),
                                 json.dumps({"ids": [str(r["id"])], **fields}))
                for node, ids in by_node.items():
                    pipe.publish(self.keys.node_cancel_channel(node),
                                 json.dumps({"ids": ids, **fields}))
                pipe.publish(self.keys.events_channel, change)
                await pipe.execute()
        except Exception as exc:
            # The workers' DB poll still finds every row; only the fast path is late.
            log.warning("tree.announce_failed", error=str(exc))

    async def _publish(self, change: str) -> None:
        try:
            await self.redis.publish(self.keys.events_channel, change)
        except Exception as exc:
            log.warning("tree.event_publish_failed", error=str(exc))
