"""`distill`: the long job of the original guide, done cooperatively.

Splits a document (or generates `chunks` paragraphs), spends `chunk_seconds` of
simulated model time per chunk, and saves each chunk's digest before starting the
next. A cancel stops it at once (the wait wakes); a resume skips saved chunks.
"""

from __future__ import annotations

from typing import Annotated

from services.worker.actor import actor
from services.worker.actors.text import digest, generated_chunk, split_document
from services.worker.context import TaskContext, chunk_timeout
from shared.params import Range
from shared.token import DeadlineExceeded


@actor(queue="default", max_retries=0, auto_resume=0)
def distill(
    ctx: TaskContext,
    text: Annotated[str | None, Range(min=1, max=5_000_000)] = None,
    chunks: Annotated[int | None, Range(min=1, max=1_000_000)] = None,
    chunk_seconds: Annotated[float, Range(min=0, max=3600)] = 0.5,
    chunk_size: Annotated[int, Range(min=20, max=100_000)] = 400,
    timeout_base: Annotated[float, Range(min=0.01, max=3600)] = 10.0,
    timeout_per_kchar: Annotated[float, Range(min=0, max=3600)] = 20.0,
) -> dict[str, int]:
    pieces = split_document(text, chunk_size) if text else None
    total = len(pieces) if pieces is not None else (chunks or 10)
    restored = sum(1 for i in range(total) if i in ctx.checkpoint)
    done, failed = restored, 0
    ctx.skipped(restored)
    ctx.heartbeat(done=done, failed=failed, total=total)
    for index in range(total):
        if index in ctx.checkpoint:
            continue
        ctx.token.raise_if_cancelled()
        ctx.heartbeat(current=index + 1)
        chunk = pieces[index] if pieces is not None else generated_chunk(index)
        budget = chunk_timeout(len(chunk), base=timeout_base, per_kchar=timeout_per_kchar)
        try:
            with ctx.budget(budget):
                ctx.sleep(chunk_seconds)  # stands in for the model call
            ctx.checkpoint.save(index, digest(chunk))
            done += 1
        except DeadlineExceeded as exc:
            ctx.checkpoint.save(index, {"error": "timeout", "budget_s": budget,
                                        "detail": str(exc)}, ok=False)
            failed += 1
        ctx.heartbeat(done=done, failed=failed)
    return {"done": done, "failed": failed, "total": total}
