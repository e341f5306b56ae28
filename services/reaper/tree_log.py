"""The heartbeat log line of a job tree: its root's progress counted over every chunk of
every node, written by the reaper (a waiting root has no process of its own to write it),
at the interval the worker uses for a job of that size."""

from __future__ import annotations

import time
import uuid
from datetime import UTC, datetime
from typing import Any

import structlog

from services.reaper.context import ReaperContext
from shared.pace import human, log_interval
from shared.tree_view import aggregate_json

log = structlog.get_logger("reaper.trees")

# Trees looked at per pass.
PAGE = 100


class TreeHeartbeats:
    """Logs `tree.heartbeat` for each root with unfinished work, once per log interval."""

    def __init__(self) -> None:
        self._last: dict[uuid.UUID, float] = {}

    async def run(self, ctx: ReaperContext) -> int:
        roots = await ctx.db.active_roots(PAGE)
        now, wall = time.monotonic(), datetime.now(UTC)
        self._last = {r: t for r, t in self._last.items() if r in roots}
        logged = 0
        for root in roots:
            first = root not in self._last
            if first:
                self._last[root] = now  # the first line comes one interval after it is seen
                continue
            totals = aggregate_json(await ctx.db.tree_aggregate(root), wall)
            if now - self._last[root] < log_interval(totals["total"], ctx.settings):
                continue
            self._last[root] = now
            self._line(root, totals)
            logged += 1
        return logged

    @staticmethod
    def _line(root: uuid.UUID, t: dict[str, Any]) -> None:
        percent = t["percent"]
        total = t["total"] or "?"
        log.info("tree.heartbeat", task_id=str(root), nodes=t["nodes"], active=t["active"],
                 by_status=t["by_status"], done=t["done"], failed=t["failed"], total=t["total"],
                 percent=percent, eta_s=t["eta_seconds"],
                 summary=(f"💓 heartbeat - tree of {t['nodes']} tasks, {t['active']} unfinished, "
                          f"progress: {percent if percent is not None else '?'}%, remaining: "
                          f"{human(t['eta_seconds'])} | 📊 succeeded={t['done']}, "
                          f"failed={t['failed']}, chunks={t['done']}/{total}"))
