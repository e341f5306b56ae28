"""What the job-tree bench on plain Celery watches after a revoke: the members still running
(a mark whose pool process lives), the queue, the unacknowledged messages, and a chord's
callback; and what it reads once all is settled."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from celery import Celery
from celery import states as celery_states
from celery.result import AsyncResult, GroupResult

from bench.procs import Child
from bench.trees_celery_app import TreeMarks

POLL = 0.01
# With an empty queue and no member running, unacknowledged messages that stay this long are
# not on their way to a pool process: the watch ends and reports them.
UNACKED_PATIENCE = 2.0


def live_members(marks: TreeMarks, child: Child) -> int:
    """Members running now: a `running` mark whose pool process is still one of the worker's."""
    pids = {p.pid for p in child.live_children()}
    return sum(1 for pid, _ in marks.running().values() if pid in pids)


@dataclass
class Watch:
    """Milliseconds are counted from `p0`, the perf_counter() taken before the revoke call."""

    marks: TreeMarks
    child: Child
    queue: str
    p0: float
    callback: AsyncResult | None = None
    timeline: dict[str, float | None] = field(default_factory=lambda: {
        "no_member_running_ms": None, "queue_empty_ms": None, "unacked_empty_ms": None,
        "settled_ms": None, "callback_ms": None})
    callback_outcome: str | None = None
    restarted: int = 0

    def _ms(self) -> float:
        return (time.perf_counter() - self.p0) * 1000

    def _lengths(self) -> tuple[int, int]:
        client, prefix = self.marks.client, self.marks.prefix
        with client.pipeline(transaction=False) as pipe:
            pipe.llen(f"{prefix}:{self.queue}")
            pipe.hlen(f"{prefix}:unacked")
            queued, unacked = pipe.execute()
        return int(queued), int(unacked)

    def _callback_outcome(self) -> str | None:
        assert self.callback is not None
        if self.marks.count("callback"):
            return "fired"
        state = self.callback.state
        if state in celery_states.READY_STATES:
            return "errored" if state != celery_states.SUCCESS else "fired"
        return None

    def run(self, *, deadline_s: float, callback_wait_s: float) -> None:
        """Polls until no member runs, the queue is empty and nothing is left unacknowledged
        (or what is left has stayed put for UNACKED_PATIENCE), then for a chord until its
        callback has an outcome or `callback_wait_s` more have passed."""
        t = self.timeline
        was_running = True
        quiet_since: float | None = None
        settled_at: float | None = None
        while (now := self._ms()) < deadline_s * 1000:
            running = live_members(self.marks, self.child)
            if running and not was_running:
                self.restarted += 1
                t["no_member_running_ms"] = None
            if not running and was_running:
                t["no_member_running_ms"] = now
            was_running = bool(running)
            queued, unacked = self._lengths()
            if t["queue_empty_ms"] is None and queued == 0:
                t["queue_empty_ms"] = now
            if t["unacked_empty_ms"] is None and queued == 0 and unacked == 0:
                t["unacked_empty_ms"] = now
            if self.callback is not None and self.callback_outcome is None:
                self.callback_outcome = self._callback_outcome()
                if self.callback_outcome is not None:
                    t["callback_ms"] = now
            quiet = not running and queued == 0
            quiet_since = (quiet_since if quiet_since is not None else now) if quiet else None
            if settled_at is None and quiet_since is not None and \
                    (unacked == 0 or now - quiet_since >= UNACKED_PATIENCE * 1000):
                settled_at = t["settled_ms"] = now
            if settled_at is not None and (
                    self.callback is None or self.callback_outcome is not None
                    or now - settled_at >= callback_wait_s * 1000):
                break
            time.sleep(POLL)
        if self.callback is not None and self.callback_outcome is None:
            self.callback_outcome = "hung"


def backend_states(app: Celery, ids: list[str], batch: int = 1000) -> dict[str, int]:
    """Each member's state in the result backend, counted (PENDING: no result stored)."""
    backend = app.backend
    counts: dict[str, int] = {}
    for i in range(0, len(ids), batch):
        keys = [backend.get_key_for_task(tid) for tid in ids[i:i + batch]]
        for raw in backend.client.mget(keys):
            state = backend.decode(raw)["status"] if raw else celery_states.PENDING
            counts[state] = counts.get(state, 0) + 1
    return counts


def chord_parts_counted(app: Celery, header: GroupResult) -> int | None:
    """Header members the Redis backend's chord counter holds (None once it is cleared)."""
    backend = app.backend
    key = backend.get_key_for_group(header.id, ".j")
    client = backend.client
    kind = client.type(key)
    kind = kind.decode() if isinstance(kind, bytes) else kind
    if kind == "zset":
        return int(client.zcard(key))
    if kind == "list":
        return int(client.llen(key))
    return None


def callback_detail(callback: AsyncResult) -> dict[str, Any]:
    state = callback.state
    detail: dict[str, Any] = {"state": state}
    if state == celery_states.FAILURE:
        exc = callback.result
        detail["error"] = f"{type(exc).__name__}: {str(exc)[:200]}"
    return detail
