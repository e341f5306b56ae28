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


# -- job trees --------------------------------------------------------------------------
# Each chunk a leaf does is counted in Redis (`<prefix>:test:done:<task>:<chunk>`), so a test
# can tell a chunk done twice from one done once whatever the rows say.

def _count_chunk(ctx: TaskContext, chunk: int) -> None:
    import os

    import redis

    client = redis.Redis.from_url(os.environ["REDIS_URL"])
    try:
        client.incr(f"{os.environ['KEY_PREFIX']}:test:done:{ctx.task_id}:{chunk}")
    finally:
        client.close()


def _leaf_chunks(ctx: TaskContext, chunks: int, chunk_seconds: float, fail_at: int) -> None:
    ctx.heartbeat(total=chunks, done=sum(1 for i in range(chunks) if i in ctx.checkpoint))
    for i in range(chunks):
        if i in ctx.checkpoint:
            continue
        if i == fail_at:
            raise RuntimeError(f"leaf failed at chunk {i}")
        ctx.sleep(chunk_seconds)
        _count_chunk(ctx, i)
        ctx.checkpoint.save(i, {"leaf": ctx.task_id, "chunk": i})
        ctx.heartbeat(done=i + 1)


@actor
def leaf(ctx: TaskContext, chunks: int = 4, chunk_seconds: float = 0.05, fail_at: int = -1) -> None:
    _leaf_chunks(ctx, chunks, chunk_seconds, fail_at)


@actor(auto_resume=3)
def sturdy_leaf(ctx: TaskContext, chunks: int = 4, chunk_seconds: float = 0.05) -> None:
    _leaf_chunks(ctx, chunks, chunk_seconds, -1)


def _merge(ctx: TaskContext, **_: object) -> None:
    """The root's step once its children ended: one result holding how many they saved."""
    saved = sum(len(ctx.child_results(c["id"])) for c in ctx.children())
    ctx.checkpoint.save(1_000_000, {"merged": saved})


def _spawn_leaves(ctx: TaskContext, children: int, chunks: int, chunk_seconds: float,
                  fail_child: int, leaf_actor: str, queue: str | None, pace: float) -> None:
    ctx.heartbeat(total=children)
    for i in range(children):
        if i in ctx.checkpoint:
            continue
        if pace:
            ctx.sleep(pace)
        ctx.spawn(leaf_actor, chunk=i, queue=queue, chunks=chunks, chunk_seconds=chunk_seconds,
                  **({"fail_at": 0} if i == fail_child else {}))
        ctx.heartbeat(done=i + 1)


@actor(on_children_done=_merge)
def tree_root(ctx: TaskContext, children: int = 10, chunks: int = 4, chunk_seconds: float = 0.05,
              fail_child: int = -1, leaf_actor: str = "leaf", queue: str | None = None,
              pace: float = 0.0) -> None:
    _spawn_leaves(ctx, children, chunks, chunk_seconds, fail_child, leaf_actor, queue, pace)


@actor(fail_fast=True)
def strict_root(ctx: TaskContext, children: int = 10, chunks: int = 4,
                chunk_seconds: float = 0.05, fail_child: int = -1) -> None:
    _spawn_leaves(ctx, children, chunks, chunk_seconds, fail_child, "leaf", None, 0.0)
