"""The reconciler: each rule finds one kind of disagreement between the DB and reality
and repairs it. Rules are small, independent, and cost O(active tasks)."""

from __future__ import annotations

import asyncio
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Protocol

import structlog

from services.reaper.context import ReaperContext
from services.reaper.trees import Trees
from shared.db.rows import StaleExecution
from shared.registry import live_executions, prune_expired
from shared.states import EXECUTING
from shared.verdict import settle_gone

log = structlog.get_logger("reaper.reconcile")


@dataclass
class Pass:
    """What one reconcile pass saw; shared between rules so each broadcast happens once."""

    started: float = field(default_factory=time.time)
    # Findings by kind when a rule has more than one.
    extra: dict[str, int] = field(default_factory=dict)
    _active: dict[str, dict[str, Any]] | None = None
    _waiting: dict[str, list[dict[str, Any]]] | None = None

    async def celery_active(self, ctx: ReaperContext, nodes: list[str] | None = None
                            ) -> dict[str, dict[str, Any]]:
        """task id -> request, for everything the workers execute right now (a broadcast).

        Asking only some nodes is quicker and is not remembered for the rest of the pass."""
        if self._active is not None:
            return self._active
        found: dict[str, dict[str, Any]] = {}
        for node, requests in (await ctx.celery.active(nodes=nodes)).items():
            for req in requests:
                tid = (req.get("kwargs") or {}).get("task_id")
                found[str(tid) if tid else req["id"]] = {**req, "node": node}
        if nodes is None:
            self._active = found
        return found


    async def celery_waiting(self, ctx: ReaperContext) -> dict[str, list[dict[str, Any]]]:
        """node -> requests reserved or scheduled (a broadcast, once per pass)."""
        if self._waiting is None:
            self._waiting = await ctx.celery.reserved_and_scheduled()
        return self._waiting


class Rule(Protocol):
    name: str

    async def run(self, ctx: ReaperContext, p: Pass) -> int: ...


class Zombies:
    """Running or cancelling rows whose heartbeat is stale (or never came) and that no
    worker executes: `lost` (or `cancelled`), or a new attempt if the actor allows it."""

    name = "zombies"

    async def run(self, ctx: ReaperContext, p: Pass) -> int:
        rows = await ctx.db.stale_executions(ctx.settings.heartbeat_timeout)
        if not rows:
            return 0
        known = await live_executions(ctx.redis, ctx.keys, include_expired=True)
        suspects = [r for r in rows if not (str(r.id) in known and known[str(r.id)].alive)]
        if not suspects:
            return 0
        # Only the workers that ran these executions can still be running them, unless a
        # registry entry is missing altogether; then everyone is asked.
        nodes = {known[str(r.id)].node for r in suspects if str(r.id) in known}
        everyone = any(str(r.id) not in known for r in suspects)
        active = await p.celery_active(ctx, None if everyone else sorted(nodes))
        found = 0
        for row in suspects:
            if str(row.id) in active:
                continue  # alive but not beating (e.g. holding the GIL): not a zombie
            found += 1
            await self._settle(ctx, row)
        return found

    async def _settle(self, ctx: ReaperContext, row: StaleExecution) -> None:
        verdict = await settle_gone(ctx.db, ctx.celery.celery, row, ctx.publish_change)
        if verdict.resumed:
            log.warning("reaper.zombie_resumed", task_id=str(row.id),
                        attempt=row.attempt, resumes=verdict.resumes)
        elif verdict.status:
            log.warning("reaper.zombie", task_id=str(row.id), attempt=row.attempt,
                        status=verdict.status, heartbeat_at=str(row.heartbeat_at),
                        worker=row.worker, pid=row.pid)


# A finished execution removes its registry entry right after writing its end.
JUST_FINISHED = 0.5


class Undead:
    """Executions registered as live whose row is terminal or belongs to a newer attempt:
    their writes are already fenced off, so they are killed at once (verified)."""

    name = "undead"

    async def run(self, ctx: ReaperContext, p: Pass) -> int:
        live = await live_executions(ctx.redis, ctx.keys)
        if not live:
            return 0
        rows = {str(r["id"]): r for r in await ctx.db.active_by_ids([uuid.UUID(t) for t in live])}
        doomed = []
        for tid, entry in live.items():
            row = rows.get(tid)
            if row is not None and row["status"] in EXECUTING \
                    and row["attempt"] == entry.attempt:
                continue
            if row is not None and row["attempt"] == entry.attempt \
                    and (row["finished_ago"] or 0) < JUST_FINISHED:
                continue  # it just recorded its own end; its entry goes a moment later
            doomed.append((tid, entry, row))
        # At once: each kill may wait its whole reply timeout for a node that is gone.
        await asyncio.gather(*(self._kill(ctx, *d) for d in doomed))
        return len(doomed)

    @staticmethod
    async def _kill(ctx: ReaperContext, tid: str, entry: Any, row: Any) -> None:
        replies = await ctx.celery.kill(message_id=entry.message_id, task_id=tid,
                                        node=entry.node, pid=entry.pid,
                                        pid_started=entry.pid_started)
        killed = any(r.get("killed") for r in replies)
        ctx.metrics.kills.labels(result="killed" if killed else "refused").inc()
        log.warning("reaper.undead", task_id=tid, attempt=entry.attempt, node=entry.node,
                    pid=entry.pid, row_status=row["status"] if row else None, killed=killed)


class StaleRegistry:
    """Registry entries of processes that stopped beating long ago: housekeeping."""

    name = "stale_registry"

    async def run(self, ctx: ReaperContext, p: Pass) -> int:
        return await prune_expired(ctx.redis, ctx.keys, ctx.settings.heartbeat_timeout * 2)


class Retention:
    """Finished tasks, audit rows and settled fences older than the retention period are
    deleted, a batch per pass."""

    name = "retention"

    async def run(self, ctx: ReaperContext, p: Pass) -> int:
        days = ctx.settings.history_retention_days
        if days <= 0:
            return 0
        return await ctx.db.prune_history(days) + await ctx.db.prune_audit(days)


class Tallies:
    """Folds the appended count deltas into the tallies: housekeeping that keeps reading
    the counts cheap. Never a finding."""

    name = "tallies"

    async def run(self, ctx: ReaperContext, p: Pass) -> int:
        await ctx.db.fold_tallies()
        return 0


def default_rules() -> tuple[Rule, ...]:
    return (Zombies(), Undead(), Trees(), StaleRegistry(), Retention(), Tallies())


class Reconciler:
    def __init__(self, ctx: ReaperContext, rules: tuple[Rule, ...] | None = None) -> None:
        self.ctx = ctx
        self.rules = rules if rules is not None else default_rules()
        self.last: dict[str, Any] = {}

    async def tick(self) -> dict[str, int]:
        if not self.ctx.leader.is_leader:
            return {}
        ctx = self.ctx
        p = Pass()
        started = time.perf_counter()
        findings: dict[str, int] = {}
        for rule in self.rules:
            try:
                findings[rule.name] = await rule.run(ctx, p)
            except Exception as exc:
                log.warning("reaper.rule_failed", rule=rule.name, error=repr(exc))
                findings[rule.name] = -1
            if findings[rule.name] > 0:
                ctx.metrics.findings.labels(rule=rule.name).inc(findings[rule.name])
        took = time.perf_counter() - started
        ctx.metrics.passes.inc()
        ctx.metrics.pass_seconds.observe(took)
        self.last = {"at": p.started, "took_ms": round(took * 1000, 2), "findings": findings}
        await ctx.redis.hset(ctx.keys.reaper_status, mapping={
            "leader": ctx.leader.identity, "last_pass_at": p.started,
            "last_pass_ms": self.last["took_ms"],
            **{f"found:{k}": v for k, v in findings.items()}})
        return findings
