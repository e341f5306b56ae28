"""`distill`: the long job of the original guide, done cooperatively.

Splits a document (or generates `chunks` paragraphs), spends `chunk_seconds` of
simulated model time per chunk, and saves each chunk's digest before starting the
next. A cancel stops it at once (the wait wakes); a resume skips saved chunks. With
`batches=N` it becomes a job tree: N child distills, their digests merged at the end.
"""

from __future__ import annotations

from collections import Counter
from typing import Annotated, Any

from services.worker.actor import actor
from services.worker.actors.text import digest, generated_chunk, split_document
from services.worker.context import TaskContext, chunk_timeout
from shared.params import Range
from shared.token import DeadlineExceeded


def merge_batches(ctx: TaskContext, **_: object) -> None:
    """The parent's step once every batch ended: the batches' digests merged into one
    result, saved after the parent's own chunks (one per batch)."""
    terms: Counter[str] = Counter()
    chunks = failed = 0
    children = ctx.children()
    for child in children:
        for saved in ctx.child_results(child["id"]):
            if not saved["ok"]:
                failed += 1
                continue
            chunks += 1
            terms.update(saved["result"].get("top_terms") or [])
    summary = {"batches": len(children), "chunks": chunks, "failed_chunks": failed,
               "terms": [t for t, _ in terms.most_common(10)]}
    ctx.checkpoint.save(len(children), summary)
    ctx.log.info("distill.merged", batches=len(children), chunks=chunks)


def _spawn_batches(ctx: TaskContext, pieces: list[str] | None, total: int, batches: int,
                   options: dict[str, Any]) -> dict[str, int]:
    """Splits the work into `batches` children of about equal size, one per chunk of this
    task's own checkpoint (a resumed parent skips the batches it already made)."""
    n = min(batches, total)
    bounds = [total * i // n for i in range(n + 1)]
    made = sum(1 for i in range(n) if i in ctx.checkpoint)
    ctx.heartbeat(done=made, total=n)
    for i in range(n):
        if i in ctx.checkpoint:
            continue
        start, end = bounds[i], bounds[i + 1]
        part: dict[str, Any] = ({"text": " ".join(pieces[start:end])} if pieces is not None
                                else {"chunks": end - start, "first_chunk": start})
        ctx.spawn(distill, {**part, **options}, chunk=i)
        made += 1
        ctx.heartbeat(done=made)
    return {"done": made, "failed": 0, "total": n}


@actor(queue="default", max_retries=0, auto_resume=0, on_children_done=merge_batches)
def distill(
    ctx: TaskContext,
    text: Annotated[str | None, Range(min=1, max=5_000_000)] = None,
    chunks: Annotated[int | None, Range(min=1, max=1_000_000)] = None,
    chunk_seconds: Annotated[float, Range(min=0, max=3600)] = 0.5,
    chunk_size: Annotated[int, Range(min=20, max=100_000)] = 400,
    timeout_base: Annotated[float, Range(min=0.01, max=3600)] = 10.0,
    timeout_per_kchar: Annotated[float, Range(min=0, max=3600)] = 20.0,
    batches: Annotated[int | None, Range(min=1, max=10_000)] = None,
    first_chunk: Annotated[int, Range(min=0, max=1_000_000)] = 0,
) -> dict[str, int]:
    """`batches=N` splits the document (or the generated chunks) into N child tasks and
    merges their digests once they ended: the guide's advice for big documents, as one
    job that cancels, pauses and resumes as a whole."""
    pieces = split_document(text, chunk_size) if text else None
    total = len(pieces) if pieces is not None else (chunks or 10)
    if batches is not None and batches > 1:
        return _spawn_batches(ctx, pieces, total, batches, {
            "chunk_seconds": chunk_seconds, "chunk_size": chunk_size,
            "timeout_base": timeout_base, "timeout_per_kchar": timeout_per_kchar})
    restored = sum(1 for i in range(total) if i in ctx.checkpoint)
    done, failed = restored, 0
    ctx.skipped(restored)
    ctx.heartbeat(done=done, failed=failed, total=total)
    for index in range(total):
        if index in ctx.checkpoint:
            continue
        ctx.token.raise_if_cancelled()
        ctx.heartbeat(current=index + 1)
        chunk = pieces[index] if pieces is not None else generated_chunk(first_chunk + index)
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
