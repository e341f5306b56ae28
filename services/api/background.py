"""Work a request starts and does not wait for (a subtree cancel's sweep of never-started
tasks): kept until done, waited for at shutdown, its failure logged. Whatever is cut short
by a crash is the reaper's to finish (its tree rule)."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any

import structlog

log = structlog.get_logger("api.background")

# How long a shutdown waits for started work.
DRAIN_SECONDS = 10.0


class Background:
    def __init__(self) -> None:
        self._tasks: set[asyncio.Task[Any]] = set()

    def spawn(self, work: Coroutine[Any, Any, Any]) -> None:
        task = asyncio.get_running_loop().create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.warning("api.background_failed", error=repr(task.exception()))

    async def close(self) -> None:
        if not self._tasks:
            return
        _, pending = await asyncio.wait(set(self._tasks), timeout=DRAIN_SECONDS)
        for task in pending:
            task.cancel()
