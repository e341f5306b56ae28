"""What a heartbeat carries and what it reads back.

A `Beat` is one execution's progress as its pool process reports it, written to the row
(fenced by attempt) by the process itself or, with every other execution of its worker in
one statement, by the worker's main process. A `BeatState` is what that statement reads
back for each execution: whether the beat was written, and whether the row asks the
execution to stop.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Self

from shared.db.rows import _FromRow
from shared.states import EXECUTING, STOPPING, TaskStatus


@dataclass(frozen=True, slots=True)
class Beat:
    task_id: uuid.UUID
    attempt: int
    done: int
    failed: int
    total: int | None
    current: int | None
    eta_seconds: float | None
    rss_bytes: int | None = None
    cpu_percent: float | None = None
    # Seconds between the report and its write: the row's heartbeat is dated when the
    # process reported, not when someone else wrote it down.
    age: float = 0.0

    def to_wire(self) -> dict[str, Any]:
        return {"task_id": str(self.task_id), "attempt": self.attempt, "done": self.done,
                "failed": self.failed, "total": self.total, "current": self.current,
                "eta_seconds": self.eta_seconds, "rss_bytes": self.rss_bytes,
                "cpu_percent": self.cpu_percent}

    @classmethod
    def from_wire(cls, data: dict[str, Any]) -> Self:
        return cls(task_id=uuid.UUID(data["task_id"]), attempt=int(data["attempt"]),
                   done=int(data["done"]), failed=int(data["failed"]), total=data["total"],
                   current=data["current"], eta_seconds=data["eta_seconds"],
                   rss_bytes=data["rss_bytes"], cpu_percent=data["cpu_percent"])


@dataclass(frozen=True, slots=True)
class BeatState(_FromRow):
    """One execution's row as the node's heartbeat statement found it."""

    id: uuid.UUID
    attempt: int
    message_id: uuid.UUID
    status: TaskStatus
    cancel_reason: str | None
    cancel_forced: bool | None
    cancel_deadline: datetime | None
    due_in: float | None
    written: bool

    def __post_init__(self) -> None:
        object.__setattr__(self, "status", TaskStatus(self.status))

    @property
    def stopping(self) -> bool:
        return self.status in STOPPING

    def holds(self, attempt: int) -> bool:
        """Whether this attempt still owns the row (else its writes are fenced off)."""
        return self.attempt == attempt and self.status in EXECUTING
