"""A plain Celery app, set up the way the Celery documentation shows, to compare against.

`python -m bench.plain_celery [celery worker options]` runs its prefork worker. It reads
REDIS_URL, BENCH_PREFIX (namespaces its queues, results and marks), BENCH_QUEUE and
WORKER_CONCURRENCY from the environment.

Its tasks leave marks in Redis: when they started (and in which process), and, for the
abortable one, when they saw the abort and left.
"""

from __future__ import annotations

import os
import sys
import time

import redis
from celery import Celery, Task
from celery.contrib.abortable import AbortableTask


class Marks:
    """Start and exit marks as Redis lists, one per task, so a reader can BLPOP them."""

    def __init__(self, redis_url: str, prefix: str) -> None:
        self.redis_url = redis_url
        self.prefix = prefix
        self._client: redis.Redis | None = None
        self._pid = 0

    @property
    def client(self) -> redis.Redis:
        if self._client is None or self._pid != os.getpid():  # a pool process after the fork
            self._client = redis.Redis.from_url(self.redis_url)
            self._pid = os.getpid()
        return self._client

    def _push(self, kind: str, task_id: str, value: str) -> None:
        key = f"{self.prefix}:{kind}:{task_id}"
        with self.client.pipeline(transaction=False) as pipe:
            pipe.rpush(key, value)
            pipe.expire(key, 3600)
            pipe.execute()

    def started(self, task_id: str) -> None:
        self._push("started", task_id, f"{os.getpid()} {time.time()!r}")

    def exited(self, task_id: str) -> None:
        self._push("exited", task_id, repr(time.time()))

    def _wait(self, kind: str, task_id: str, timeout: float) -> str:
        got = self.client.blpop([f"{self.prefix}:{kind}:{task_id}"], timeout=timeout)
        if got is None:
            raise TimeoutError(f"task {task_id} left no {kind} mark in {timeout}s")
        return got[1].decode()

    def wait_started(self, task_id: str, timeout: float = 30.0) -> int:
        """The pid of the pool process running the task."""
        return int(self._wait("started", task_id, timeout).split()[0])

    def wait_exited(self, task_id: str, timeout: float = 30.0) -> float:
        return float(self._wait("exited", task_id, timeout))


def create_app(redis_url: str, prefix: str, queue: str) -> tuple[Celery, Marks]:
    options = {"global_keyprefix": f"{prefix}:"}
    app = Celery("bench-plain", set_as_current=False)
    app.conf.update(
        broker_url=redis_url, result_backend=redis_url,
        broker_transport_options=options, result_backend_transport_options=options,
        broker_connection_retry_on_startup=True, task_default_queue=queue,
        worker_prefetch_multiplier=1, worker_hijack_root_logger=False,
        task_serializer="json", result_serializer="json", accept_content=["json"])
    marks = Marks(redis_url, prefix)

    @app.task(name="bench.sleep_loop", bind=True)
    def sleep_loop(self: Task, seconds: float) -> None:
        marks.started(self.request.id)
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            time.sleep(0.01)

    @app.task(name="bench.noop", acks_late=True)
    def noop() -> None:
        """The short task of the per-task cost section: all of its cost is Celery's."""

    @app.task(name="bench.abortable_loop", bind=True, base=AbortableTask)
    def abortable_loop(self: AbortableTask, seconds: float, interval: float) -> bool:
        marks.started(self.request.id)
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            if self.is_aborted():
                marks.exited(self.request.id)
                return True
            time.sleep(interval)
        return False

    return app, marks


def serve(app: Celery, queue: str, argv: list[str]) -> None:
    """Runs a bench app's prefork worker on `queue` (WORKER_CONCURRENCY pool processes), as
    every plain Celery comparison does."""
    app.worker_main(["worker", "-P", "prefork", "-c", os.environ.get("WORKER_CONCURRENCY", "2"),
                     "-Q", queue, "--without-gossip", "--without-mingle", "--without-heartbeat",
                     "--loglevel", "WARNING", *argv])


def main(argv: list[str]) -> None:
    queue = os.environ["BENCH_QUEUE"]
    app, _ = create_app(os.environ["REDIS_URL"], os.environ["BENCH_PREFIX"], queue)
    serve(app, queue, argv)


if __name__ == "__main__":
    main(sys.argv[1:])
