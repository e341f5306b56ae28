"""The plain Celery app of the job-tree bench (bench/trees_celery.py): tree members that sleep
in small steps for a long time, and a chord callback, on a prefork worker with late
acknowledgement and Redis as broker and result backend.

`python -m bench.trees_celery_app [celery worker options]` runs its worker. It reads
REDIS_URL, BENCH_PREFIX (namespaces its queues, results and marks), BENCH_QUEUE and
WORKER_CONCURRENCY from the environment.

Marks in Redis, one hash per kind so that a reader counts them in one command: `started`
(member id -> "pid epoch"), `running` (the same, removed when the member ends by itself),
`completed` (member id -> epoch) and `callback` (callback id -> "pid epoch"). A member
killed by a revoke stays in `running` with a pid that is gone.
"""

from __future__ import annotations

import os
import sys
import time

from celery import Celery, Task

from bench.plain_celery import Marks, serve

MEMBER = "bench.tree_member"
CALLBACK = "bench.tree_callback"


class TreeMarks(Marks):
    def key(self, kind: str) -> str:
        return f"{self.prefix}:tree:{kind}"

    def member_started(self, task_id: str) -> None:
        value = f"{os.getpid()} {time.time()!r}"
        with self.client.pipeline(transaction=False) as pipe:
            pipe.hset(self.key("started"), task_id, value)
            pipe.hset(self.key("running"), task_id, value)
            pipe.execute()

    def member_completed(self, task_id: str) -> None:
        with self.client.pipeline(transaction=False) as pipe:
            pipe.hset(self.key("completed"), task_id, repr(time.time()))
            pipe.hdel(self.key("running"), task_id)
            pipe.execute()

    def callback_ran(self, task_id: str) -> None:
        self.client.hset(self.key("callback"), task_id, f"{os.getpid()} {time.time()!r}")

    def _entries(self, kind: str) -> dict[str, tuple[int, float]]:
        out: dict[str, tuple[int, float]] = {}
        for field, raw in self.client.hgetall(self.key(kind)).items():
            pid, at = _text(raw).split()
            out[_text(field)] = (int(pid), float(at))
        return out

    def starts(self) -> dict[str, tuple[int, float]]:
        return self._entries("started")

    def running(self) -> dict[str, tuple[int, float]]:
        """Members that have not ended by themselves: running, or killed (their pid gone)."""
        return self._entries("running")

    def callbacks(self) -> dict[str, tuple[int, float]]:
        return self._entries("callback")

    def count(self, kind: str) -> int:
        return int(self.client.hlen(self.key(kind)))


def _text(raw: bytes | str) -> str:
    return raw.decode() if isinstance(raw, bytes) else raw


def create_app(redis_url: str, prefix: str, queue: str) -> tuple[Celery, TreeMarks]:
    options = {"global_keyprefix": f"{prefix}:"}
    app = Celery("bench-trees", set_as_current=False)
    app.conf.update(
        broker_url=redis_url, result_backend=redis_url,
        broker_transport_options=options, result_backend_transport_options=options,
        broker_connection_retry_on_startup=True, task_default_queue=queue,
        task_acks_late=True, worker_prefetch_multiplier=1, worker_hijack_root_logger=False,
        task_serializer="json", result_serializer="json", accept_content=["json"])
    marks = TreeMarks(redis_url, prefix)

    @app.task(name=MEMBER, bind=True, shared=False)
    def tree_member(self: Task, seconds: float, step: float) -> None:
        marks.member_started(self.request.id)
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            time.sleep(step)  # stands in for a step of the member's work
        marks.member_completed(self.request.id)

    @app.task(name=CALLBACK, bind=True, shared=False)
    def tree_callback(self: Task, results: list[object]) -> int:
        marks.callback_ran(self.request.id)
        return len(results)

    return app, marks


def main(argv: list[str]) -> None:
    queue = os.environ["BENCH_QUEUE"]
    app, _ = create_app(os.environ["REDIS_URL"], os.environ["BENCH_PREFIX"], queue)
    serve(app, queue, argv)


if __name__ == "__main__":
    main(sys.argv[1:])
