"""An asyncio loop on a daemon thread of its own, which other threads hand coroutines to.

Each pool process runs one for its sidecar, and the worker's main process one for its
guardian: neither the task's code nor Celery's consumer may wait on network I/O that
must go on (heartbeats, cancel events) while they are busy.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, TypeVar

T = TypeVar("T")

# How long start() waits for the loop to run before returning all the same.
READY_WITHIN = 10.0


class LoopThread:
    def __init__(self, name: str) -> None:
        self.name = name
        self.loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread: threading.Thread | None = None
        # The loop keeps only weak references to its tasks: these must not be collected.
        self._held: set[asyncio.Future[Any]] = set()

    def start(self, setup: Callable[[], None] | None = None) -> None:
        """Runs `setup` on the loop's thread before anything else there, then the loop;
        returns once the loop runs."""
        self._thread = threading.Thread(target=self._run, args=(setup,), name=self.name,
                                        daemon=True)
        self._thread.start()
        self._ready.wait(READY_WITHIN)

    def _run(self, setup: Callable[[], None] | None) -> None:
        asyncio.set_event_loop(self.loop)
        if setup is not None:
            setup()
        self.loop.call_soon(self._ready.set)
        self.loop.run_forever()

    def call(self, coro: Coroutine[Any, Any, T], timeout: float = 15.0) -> T:
        """Runs `coro` on the loop and waits for its result (from any other thread)."""
        future = asyncio.run_coroutine_threadsafe(coro, self.loop)
        try:
            return future.result(timeout)
        except TimeoutError:
            future.cancel()  # its work must not land later, unseen
            raise

    def spawn(self, work: Awaitable[T]) -> asyncio.Future[T]:
        """Starts work that nobody awaits and holds it until it ends (on the loop's thread)."""
        task = asyncio.ensure_future(work, loop=self.loop)
        self._held.add(task)
        task.add_done_callback(self._held.discard)
        return task

    def stop(self, timeout: float = 5.0) -> None:
        """Cancels every task of the loop, then stops it and its thread."""
        thread = self._thread
        if thread is None or not thread.is_alive():
            return
        try:
            self.call(_cancel_all(), timeout)
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            thread.join(timeout)
        if not thread.is_alive():
            self.loop.close()


async def _cancel_all() -> None:
    tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
