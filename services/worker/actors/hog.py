"""`hog`: a job whose memory grows chunk by chunk, to rehearse the resource guard.

Each chunk holds `chunk_mb` more MiB (written, so the pages are resident) and saves a
small result. Past the actor's memory limit (RSS of its pool process) the guard cancels
it with reason `memory_limit`: cooperatively it stops at its next chunk with every
finished chunk saved; with `cooperative=false` it never looks at its token and the
ladder kills it after the grace period, losing only the chunk in flight.
"""

from __future__ import annotations

import time
from typing import Annotated

from services.worker.actor import actor
from services.worker.context import TaskContext
from shared.params import Range

MIB = 1 << 20


@actor(queue="default", memory_limit="384MiB")
def hog(
    ctx: TaskContext,
    chunks: Annotated[int, Range(min=1, max=10_000)] = 100,
    chunk_mb: Annotated[int, Range(min=1, max=1024)] = 16,
    chunk_seconds: Annotated[float, Range(min=0, max=3600)] = 0.1,
    cooperative: bool = True,
) -> dict[str, int]:
    held: list[bytes] = []
    done = sum(1 for i in range(chunks) if i in ctx.checkpoint)
    ctx.skipped(done)
    ctx.heartbeat(done=done, total=chunks)
    for index in range(chunks):
        if index in ctx.checkpoint:
            continue
        if cooperative:
            ctx.token.raise_if_cancelled()
        ctx.heartbeat(current=index + 1)
        held.append(b"\x01" * (chunk_mb * MIB))
        if cooperative:
            ctx.sleep(chunk_seconds)
        else:
            time.sleep(chunk_seconds)
        ctx.checkpoint.save(index, {"held_mib": len(held) * chunk_mb})
        done += 1
        ctx.heartbeat(done=done)
    return {"done": done, "held_mib": len(held) * chunk_mb}
