"""Rows to JSON, and the opaque keyset cursor for listing tasks."""

from __future__ import annotations

import re
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

from services.api.errors import ApiError
from shared.db import Record


def iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def progress_json(row: Record) -> dict[str, Any]:
    done, failed, total = row["done"], row["failed"], row["total"]
    return {
        "done": done,
        "failed": failed,
        "total": total,
        "percent": round(100.0 * (done + failed) / total, 1) if total else None,
        "current_chunk": row["current_chunk"],
        "eta_seconds": row["eta_seconds"],
    }


def cancel_json(row: Record) -> dict[str, Any] | None:
    if row["cancel_requested_at"] is None:
        return None
    return {
        "requested_at": iso(row["cancel_requested_at"]),
        "reason": row["cancel_reason"],
        "by": row["cancel_by"],
        "forced": bool(row["cancel_forced"]),
        "deadline": iso(row["cancel_deadline"]),
    }


def pause_json(row: Record) -> dict[str, Any] | None:
    """Who paused the task, when and why; cleared by its resume."""
    if row.get("pause_requested_at") is None:
        return None
    return {"requested_at": iso(row["pause_requested_at"]), "reason": row["pause_reason"],
            "by": row["pause_by"]}


def resources_json(row: Record) -> dict[str, Any]:
    """What the execution's pool process used at its last heartbeat (null before one)."""
    cpu = row.get("cpu_percent")
    return {"rss_bytes": row.get("rss_bytes"),
            "cpu_percent": round(float(cpu), 1) if cpu is not None else None}


def task_json(row: Record) -> dict[str, Any]:
    return {**task_summary(row), "kwargs": row["kwargs"]}


def task_summary(row: Record) -> dict[str, Any]:
    """A task as the list shows it: everything but its kwargs, which only the detail carries
    (a page of tasks costs the same whatever they were given)."""
    return {
        "id": str(row["id"]),
        "actor": row["actor"],
        "queue": row["queue"],
        "status": row["status"],
        "attempt": row["attempt"],
        "progress": progress_json(row),
        "eta": iso(row["eta"]),
        "heartbeat_at": iso(row["heartbeat_at"]),
        "created_at": iso(row["created_at"]),
        "started_at": iso(row["started_at"]),
        "finished_at": iso(row["finished_at"]),
        "worker": row["worker"],
        "outcome": row["outcome"],
        "error": row["error"],
        "resumes": row["resumes"],
        "cancel": cancel_json(row),
        "pause": pause_json(row),
        "resources": resources_json(row),
        "tree": tree_json(row),
    }


def tree_json(row: Record) -> dict[str, Any] | None:
    """Where the task sits in a job tree; null for a task with no parent and no children."""
    parent, children = row.get("parent_id"), row.get("children") or 0
    if parent is None and not children:
        return None
    return {"parent_id": str(parent) if parent is not None else None,
            "root_id": str(row.get("root_id") or row["id"]), "depth": row.get("depth") or 0,
            "children": children, "fail_fast": bool(row.get("fail_fast"))}


def result_json(row: Record) -> dict[str, Any]:
    return {"chunk": row["chunk"], "attempt": row["attempt"], "ok": row["ok"],
            "result": row["result"], "created_at": iso(row["created_at"])}


def actor_json(row: Record) -> dict[str, Any]:
    return {"name": row["name"], "queue": row["queue"], "params": row["params"],
            "options": row["options"], "updated_at": iso(row["updated_at"])}


# A page's position: the last row's created_at in microseconds since the epoch (UTC) and its
# id. Every string of this form is a valid position (at most 16 digits: before the year
# 2287), so the published schema says exactly which cursors are accepted.
CURSOR_PATTERN = r"^[0-9]{1,16}-[0-9a-f]{32}$"
_CURSOR_RE = re.compile(CURSOR_PATTERN)
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)


def encode_cursor(row: Record) -> str:
    micros = max(0, (row["created_at"] - _EPOCH) // _MICROSECOND)
    return f"{micros}-{uuid.UUID(str(row['id'])).hex}"


def decode_cursor(cursor: str) -> tuple[datetime, uuid.UUID]:
    if not _CURSOR_RE.fullmatch(cursor):
        raise ApiError(400, "invalid_cursor", "cursor is not one this API returned")
    micros, _, task_id = cursor.partition("-")
    return _EPOCH + int(micros) * _MICROSECOND, uuid.UUID(hex=task_id)
