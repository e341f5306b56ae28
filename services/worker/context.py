"""What an actor's code sees: the cancel token, progress, checkpoints and bounded waits."""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import structlog
from celery import Celery

from services.worker.spawning import Spawner
from shared.token import Cancelled, CancelToken, DeadlineExceeded

if TYPE_CHECKING:
    from services.worker.actor import Actor
    from services.worker.execution import Execution
    from services.worker.sidecar import Sidecar


def chunk_timeout(chars: int, *, base: float = 10.0, per_kchar: float = 20.0,
                  ceiling: float = 3600.0) -> float:
    """A chunk's time budget grows with its size: a fixed base plus a rate per 1,000 chars."""
    return min(ceiling, base + per_kchar * chars / 1000.0)


class Checkpoint:
    """Per-chunk results, each persisted before the next chunk starts."""

    def __init__(self, sidecar: Sidecar, ex: Execution, saved: set[int]) -> None:
        self._sidecar = sidecar
        self._ex = ex
        self.saved = saved

    def __contains__(self, chunk: int) -> bool:
        return chunk in self.saved

    def save(self, chunk: int, result: Any, *, ok: bool = True) -> None:
        self._sidecar.call(self._sidecar.save_result(self._ex, chunk, ok, result))
        if ok:
            self.saved.add(chunk)


class TaskContext:
    def __init__(self, sidecar: Sidecar, ex: Execution, saved: set[int],
                 celery: Celery | None = None) -> None:
        self._ex = ex
        self.token: CancelToken = ex.token
        self.checkpoint = Checkpoint(sidecar, ex, saved)
        self._spawner = Spawner(sidecar, celery, ex) if celery is not None else None
        self.log = structlog.get_logger("task").bind(task_id=ex.id, attempt=ex.attempt,
                                                     actor=ex.actor)
        self._deadline: float | None = None

    @property
    def task_id(self) -> str:
        return self._ex.id

    @property
    def attempt(self) -> int:
        return self._ex.attempt

    @property
    def parent_id(self) -> str | None:
        return str(self._ex.parent_id) if self._ex.parent_id is not None else None

    # -- job trees ----------------------------------------------------------------------

    def spawn(self, actor: Actor[Any, Any] | str, arguments: Mapping[str, Any] | None = None,
              /, *, chunk: int | None = None, checkpoint: Any = None,
              fail_fast: bool | None = None, queue: str | None = None, **kwargs: Any) -> str:
        """Makes a child task and enqueues it; returns its id. Its arguments are `arguments`
        and the other keywords (a dict for names that clash with these options). With
        `chunk`, that chunk's checkpoint (`checkpoint`, by default the child's id) is saved in
        the same step, so a resumed parent skips it; without, a resumed parent spawning again
        in the same order gets the same children back. Raises Cancelled if this task is
        being stopped."""
        ids = self._spawn().spawn(actor, {**(arguments or {}), **kwargs}, chunk=chunk,
                                  checkpoint=checkpoint, fail_fast=fail_fast, queue=queue)
        if chunk is not None:
            self.checkpoint.saved.add(chunk)
        return ids

    def spawn_many(self, actor: Actor[Any, Any] | str, kwargs: Iterable[Mapping[str, Any]], *,
                   fail_fast: bool | None = None, queue: str | None = None) -> list[str]:
        """Many children of one actor in one transaction and one round of messages."""
        return self._spawn().spawn_many(actor, kwargs, fail_fast=fail_fast, queue=queue)

    def children(self) -> list[dict[str, Any]]:
        """This task's children, oldest first: id, actor, status and progress."""
        return self._spawn().children()

    def child_results(self, child_id: str) -> list[dict[str, Any]]:
        """A child's saved chunk results: chunk, ok, result."""
        return self._spawn().results(child_id)

    def _spawn(self) -> Spawner:
        if self._spawner is None:
            raise RuntimeError("this context cannot spawn: it was made without a Celery app")
        return self._spawner

    def heartbeat(self, *, done: int | None = None, failed: int | None = None,
                  total: int | None = None, current: int | None = None) -> None:
        """Records progress in memory; the sidecar writes it to the DB at a bounded rate."""
        p = self._ex.progress
        if done is not None:
            p.done = done
        if failed is not None:
            p.failed = failed
        if total is not None:
            p.total = total
        if current is not None:
            p.current = current

    def skipped(self, n: int) -> None:
        """Chunks restored from the checkpoint: they count as done but not toward the pace."""
        self._ex.skipped = n

    def sleep(self, seconds: float) -> None:
        """Waits, waking at once on cancel (raises Cancelled) or at the chunk's deadline."""
        limit = seconds
        if self._deadline is not None:
            limit = min(seconds, max(0.0, self._deadline - time.monotonic()))
        if self.token.wait(limit):
            raise Cancelled(self.token.reason or "cancelled")
        if limit < seconds:
            raise DeadlineExceeded(f"chunk time budget exhausted after {limit:.2f}s")

    @contextmanager
    def budget(self, seconds: float) -> Iterator[None]:
        """Bounds the runtime waits inside the block; exceeding it raises DeadlineExceeded."""
        previous = self._deadline
        self._deadline = time.monotonic() + seconds
        try:
            yield
        finally:
            self._deadline = previous
