"""Which process a pid means, and waiting until processes are gone.

A pid alone names no process for long: once it exits, the kernel hands the number to
the next process it starts. A pid together with the process's start time does (invariant
6): a recycled pid belongs to a process that started later. Every place that signals a
process it did not just start, or trusts a pid someone else recorded, goes through
`ProcessIdentity`.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TypeVar

import psutil

# psutil derives a start time from the kernel's clock ticks since boot (10 ms apart), so
# the same process always yields the same value; the allowance absorbs only the float
# rounding of a value that went through JSON, Redis or a Celery message. A pid handed to a
# new process within the allowance of the old one's start would pass; the kernel rules
# that out in practice, as it hands out pids in rising order and wraps only after the range.
START_TOLERANCE = 0.05

ALIVE = "alive"
GONE = "gone"
REUSED = "pid reused"


@dataclass(frozen=True)
class ProcessIdentity:
    """One process for all time: its pid and its start time (seconds since the epoch, as
    `psutil.Process.create_time()` gives it)."""

    pid: int
    started: float

    @classmethod
    def of(cls, proc: psutil.Process) -> ProcessIdentity:
        """Raises psutil.NoSuchProcess if the process is already gone."""
        return cls(pid=proc.pid, started=proc.create_time())

    @classmethod
    def current(cls) -> ProcessIdentity:
        return cls.of(psutil.Process())

    def matches(self, proc: psutil.Process) -> bool:
        """True if `proc` (same pid) started when this identity says."""
        return proc.pid == self.pid and abs(proc.create_time() - self.started) <= START_TOLERANCE

    def check(self) -> tuple[psutil.Process | None, str]:
        """The live process and ALIVE, or None and why not: GONE (exited, or a zombie whose
        parent has not collected it yet) or REUSED (the pid is now another process's)."""
        try:
            proc = psutil.Process(self.pid)
            if not self.matches(proc):
                return None, REUSED
            if proc.status() == psutil.STATUS_ZOMBIE:
                return None, GONE
            return proc, ALIVE
        except psutil.NoSuchProcess:  # ZombieProcess included
            return None, GONE

    def verify(self) -> psutil.Process | None:
        """The live process, only if it is this one. Signal it through the returned object:
        psutil checks pid and start time again right before each signal."""
        return self.check()[0]

    def is_gone(self) -> bool:
        return self.verify() is None

    def wait_gone(self, timeout: float, *, interval: float = 0.02) -> bool:
        """True once this process is gone, False if it still runs after `timeout`."""
        return not wait_gone([self], timeout, interval=interval)


def is_gone(proc: psutil.Process) -> bool:
    """Exited, or a zombie waiting for its parent to read its status. `is_running()` also
    compares start times, so a pid taken over by another process counts as gone."""
    try:
        return not proc.is_running() or proc.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:  # ZombieProcess included
        return True


Target = TypeVar("Target", psutil.Process, ProcessIdentity)


def wait_gone(targets: Iterable[Target], timeout: float, *, interval: float = 0.02
              ) -> list[Target]:
    """Polls until every target is gone; returns those still running after `timeout`.

    A zombie counts as gone: a process we did not start is reaped by its own parent or by
    init, which may take a while, and it can do nothing more in the meantime."""
    deadline = time.monotonic() + timeout
    left = list(targets)
    while True:
        left = [t for t in left if not _gone(t)]
        if not left or time.monotonic() >= deadline:
            return left
        time.sleep(interval)


def _gone(target: psutil.Process | ProcessIdentity) -> bool:
    return target.is_gone() if isinstance(target, ProcessIdentity) else is_gone(target)
