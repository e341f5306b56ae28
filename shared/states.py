"""Task states and the transitions between them."""

from __future__ import annotations

from enum import StrEnum


class TaskStatus(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    CANCELLING = "cancelling"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"
    LOST = "lost"

    @property
    def terminal(self) -> bool:
        return self in TERMINAL


TERMINAL = frozenset({TaskStatus.SUCCEEDED, TaskStatus.FAILED, TaskStatus.CANCELLED, TaskStatus.LOST})
ACTIVE = frozenset({TaskStatus.QUEUED, TaskStatus.RUNNING, TaskStatus.CANCELLING})
RESUMABLE = frozenset({TaskStatus.CANCELLED, TaskStatus.LOST, TaskStatus.FAILED})


class Outcome(StrEnum):
    """How a task that did not succeed came to an end."""

    NEVER_STARTED = "never_started"
    COOPERATIVE = "cooperative"
    KILLED = "killed"
    GONE = "gone"
    ERROR = "error"


class CancelReason(StrEnum):
    USER = "user"
    TIME_LIMIT = "time_limit"
    FORCE_KILL = "force-kill"
