"""Runs the plain Celery app's worker as a child process and holds a client app for it."""

from __future__ import annotations

import os
import socket
import time
import uuid
from pathlib import Path

from celery import Celery

from bench.plain_celery import Marks, create_app
from bench.procs import ROOT, Child


class PlainWorker:
    def __init__(self, redis_url: str, out_dir: Path, concurrency: int = 2) -> None:
        tag = uuid.uuid4().hex[:10]
        self.prefix = f"bench-plain-{tag}"
        self.queue = "plain"
        self.concurrency = concurrency
        self.node = f"plain{tag}@{socket.gethostname()}"
        self.app: Celery
        self.marks: Marks
        self.app, self.marks = create_app(redis_url, self.prefix, self.queue)
        env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1",
               "REDIS_URL": redis_url, "BENCH_PREFIX": self.prefix, "BENCH_QUEUE": self.queue,
               "WORKER_CONCURRENCY": str(concurrency)}
        self.child = Child("plain-celery", "bench.plain_celery", ["-n", self.node], env,
                           out_dir / "plain-celery.out")

    def start(self, timeout: float = 60.0) -> PlainWorker:
        self.child.start()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.child.check()
            if self.app.control.ping(destination=[self.node], timeout=0.5) \
                    and self.pool_size() >= self.concurrency:
                return self
        raise TimeoutError(f"plain Celery worker not ready after {timeout}s")

    def pool_size(self) -> int:
        return len(self.child.live_children())

    def wait_pool_full(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while self.pool_size() < self.concurrency:
            self.child.check()
            if time.monotonic() > deadline:
                raise TimeoutError("plain Celery pool did not refill")
            time.sleep(0.02)

    def stop(self) -> None:
        self.child.stop()
        self.app.close()
