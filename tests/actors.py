"""Actors that only the tests load (ACTOR_MODULES=services.worker.actors,tests.actors)."""

from __future__ import annotations

import time

from services.worker.actor import actor
from services.worker.actors.distill import distill
from services.worker.context import TaskContext


@actor(time_limit=1.5)
def limited(ctx: TaskContext, chunks: int = 100, chunk_seconds: float = 0.1) -> None:
    distill.fn(ctx, chunks=chunks, chunk_seconds=chunk_seconds)


@actor(auto_resume=2)
def resilient(ctx: TaskContext, chunks: int = 30, chunk_seconds: float = 0.1) -> None:
    distill.fn(ctx, chunks=chunks, chunk_seconds=chunk_seconds)


@actor(max_retries=3)
def fragile(ctx: TaskContext, seconds: float = 30.0) -> None:
    """Fails like a dropped connection once cancelled, without raising Cancelled itself."""
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        if ctx.token.cancelled:
            raise ConnectionError("peer went away")
        time.sleep(0.01)


@actor
def poisoned(ctx: TaskContext) -> None:
    """Saves one good chunk, then a result that is not JSON."""
    ctx.checkpoint.save(0, {"ok": True})
    ctx.checkpoint.save(1, {"at": object()})
