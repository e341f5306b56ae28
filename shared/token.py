"""The cancel token: a flag in memory that something else keeps current.

Checking it is an attribute read. Setting it wakes every runtime wait at once. Its `reason`
travels from whoever set it (the cancel event's `reason`, the heartbeat's read of the row,
a time limit, a drain): task code stops the same way whatever it is, and the execution's
end reads it to know what the stop was for. `pause` and `shutdown` (shared.states.
CancelReason) end the execution `paused`, or back in `queued` for another worker, rather
than `cancelled`.
"""

from __future__ import annotations

import threading


class Cancelled(BaseException):
    """Raised inside task code when its execution must stop.

    A BaseException, like KeyboardInterrupt, so a broad `except Exception` in task
    code does not swallow it.
    """

    def __init__(self, reason: str = "cancelled") -> None:
        super().__init__(reason)
        self.reason = reason


class DeadlineExceeded(Exception):
    """A bounded wait (a chunk's own time budget) ran out; the task goes on."""


class CancelToken:
    __slots__ = ("cancelled", "reason", "forced", "_event")

    def __init__(self) -> None:
        self.cancelled = False
        self.reason: str | None = None
        self.forced = False
        self._event = threading.Event()

    def cancel(self, reason: str = "cancelled", *, forced: bool = False) -> bool:
        """Sets the token; returns False if it was already set."""
        if self.cancelled:
            self.forced = self.forced or forced
            return False
        self.reason = reason
        self.forced = forced
        self.cancelled = True
        self._event.set()
        return True

    def raise_if_cancelled(self) -> None:
        if self.cancelled:
            raise Cancelled(self.reason or "cancelled")

    def wait(self, timeout: float | None = None) -> bool:
        """Blocks until cancelled or timeout; True if cancelled."""
        return self._event.wait(timeout)
