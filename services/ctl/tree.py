"""`taskctl tree ID`: where a task sits in its job tree (its ancestors, as a path) and the
subtree below it, each node with its actor, short id, state and progress, and a node with
children with its subtree's totals (nodes by state, percent, ETA).

The walk reads a level at a time (shared.tree_view.TreeReader), so the whole view costs a
few statements whatever the tree's size. It is bounded by --depth levels and --limit
children per node; what a bound hides is counted on screen, never silently dropped.
"""

from __future__ import annotations

import argparse
import json
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from rich.console import Console, Group, RenderableType
from rich.text import Text
from rich.tree import Tree

from services.ctl.commands import resolve
from services.ctl.context import CtlContext
from services.ctl.fmt import STATE_STYLE, duration, state
from shared.db import Record
from shared.errors import TaskNotFound
from shared.states import ATTENTION
from shared.tree_view import TreeReader

DEPTH_DEFAULT = 3
LIMIT_DEFAULT = 20
LIMIT_MAX = 1000
SHORT_ID = 8


@dataclass
class Node:
    row: Record
    children: list[Node] = field(default_factory=list)
    # Children left out: past --limit (`more`), or not read at all, past --depth (`deeper`).
    more: int = 0
    deeper: int = 0
    totals: dict[str, Any] | None = None

    @property
    def id(self) -> uuid.UUID:
        return self.row["id"]  # asyncpg gives uuid.UUID


@dataclass
class View:
    node: Node
    ancestors: list[Record]  # root first


def _bounded(low: int, high: int) -> Any:
    def parse(value: str) -> int:
        try:
            number = int(value)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{value!r} is not a whole number") from None
        if not low <= number <= high:
            raise argparse.ArgumentTypeError(f"must be between {low} and {high}")
        return number
    return parse


def add_parser(sub: Any) -> None:
    p = sub.add_parser("tree", help="a task's place in its job tree and the subtree below it")
    p.add_argument("task_id", help="task id (or a unique prefix of a running task's id)")
    p.add_argument("--depth", type=_bounded(0, 64), default=DEPTH_DEFAULT,
                   help=f"levels below the task to show (default {DEPTH_DEFAULT})")
    p.add_argument("--limit", type=_bounded(1, LIMIT_MAX), default=LIMIT_DEFAULT,
                   help=f"children shown per node, the rest counted (default {LIMIT_DEFAULT})")
    p.add_argument("--json", action="store_true", help="machine-readable output")


async def load(ctx: CtlContext, task_id: uuid.UUID, *, depth: int, limit: int) -> View:
    """The node, its ancestors, and its subtree down to `depth` levels, `limit` children
    per node, with the totals of every node shown that has children."""
    row = await ctx.db.get_task(task_id)
    if row is None:
        raise TaskNotFound(task_id)
    reader = TreeReader(ctx.db)
    top = Node(row)
    level, parents_seen = [top], []
    for _ in range(depth):
        parents = [n for n in level if n.row["children"]]
        if not parents:
            level = []
            break
        pages = await reader.children([n.id for n in parents], limit)
        level = []
        for n in parents:
            n.children = [Node(r) for r in pages[n.id]]
            # A short page is all of them; a full one leaves what the parent's count says.
            if len(n.children) == limit:
                n.more = max(0, n.row["children"] - limit)
            level.extend(n.children)
        parents_seen.extend(parents)
    for n in level:
        n.deeper = n.row["children"]
    with_children = [*parents_seen, *(n for n in level if n.deeper)]
    totals = await reader.totals([n.id for n in with_children], datetime.now(UTC))
    for n in with_children:
        n.totals = totals.get(n.id)
    ancestors = list(reversed(await ctx.db.ancestors(task_id)))
    return View(top, ancestors)


def _short(task_id: Any) -> str:
    return str(task_id)[:SHORT_ID]


def _progress(row: Record) -> str:
    total = row["total"]
    text = f"{row['done']}/{total if total is not None else '?'}"
    return f"{text} ({row['failed']} failed)" if row["failed"] else text


def _totals(t: dict[str, Any]) -> Text:
    order = {s.value: i for i, s in enumerate(ATTENTION)}
    parts: list[Text | str] = [f"  tree: {t['nodes']} nodes ("]
    for i, (status, n) in enumerate(sorted(t["by_status"].items(),
                                           key=lambda kv: order.get(kv[0], 99))):
        parts.extend([", " if i else "", Text(f"{n} {status}",
                                              style=STATE_STYLE.get(status, ""))])
    parts.append(")")
    if t["percent"] is not None:
        parts.append(f" {t['percent']:.1f}%")
    if t["active"]:
        eta = t["eta_seconds"]
        parts.append(f" ETA {duration(eta)}" if eta is not None else " ETA ?")
    return Text.assemble(*parts, style="dim" if not t["active"] else "")


def _label(n: Node, *, full_id: bool = False) -> Text:
    row = n.row
    ident = str(row["id"]) if full_id else _short(row["id"])
    label = Text.assemble((row["actor"], "bold"), " ", (ident, "cyan"), " ",
                          state(row["status"]), f" {_progress(row)}")
    if n.totals is not None:
        label.append_text(_totals(n.totals))
    return label


def _grow(branch: Tree, n: Node) -> None:
    for child in n.children:
        _grow(branch.add(_label(child)), child)
    if n.more:
        branch.add(Text(f"… {n.more} more", style="dim"))
    if n.deeper:
        branch.add(Text(f"… {n.deeper} children below --depth", style="dim"))


def render(view: View) -> RenderableType:
    path = Text("path: ")
    for a in view.ancestors:
        path.append_text(Text.assemble((a["actor"], "bold"), " ", (_short(a["id"]), "cyan"),
                                       " ", state(a["status"]), " › "))
    path.append("this task" if view.ancestors else "this task is a root", style="italic")
    tree = Tree(_label(view.node, full_id=True), guide_style="dim")
    _grow(tree, view.node)
    return Group(path, tree)


def node_json(n: Node) -> dict[str, Any]:
    row = n.row
    return {"id": str(row["id"]), "actor": row["actor"], "status": row["status"],
            "attempt": row["attempt"], "depth": row["depth"],
            "progress": {"done": row["done"], "failed": row["failed"], "total": row["total"]},
            "children_count": row["children"], "aggregate": n.totals,
            "children": [node_json(c) for c in n.children], "more": n.more,
            "deeper": n.deeper}


def view_json(view: View) -> dict[str, Any]:
    return {"ancestors": [{"id": str(a["id"]), "actor": a["actor"], "status": a["status"]}
                          for a in view.ancestors],
            "task": node_json(view.node)}


async def run(ctx: CtlContext, console: Console, args: argparse.Namespace) -> int:
    task_id = await resolve(ctx, args.task_id)
    view = await load(ctx, task_id, depth=args.depth, limit=args.limit)
    if args.json:
        print(json.dumps(view_json(view), default=str))
    else:
        console.print(render(view))
    return 0
