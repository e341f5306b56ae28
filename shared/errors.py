"""The domain's errors: what an operation refuses, in its own words.

Each caller decides what an error means to its user: the API picks an HTTP status
(services/api/errors.py), taskctl an exit code. Nothing here knows about either, and no
lookup failure that is not one of these (a stray `KeyError`) is ever taken for one.
"""

from __future__ import annotations

import uuid
from typing import Any


class TaskreaperError(Exception):
    """Base of every error an operation raises on purpose."""


class TaskNotFound(TaskreaperError):
    def __init__(self, task_id: uuid.UUID) -> None:
        super().__init__(f"no task {task_id}")
        self.task_id = task_id


class CancelConflict(TaskreaperError):
    """The task already ended in a way a cancel cannot change (or a resume cannot restart)."""

    def __init__(self, message: str, row: Any) -> None:
        super().__init__(message)
        # The row as found, so a caller can say which state stood in the way.
        self.row = row


class SubmitError(TaskreaperError):
    """A submission refused for what it asked: nothing was created."""


class UnknownActor(SubmitError):
    def __init__(self, actor: str) -> None:
        super().__init__(f"no actor named {actor!r}")
        self.actor = actor


class InvalidKwargs(SubmitError):
    def __init__(self, problems: dict[str, str]) -> None:
        super().__init__("; ".join(f"{k}: {v}" for k, v in problems.items()))
        # Argument name -> what is wrong with it.
        self.problems = problems


class TreeError(SubmitError):
    """A child refused for where it would go in a job tree: nothing was created. `code`
    names why; `conflict` is true when the parent's state (not the request) stands in the
    way."""

    def __init__(self, code: str, message: str, *, conflict: bool = False) -> None:
        super().__init__(message)
        self.code = code
        self.conflict = conflict


class ParentStopping(TreeError):
    """The parent is being stopped or has ended: its code must stop, not spawn."""


class BrokerUnavailable(TaskreaperError):
    """The broker refused a message: nothing the request could change, retry later."""
