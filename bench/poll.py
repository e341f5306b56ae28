"""Waiting for a condition, bounded: the tests' polling, with the timeout a bench expects."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TypeVar

from tests.support import TimedOut, wait_for

T = TypeVar("T")


async def until(check: Callable[[], Awaitable[T]], timeout: float, what: str,
                interval: float = 0.1) -> T:
    """Polls `check` until it returns something truthy, and returns that."""
    try:
        return await wait_for(check, timeout=timeout, interval=interval, what=what)
    except TimedOut as exc:
        raise TimeoutError(str(exc)) from None
