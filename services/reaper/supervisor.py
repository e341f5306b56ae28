"""Named periodic loops under a supervisor: a failing loop is logged and goes on."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

import structlog

log = structlog.get_logger("reaper.supervisor")


class Supervisor:
    def __init__(self) -> None:
        self._tasks: list[asyncio.Task[None]] = []
        self.failures: dict[str, int] = {}

    def every(self, name: str, interval: float, fn: Callable[[], Awaitable[object]]) -> None:
        self._tasks.append(asyncio.create_task(self._loop(name, interval, fn), name=name))

    async def _loop(self, name: str, interval: float, fn: Callable[[], Awaitable[object]]) -> None:
        consecutive = 0
        while True:
            started = time.monotonic()
            try:
                await fn()
                if consecutive:
                    log.info("reaper.loop_recovered", loop=name, after_failures=consecutive)
                consecutive = 0
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                consecutive += 1
                self.failures[name] = self.failures.get(name, 0) + 1
                # Redis or Postgres away is expected now and then: back off, keep going.
                log.warning("reaper.loop_failed", loop=name, error=repr(exc),
                            consecutive=consecutive, exc_info=consecutive == 1)
            delay = interval if not consecutive else min(interval * 2 ** consecutive, 5.0)
            await asyncio.sleep(max(0.0, delay - (time.monotonic() - started)))

    async def stop(self) -> None:
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
