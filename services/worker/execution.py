"""One live execution of a task in this pool process: identity, token and progress."""

from __future__ import annotations

import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from shared.token import CancelToken


@dataclass
class Progress:
    done: int = 0
    failed: int = 0
    total: int | None = None
    current: int | None = None

    def percent(self) -> float | None:
        if not self.total:
            return None
        return round(100.0 * (self.done + self.failed) / self.total, 1)

    def eta_seconds(self, elapsed: float, skipped: int = 0) -> float | None:
        """Remaining time from this attempt's pace; chunks saved by earlier attempts don't count."""
        worked = self.done + self.failed - skipped
        if not self.total or worked <= 0:
            return None
        remaining = self.total - self.done - self.failed
        return max(0.0, elapsed / worked * remaining)


@dataclass
class Execution:
    task_id: uuid.UUID
    message_id: uuid.UUID
    actor: str
    queue: str
    attempt: int
    started_at: float  # epoch seconds, from the DB clock at claim
    kwargs: dict[str, Any]
    interruptible: bool = False
    time_limit: float | None = None
    token: CancelToken = field(default_factory=CancelToken)
    progress: Progress = field(default_factory=Progress)
    skipped: int = 0
    monotonic_start: float = field(default_factory=time.monotonic)
    # True only while the actor's own code runs: the interrupt signal is ignored otherwise.
    in_user_code: bool = False
    finished: threading.Event = field(default_factory=threading.Event)
    # Checkpoint writes kept through a DB outage: (chunk, ok, result), oldest first.
    pending: list[tuple[int, bool, Any]] = field(default_factory=list)
    # Job trees: the parent (a child's), whether this attempt runs the actor's
    # `on_children_done` step, children the task had when claimed and spawned since.
    parent_id: uuid.UUID | None = None
    children_done: bool = False
    children: int = 0
    spawned: int = 0

    @property
    def id(self) -> str:
        return str(self.task_id)

    def elapsed(self) -> float:
        return time.monotonic() - self.monotonic_start
