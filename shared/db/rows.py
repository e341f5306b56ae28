"""Typed rows for the hot paths: what a claim hands the worker, what the reaper judges.

Each is built from a query's row with `from_row`, which takes exactly the dataclass's
fields: a query that stops returning one fails loudly at the first row, not later as a
`KeyError` deep in a rule.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass, fields
from datetime import datetime
from typing import Any, Self

from shared.states import TaskStatus


class _FromRow:
    __slots__ = ()

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> Self:
        return cls(**{f.name: row[f.name] for f in fields(cls)})  # type: ignore[arg-type]


@dataclass(frozen=True, slots=True)
class Claim(_FromRow):
    """The task a worker just claimed: this attempt's number and what to run."""

    attempt: int
    started_at: datetime
    kwargs: dict[str, Any]
    actor: str
    queue: str
    # The task's parent in a job tree, and whether this attempt runs the actor's
    # `on_children_done` step (its children have all ended) rather than its body.
    parent_id: uuid.UUID | None = None
    children: int = 0
    children_done: bool = False
    # Chunk numbers earlier attempts saved (the claim reads them in its own round trip).
    saved: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "saved", tuple(self.saved or ()))


@dataclass(frozen=True, slots=True)
class StaleExecution(_FromRow):
    """An executing row whose heartbeat (or start) is older than the timeout."""

    id: uuid.UUID
    actor: str
    queue: str
    status: TaskStatus
    attempt: int
    message_id: uuid.UUID
    worker: str | None
    pid: int | None
    heartbeat_at: datetime | None
    started_at: datetime | None
    cancel_reason: str | None
    resumes: int

    def __post_init__(self) -> None:
        object.__setattr__(self, "status", TaskStatus(self.status))


@dataclass(frozen=True, slots=True)
class DueCancel(_FromRow):
    """A cancelling (or pausing) row past its deadline: the ladder's kill step is due."""

    id: uuid.UUID
    actor: str
    status: TaskStatus
    attempt: int
    worker: str | None
    pid: int | None
    message_id: uuid.UUID
    cancel_deadline: datetime
    cancel_forced: bool | None
    silent_for: float | None

    def __post_init__(self) -> None:
        object.__setattr__(self, "status", TaskStatus(self.status))
