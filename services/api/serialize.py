"""Rows to JSON, and the opaque keyset cursor for listing tasks."""

from __future__ import annotations

import base64
import binascii
import uuid
from datetime import datetime
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
    return {
        "id": str(row["id"]),
        "actor": row["actor"],
        "queue": row["queue"],
        "kwargs": row["kwargs"],
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
    }


def result_json(row: Record) -> dict[str, Any]:
    return {"chunk": row["chunk"], "attempt": row["attempt"], "ok": row["ok"],
            "result": row["result"], "created_at": iso(row["created_at"])}


def actor_json(row: Record) -> dict[str, Any]:
    return {"name": row["name"], "queue": row["queue"], "params": row["params"],
            "options": row["options"], "updated_at": iso(row["updated_at"])}


def encode_cursor(row: Record) -> str:
    raw = f"{row['created_at'].isoformat()}|{row['id']}".encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, uuid.UUID]:
    try:
        padded = cursor.encode("ascii") + b"=" * (-len(cursor) % 4)
        created, _, task_id = base64.b64decode(padded, altchars=b"-_", validate=True) \
            .decode("utf-8").partition("|")
        at = datetime.fromisoformat(created)
        if at.tzinfo is None:
            raise ValueError("naive timestamp")
        return at, uuid.UUID(task_id)
    except (UnicodeError, binascii.Error, ValueError):
        raise ApiError(400, "invalid_cursor", "cursor is not one this API returned") from None
