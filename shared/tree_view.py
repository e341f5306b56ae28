"""A job tree as people read it: a subtree's totals (nodes by state, chunks, percent, ETA),
and the reads behind the views that show many nodes at once (taskctl's tree and monitor),
batched a level at a time so a view costs a few statements whatever the tree's size
(shared/sql/tree_view.sql). The API's tree view pages one node's children instead."""

from __future__ import annotations

import uuid
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from shared.db import Db, Record
from shared.states import ACTIVE, TERMINAL, TaskStatus


def aggregate_json(rows: Sequence[Record], now: datetime) -> dict[str, Any]:
    """A subtree's totals: nodes by state, chunks, percent, and an ETA from the pace so far
    (chunks worked since its first start, over the chunks left; nodes not started yet are
    counted at the mean size of those that know theirs)."""
    by_status = {r["status"]: int(r["n"]) for r in rows}
    nodes = sum(by_status.values())
    done = sum(int(r["done"]) for r in rows)
    failed = sum(int(r["failed"]) for r in rows)
    total = sum(int(r["total"]) for r in rows)
    unknown = sum(int(r["unknown_total"]) for r in rows)
    known = nodes - unknown
    estimate = total + (round(total / known * unknown) if known and unknown else 0)
    starts = [r["started_at"] for r in rows if r["started_at"] is not None]
    active = sum(n for s, n in by_status.items() if TaskStatus(s) in ACTIVE)
    eta = None
    worked = done + failed
    if not active:
        eta = 0.0 if nodes and all(TaskStatus(s) in TERMINAL for s in by_status) else None
    elif starts and worked and estimate > worked:
        elapsed = (now - min(starts)).total_seconds()
        eta = round(elapsed / worked * (estimate - worked), 1) if elapsed > 0 else None
    return {"nodes": nodes, "by_status": by_status, "active": active, "done": done,
            "failed": failed, "total": estimate or None, "unknown_totals": unknown,
            "percent": round(100.0 * worked / estimate, 1) if estimate else None,
            "eta_seconds": eta, "depth": max((int(r["depth"]) for r in rows), default=0)}


@dataclass(frozen=True)
class RootTree:
    """A root as the monitor lists it: its own row's progress and its whole tree's totals."""

    id: uuid.UUID
    actor: str
    status: str
    attempt: int
    done: int
    failed: int
    total: int | None
    eta_seconds: float | None
    started_at: datetime | None
    children: int
    totals: dict[str, Any]


def _by_top(rows: Sequence[Record]) -> dict[uuid.UUID, list[Record]]:
    out: dict[uuid.UUID, list[Record]] = defaultdict(list)
    for r in rows:
        out[r["top"]].append(r)
    return out


class TreeReader:
    def __init__(self, db: Db) -> None:
        self.db = db

    async def children(self, parents: Sequence[uuid.UUID], limit: int
                       ) -> dict[uuid.UUID, list[Record]]:
        """The first `limit` children of each parent, oldest first: one statement."""
        out: dict[uuid.UUID, list[Record]] = {p: [] for p in parents}
        if parents:
            for r in await self.db.pool.fetch(self.db.q["tree_view_children"],
                                              list(dict.fromkeys(parents)), limit):
                out[r["parent_id"]].append(r)
        return out

    async def totals(self, nodes: Sequence[uuid.UUID], now: datetime
                     ) -> dict[uuid.UUID, dict[str, Any]]:
        """Each node's subtree totals (as `aggregate_json`): one statement."""
        if not nodes:
            return {}
        rows = await self.db.pool.fetch(self.db.q["tree_view_totals"],
                                        list(dict.fromkeys(nodes)))
        return {top: aggregate_json(group, now) for top, group in _by_top(rows).items()}

    async def roots(self, shown: Sequence[uuid.UUID], *, waiting: int, now: datetime
                    ) -> list[RootTree]:
        """The roots with children among `shown`, and up to `waiting` roots whose own code
        is done and whose children are not, oldest first, each with its tree's totals: one
        statement, reading each tree through its root."""
        rows = await self.db.pool.fetch(self.db.q["tree_view_roots"], list(shown), waiting)
        out = []
        for top, group in _by_top(rows).items():
            r = group[0]
            out.append(RootTree(
                id=top, actor=r["root_actor"], status=r["root_status"],
                attempt=r["root_attempt"], done=r["root_done"], failed=r["root_failed"],
                total=r["root_total"], eta_seconds=r["root_eta_seconds"],
                started_at=r["root_started_at"], children=r["root_children"],
                totals=aggregate_json(group, now)))
        return out
