"""Many submissions in one transaction: roots, children of existing tasks, and whole trees
named by references within the batch.

Everything is checked before anything is written (actors, arguments, parents, references,
depth and fan-out); one transaction writes every row, then the messages go out together.
If the broker refuses them, the rows are deleted again: a batch is made whole or not at all.
"""

from __future__ import annotations

import uuid
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

from celery import Celery

from shared.db import Db, NewChild, Record
from shared.errors import BrokerUnavailable
from shared.settings import Settings
from shared.submit import Message, publish_many
from shared.trees import ChildSpec, TreeError, check_parent, prepare


@dataclass(frozen=True)
class Item:
    spec: ChildSpec
    parent_id: uuid.UUID | None = None
    ref: str | None = None
    parent_ref: str | None = None


def order(items: list[Item]) -> list[int]:
    """Indexes in an order where every item comes after the item its `parent_ref` names;
    TreeError for a reference to no item, a reference used twice, or a cycle."""
    by_ref: dict[str, int] = {}
    for i, item in enumerate(items):
        if item.ref is not None:
            if item.ref in by_ref:
                raise TreeError("duplicate_ref", f"tasks[{i}]: ref {item.ref!r} is used twice")
            by_ref[item.ref] = i
    kids: dict[int, list[int]] = defaultdict(list)
    roots = []
    for i, item in enumerate(items):
        if item.parent_ref is None:
            roots.append(i)
        elif item.parent_ref not in by_ref:
            raise TreeError("unknown_parent",
                            f"tasks[{i}]: parent_ref {item.parent_ref!r} names no task here")
        else:
            kids[by_ref[item.parent_ref]].append(i)
    out: list[int] = []
    frontier = roots
    while frontier:
        out.extend(frontier)
        frontier = [k for i in frontier for k in kids[i]]
    if len(out) < len(items):
        stuck = sorted(set(range(len(items))) - set(out))
        raise TreeError("cycle", f"tasks{stuck}: their parent_refs form a cycle")
    return out


async def submit_batch(db: Db, celery: Celery, settings: Settings, items: list[Item]
                       ) -> list[Record]:
    """Creates every item, in the order given; returns the rows in that order."""
    sequence = order(items)
    prepared = await prepare(db, [item.spec for item in items])
    rows: dict[int, Record] = {}
    nodes: dict[int, dict[str, Any]] = {}   # a new row as a parent: id, root, depth, children
    counts: dict[uuid.UUID, int] = defaultdict(int)
    for item in items:
        if item.parent_id is not None:
            counts[item.parent_id] += 1
    ref_index = {item.ref: i for i, item in enumerate(items) if item.ref is not None}
    async with db.transaction() as conn:
        parents: dict[uuid.UUID, Record] = {}
        for pid in sorted(counts):  # one order for every writer: no lock cycle between batches
            parent = await db.lock_parent(conn, pid)
            check_parent(parent, pid, None, settings, counts[pid])
            assert parent is not None
            parents[pid] = parent
        # Parents before children (`sequence` goes a level at a time), and one INSERT for all
        # the children of one parent.
        groups: dict[tuple[str, Any], list[int]] = defaultdict(list)
        for i in sequence:
            item = items[i]
            key = (("task", item.parent_id) if item.parent_id is not None
                   else ("ref", item.parent_ref) if item.parent_ref is not None else ("root", None))
            if key[0] == "ref" and ref_index[str(key[1])] not in nodes and groups:
                await _flush(db, conn, groups, parents, nodes, ref_index, prepared, rows)
            groups[key].append(i)
        await _flush(db, conn, groups, parents, nodes, ref_index, prepared, rows)
        for pid, n in counts.items():
            await db.count_children(conn, pid, n)
        for i, node in nodes.items():
            if node["children"]:
                _bounded(settings, i, node)
                await db.count_children(conn, node["id"], node["children"])
    ordered = [rows[i] for i in range(len(items))]
    try:
        await publish_many(celery, [_message(r) for r in ordered])
    except BrokerUnavailable:
        await db.delete_new_tasks([r["id"] for r in ordered], counts)
        raise
    return ordered


def _message(row: Record) -> Message:
    return Message(row["actor"], row["id"], row["message_id"], row["queue"], row["eta"],
                   row["queued_at"])


def _bounded(settings: Settings, i: int, node: dict[str, Any]) -> None:
    if node["depth"] + 1 > settings.tree_max_depth:
        raise TreeError("tree_too_deep", f"children of tasks[{i}] would be deeper than "
                        f"TREE_MAX_DEPTH={settings.tree_max_depth}")
    if node["children"] > settings.tree_max_children:
        raise TreeError("too_many_children", f"tasks[{i}] would have {node['children']} "
                        f"children, past TREE_MAX_CHILDREN={settings.tree_max_children}")


async def _flush(db: Db, conn: Any, groups: dict[tuple[str, Any], list[int]],
                 parents: dict[uuid.UUID, Record], nodes: dict[int, dict[str, Any]],
                 ref_index: dict[str, int], prepared: list[NewChild],
                 rows: dict[int, Record]) -> None:
    """Inserts the grouped items, one statement per parent, and empties the groups."""
    for (kind, key), members in groups.items():
        if kind == "task":
            p = parents[key]
            under: dict[str, Any] = {"id": p["id"], "root_id": p["root_id"], "depth": p["depth"]}
        elif kind == "ref":
            under = nodes[ref_index[key]]
            under["children"] += len(members)
        else:
            under = {"id": None, "root_id": None, "depth": -1}
        made = {r["id"]: r for r in await db.insert_children(conn, under,
                                                            [prepared[i] for i in members])}
        for i in members:
            child = prepared[i]
            rows[i] = made[child.id]
            nodes[i] = {"id": child.id, "root_id": under["root_id"] or under["id"] or child.id,
                        "depth": under["depth"] + 1, "children": 0}
    groups.clear()
