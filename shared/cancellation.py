"""The first rung of the cancel ladder: the DB transaction, then the Redis event.

Used by the API and by taskctl. The DB is the truth; the Redis event and the set of
cancelled message ids only make the news travel fast. Each operation owns all its effects,
the change event for watchers (the dashboard, `GET /api/v1/events`) included, so every
caller gets them alike.
"""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import redis.asyncio as aioredis
import structlog
from celery import Celery

from shared.db import Db, Record
from shared.errors import CancelConflict
from shared.events import encode
from shared.keys import Keys
from shared.settings import Settings
from shared.states import ACTIVE, RESUMABLE, TERMINAL, TaskStatus
from shared.submit import publish
from shared.tree_control import TreeControl
from shared.trees import settle_up

log = structlog.get_logger("cancellation")

# Covered queued rows that cancel-all writes `cancelled` itself before it answers: a small
# backlog reads as cancelled at once, a big one costs the same few milliseconds and the reaper
# sweeps the rest in batches.
INLINE_SWEEP = 1000


@dataclass
class CancelOne:
    row: Record
    changed: bool
    # The node's descendants this cancel moved, by the state each reached (None: no children).
    subtree: dict[str, int] | None = None


@dataclass
class CancelAll:
    # Queued and paused tasks the fence covers (the reaper writes them `cancelled`).
    cancelled: int = 0
    cancelling: list[uuid.UUID] = field(default_factory=list)
    hastened: list[uuid.UUID] = field(default_factory=list)
    # Celery work with no row that the reaper knows of; it revokes and kills them.
    orphans: int = 0
    audit_id: int | None = None
    fence_id: int | None = None
    took_ms: float = 0.0


def event_matches(event: dict[str, Any], *, task_id: str, actor: str, queue: str,
                  started_at: float) -> bool:
    """Does a cancel event concern this execution? Evaluated locally by every worker."""
    if "ids" in event:
        return task_id in event["ids"]
    if not event.get("all"):
        return False
    if event.get("actor") not in (None, actor) or event.get("queue") not in (None, queue):
        return False
    # A cancel-all covers what was running when it committed, not what started after.
    return started_at <= float(event.get("before", 0.0))


class Canceller:
    def __init__(self, settings: Settings, db: Db, redis: aioredis.Redis, celery: Celery) -> None:
        self.settings = settings
        self.db = db
        self.redis = redis
        self.celery = celery
        self.keys = Keys(settings.key_prefix)
        self.trees = TreeControl(settings, db, redis, celery)

    async def cancel(self, task_id: uuid.UUID, *, by: str, reason: str | None = None,
                     force: bool = False) -> CancelOne:
        """Raises TaskNotFound, or CancelConflict for a task that already ended otherwise."""
        grace = 0.0 if force else self.settings.cancel_grace
        row = await self.db.cancel_task(task_id, reason=reason, by=by, forced=force, grace=grace)
        was = TaskStatus(row["was"])
        if row["changed"]:
            # The node's own news first: its process stops while its subtree is written.
            await self.announce({"ids": [str(task_id)], "force": force, "reason": reason},
                                [row["message_id"]], task_id=task_id, node=row["worker"],
                                change=encode("task.cancel_requested", task_id=str(task_id),
                                              status=row["status"], by=by, forced=force))
            log.info("task.cancel_requested", task_id=str(task_id), was=str(was),
                     now=row["status"], by=by, forced=force, reason=reason)
        subtree = None
        if row["has_children"] and was not in (TaskStatus.SUCCEEDED, TaskStatus.LOST):
            # From the commit above no descendant can start; now each one's own row.
            subtree = await self.trees.cancel(task_id, by=by, reason=reason, force=force,
                                              root=row["root_id"] or task_id)
        summary = subtree.summary if subtree is not None else None
        if not row["changed"]:
            if subtree is not None and (subtree.rows or subtree.swept or subtree.sweeping):
                return CancelOne(row=row, changed=True, subtree=summary)
            if was in (TaskStatus.SUCCEEDED, TaskStatus.FAILED, TaskStatus.LOST):
                raise CancelConflict(f"task already {was}", row)
            return CancelOne(row=row, changed=False, subtree=summary)
        if row["parent_id"] is not None and TaskStatus(row["status"]).terminal:
            await settle_up(self.db, self.celery, row["parent_id"])
        return CancelOne(row=row, changed=True, subtree=summary)

    async def cancel_all(self, *, by: str, reason: str | None = None, force: bool = False,
                         actor: str | None = None, queue: str | None = None) -> CancelAll:
        """O(1) for the queued side, O(running) for the rest, whatever the backlog.

        Queued tasks are covered by one fence row: claims refuse them from the commit on.
        Paused ones too: a resume refuses them. The oldest `INLINE_SWEEP` of them are written
        `cancelled` here; the reaper writes the rest in short batches and takes their
        messages out of Redis. Running (and pausing) ones go to `cancelling` here, as for a
        single cancel."""
        started = time.perf_counter()
        grace = 0.0 if force else self.settings.cancel_grace
        out = CancelAll()
        message_ids: list[uuid.UUID] = []
        async with self.db.transaction() as conn:
            fence, _ = await self.db.set_fence(conn, actor=actor, queue=queue, reason=reason,
                                               by=by, forced=force, sweep=INLINE_SWEEP)
            out.fence_id, out.cancelled = fence["id"], int(fence["covered"])
            # Hastened first: those already cancelling are not the ones moved there below.
            hastened = (await self.db.hasten_cancelling(conn, actor=actor, queue=queue)
                        if force else [])
            cancelling = await self.db.mark_cancelling(conn, actor=actor, queue=queue,
                                                       reason=reason, by=by, forced=force,
                                                       grace=grace)
            # Parents waiting for children hold no process: they end now.
            out.cancelled += len(await self.db.cancel_waiting(
                conn, actor=actor, queue=queue, reason=reason, by=by, forced=force))
            for ids, rows in ((out.hastened, hastened), (out.cancelling, cancelling)):
                ids.extend(r["id"] for r in rows)
                message_ids.extend(r["message_id"] for r in rows)
            audit = await self.db.insert_audit(
                conn, by=by, reason=reason, scope={"all": True, "actor": actor, "queue": queue},
                forced=force, cancelled=out.cancelled,
                cancelling=len(out.cancelling) + len(out.hastened),
                task_ids=[*out.cancelling, *out.hastened])
            out.audit_id = audit["id"]
            await self.db.link_fence_audit(conn, fence["id"], audit["id"])
        # `before` is the fence's time: every claim that committed earlier was seen above,
        # every later one started after it (and refuses covered tasks itself).
        await self.announce({"all": True, "actor": actor, "queue": queue, "force": force,
                             "reason": reason, "before": fence["at_epoch"],
                             "fence": fence["id"]}, message_ids,
                            change=encode("tasks.cancel_all", by=by, forced=force, actor=actor,
                                          queue=queue, cancelled=out.cancelled,
                                          cancelling=len(out.cancelling),
                                          hastened=len(out.hastened)))
        out.orphans = await self._orphans_and_scan()
        out.took_ms = (time.perf_counter() - started) * 1000
        log.info("task.cancel_all", by=by, forced=force, actor=actor, queue=queue,
                 cancelled=out.cancelled, cancelling=len(out.cancelling),
                 hastened=len(out.hastened), fence_id=out.fence_id, took_ms=round(out.took_ms, 1))
        return out

    async def force_kill_all(self, *, by: str, reason: str, scope: dict[str, Any],
                             remote_nodes: list[str] | None = None) -> dict[str, int]:
        """Every unfinished task straight to `cancelled`, audited and announced as forced.

        For an operator about to kill this host's worker processes: nothing is left
        `cancelling` for a process that will not be there to finish it. Executions on
        other hosts' workers (`remote_nodes`) are not killed, so they are cancelled with
        force instead and their host records how they ended. Returns counts by prior
        state, and how many went to other hosts (`remote`)."""
        async with self.db.transaction() as conn:
            rows = await self.db.force_kill_all(conn, reason=reason, by=by,
                                                remote_nodes=remote_nodes or [])
            before = await self.db.clock(conn)
            was: dict[str, int] = {s.value: 0 for s in ACTIVE}
            for r in rows:
                was[r["was"]] += 1
            remote = sum(1 for r in rows if r["remote"])
            await self.db.insert_audit(
                conn, by=by, reason=reason, scope={"all": True, **scope}, forced=True,
                cancelled=was["queued"],
                cancelling=was["running"] + was["cancelling"] + was["pausing"],
                task_ids=[r["id"] for r in rows])
        await self.announce({"all": True, "actor": None, "queue": None, "force": True,
                             "reason": reason, "before": before},
                            [r["message_id"] for r in rows])
        log.warning("task.force_kill_all", by=by, remote=remote, **was)
        return {**was, "remote": remote}

    async def resume(self, task_id: uuid.UUID, *, by: str | None = None) -> Record:
        """A new attempt from the checkpoint, of a task that ended or was paused. Raises
        TaskNotFound, CancelConflict for a task that is active or succeeded,
        BrokerUnavailable (and then nothing changed)."""
        # A task still stopping for a pause: its execution holds it, so the resume is
        # recorded and its stop queues it again (see finish_pause).
        pending = await self.db.resume_pausing(task_id=task_id)
        if pending:
            log.info("task.resume_pending", task_id=str(task_id), by=by)
            await self.publish_change("task.resume_requested", task_id=str(task_id),
                                      status=TaskStatus.PAUSING, by=by)
            if pending[0]["children"]:
                await self.trees.resume(task_id, by=by)
            return pending[0]
        message_id = uuid.uuid4()
        async with self.db.transaction() as conn:
            row = await self.db.lock_task(conn, task_id)
            status = TaskStatus(row["status"])
            new = None
            if status in RESUMABLE:
                new = await self.db.resume_task(conn, task_id, message_id,
                                                [s.value for s in RESUMABLE])
                if new is None:  # locked and resumable: a paused one a fence covers
                    raise CancelConflict("cannot resume a task that a cancel-all cancelled", row)
                # Inside the transaction: a broker that refuses the message rolls the resume
                # back, so a 503 means nothing changed. A worker that gets the message first
                # waits for this commit (its claim finds the row busy and retries). A paused
                # task keeps its schedule: one paused before its ETA still waits for it.
                await publish(self.celery, new["actor"], task_id, message_id, new["queue"],
                              new["eta"], queued_at=new["queued_at"])
            elif not row["children"] or status is TaskStatus.SUCCEEDED:
                why = "still active" if status not in TERMINAL else f"already {status}"
                raise CancelConflict(f"cannot resume a task that is {why}", row)
        if new is None:
            # A parent still running or waiting: its subtree goes on, the node as it is.
            if not (await self.trees.resume(task_id, by=by)).rows:
                raise CancelConflict(f"cannot resume a task that is {status}: nothing under "
                                     "it stopped", row)
            return row
        if new["children"]:
            # Its checkpoint holds the children it made: each one that stopped short of
            # success goes on too (its code, run again, finds them made).
            await self.trees.resume(task_id, by=by)
        log.info("task.resumed", task_id=str(task_id), was=str(status), attempt=new["attempt"],
                 by=by)
        await self.publish_change("task.resumed", task_id=str(task_id), status=new["status"],
                                  by=by)
        return new

    async def _orphans_and_scan(self) -> int:
        try:
            async with self.redis.pipeline(transaction=False) as pipe:
                pipe.set(self.keys.scan_request, "1", ex=60)
                pipe.hget(self.keys.reaper_status, "found:orphans")
                _, found = await pipe.execute()
            return max(0, int(found or 0))
        except Exception as exc:
            log.warning("task.orphan_scan_request_failed", error=str(exc))
            return 0

    async def announce(self, event: dict[str, Any], message_ids: list[uuid.UUID], *,
                       task_id: uuid.UUID | None = None, node: str | None = None,
                       change: str | None = None) -> None:
        """Fast path only: a failure here delays the cancel until the workers' DB poll.

        A cancel of one task goes to that task's channel (its process listens there) and
        to its worker's channel (whose guardian enforces the deadline): O(1) deliveries
        whatever the fleet's size. A cancel-all is one event on the channel every process
        listens to. `change`, an encoded task change event, goes to the events channel in
        the same round trip."""
        payload = json.dumps(event)
        try:
            async with self.redis.pipeline(transaction=False) as pipe:
                if message_ids:
                    now = time.time()
                    pipe.zadd(self.keys.cancelled, {str(m): now for m in message_ids})
                if task_id is None:
                    pipe.publish(self.keys.cancel_channel, payload)
                else:
                    pipe.publish(self.keys.task_cancel_channel(str(task_id)), payload)
                    if node:
                        pipe.publish(self.keys.node_cancel_channel(node), payload)
                if change is not None:
                    pipe.publish(self.keys.events_channel, change)
                await pipe.execute()
        except Exception as exc:
            log.warning("task.cancel_event_failed", error=str(exc))

    async def publish_change(self, kind: str, **fields: Any) -> None:
        """Best effort: the DB row is the record, the event only makes the news travel."""
        try:
            await self.redis.publish(self.keys.events_channel, encode(kind, **fields))
        except Exception as exc:
            # `event` is structlog's name for the log line itself; the change's name goes as `kind`.
            log.warning("task.event_publish_failed", kind=kind, error=str(exc))
