"""A long chunked task on plain Celery, stopped the way Celery 5.5+ recommends for deploys.

`python -m bench.drain_celery [celery worker options]` runs its prefork worker with late
acknowledgement and the soft shutdown: REMAP_SIGTERM=SIGQUIT (set by whoever starts it)
makes SIGTERM a cold shutdown, which first waits `worker_soft_shutdown_timeout` (SOFT_TIMEOUT)
for the running tasks, then cancels them and leaves their messages to the broker, which
hands them to another worker. The task is written the way Celery's documentation writes one:
a loop over its chunks, no checkpoint, so a redelivery starts it from the first chunk.

It reads REDIS_URL, BENCH_PREFIX, BENCH_QUEUE, SOFT_TIMEOUT and WORKER_CONCURRENCY. Marks in
Redis, per task: each start (pid, epoch), how often each chunk was done, and the end.
"""

from __future__ import annotations

import os
import sys
import time

from celery import Celery, Task

from bench.plain_celery import Marks, serve


class ChunkMarks(Marks):
    """Starts, saved chunks and ends of the drain bench's tasks (a client per process, as
    plain_celery's marks keep)."""

    def key(self, kind: str, task_id: str) -> str:
        return f"{self.prefix}:{kind}:{task_id}"

    def started(self, task_id: str) -> None:
        self.client.rpush(self.key("started", task_id), f"{os.getpid()} {time.time()!r}")

    def chunk_done(self, task_id: str, chunk: int) -> None:
        self.client.hincrby(self.key("chunks", task_id), str(chunk), 1)

    def finished(self, task_id: str) -> None:
        self.client.set(self.key("finished", task_id), repr(time.time()))

    def starts(self, task_id: str) -> list[tuple[int, float]]:
        out = []
        for raw in self.client.lrange(self.key("started", task_id), 0, -1):
            pid, at = (raw.decode() if isinstance(raw, bytes) else raw).split()
            out.append((int(pid), float(at)))
        return out

    def chunk_counts(self, task_id: str) -> dict[int, int]:
        return {int(k): int(v) for k, v in self.client.hgetall(self.key("chunks", task_id)).items()}

    def is_finished(self, task_id: str) -> bool:
        return bool(self.client.exists(self.key("finished", task_id)))


def create_app(redis_url: str, prefix: str, queue: str, soft_timeout: float
               ) -> tuple[Celery, ChunkMarks]:
    options = {"global_keyprefix": f"{prefix}:"}
    app = Celery("bench-drain-plain", set_as_current=False)
    app.conf.update(
        broker_url=redis_url, broker_transport_options=options,
        broker_connection_retry_on_startup=True, task_default_queue=queue,
        task_acks_late=True, worker_prefetch_multiplier=1, task_ignore_result=True,
        worker_soft_shutdown_timeout=soft_timeout, worker_hijack_root_logger=False,
        task_serializer="json", accept_content=["json"])
    marks = ChunkMarks(redis_url, prefix)

    @app.task(name="bench.chunked", bind=True)
    def chunked(self: Task, chunks: int, chunk_seconds: float) -> None:
        marks.started(self.request.id)
        for index in range(chunks):
            time.sleep(chunk_seconds)  # stands in for the chunk's work
            marks.chunk_done(self.request.id, index)
        marks.finished(self.request.id)

    return app, marks


def main(argv: list[str]) -> None:
    queue = os.environ["BENCH_QUEUE"]
    app, _ = create_app(os.environ["REDIS_URL"], os.environ["BENCH_PREFIX"], queue,
                        float(os.environ["SOFT_TIMEOUT"]))
    serve(app, queue, argv)


if __name__ == "__main__":
    main(sys.argv[1:])
