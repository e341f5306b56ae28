"""Helpers for tests: real processes, polling, free ports, environment for subprocesses."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any, TypeVar

import asyncpg
import psutil

from shared.broker import make_celery
from shared.settings import Settings
from shared.submit import submit

ROOT = Path(__file__).resolve().parent.parent
T = TypeVar("T")
TERMINAL = ("succeeded", "failed", "cancelled", "lost")


def settings_env(settings: Settings) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in {f.upper() for f in asdict(settings)}}
    env.update({k.upper(): str(v) for k, v in asdict(settings).items()})
    env["PYTHONPATH"] = str(ROOT)
    env["PYTHONUNBUFFERED"] = "1"
    return env


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now (the kernel's choice)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class TimedOut(AssertionError):
    """A polled condition did not come true in time."""


class _Poll:
    def __init__(self, timeout: float, what: str) -> None:
        self.deadline = time.monotonic() + timeout
        self.timeout = timeout
        self.what = what

    def done(self, last: Any) -> bool:
        """True once `last` is truthy; raises once the time is up."""
        if last:
            return True
        if time.monotonic() > self.deadline:
            raise TimedOut(f"timed out after {self.timeout}s waiting for {self.what}; "
                           f"last={last!r}")
        return False


async def wait_for(check: Callable[[], Awaitable[T]], *, timeout: float, interval: float = 0.05,
                   what: str = "condition") -> T:
    """Polls an async check until it returns something truthy, and returns that."""
    poll = _Poll(timeout, what)
    while not poll.done(last := await check()):
        await asyncio.sleep(interval)
    return last


def eventually(check: Callable[[], T], *, timeout: float, interval: float = 0.05,
               what: str = "condition", ignore: tuple[type[Exception], ...] = ()) -> T:
    """Polls a blocking check until it returns something truthy, and returns that; the
    exceptions in `ignore` count as "not yet" (a page re-rendered under the reader)."""
    poll = _Poll(timeout, what)
    while not poll.done(last := _attempt(check, ignore)):
        time.sleep(interval)
    return last


def _attempt(check: Callable[[], T], ignore: tuple[type[Exception], ...]) -> T | None:
    try:
        return check()
    except ignore:
        return None


async def submit_task(settings: Settings, db: Any, actor: str, kwargs: dict[str, Any]) -> Any:
    """Submits one task as the API does, through a Celery app of its own; returns its row."""
    celery = make_celery(settings)
    try:
        return await submit(db, celery, actor=actor, kwargs=kwargs)
    finally:
        celery.close()


async def row_where(db: Any, task_id: Any, predicate: Callable[[Any], bool], timeout: float,
                    what: str) -> Any:
    """Polls a task's row until the predicate holds; a DB outage meanwhile is waited out."""
    async def check() -> Any:
        try:
            row = await db.get_task(task_id)
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError):
            return None
        return row if row is not None and predicate(row) else None

    return await wait_for(check, timeout=timeout, what=what, interval=0.02)


class WorkerProcess:
    """A real `python -m services.worker` (Celery prefork) process tree."""

    def __init__(self, settings: Settings, *, concurrency: int = 2, log_path: Path) -> None:
        self.settings = settings
        self.node = f"w{uuid.uuid4().hex[:8]}@{settings.hostname}"
        self.concurrency = concurrency
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> WorkerProcess:
        env = settings_env(self.settings)
        env["WORKER_CONCURRENCY"] = str(self.concurrency)
        self.log = open(self.log_path, "ab")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "services.worker", "-n", self.node],
            cwd=ROOT, env=env, stdout=self.log, stderr=subprocess.STDOUT,
            start_new_session=True)
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def children(self) -> list[psutil.Process]:
        try:
            return psutil.Process(self.pid).children()
        except psutil.NoSuchProcess:
            return []

    def wait_ready(self, timeout: float = 30.0) -> WorkerProcess:
        assert self.proc is not None
        wait_worker_ready(self.settings, self.node, self.proc, lambda: len(self.children()),
                          self.concurrency, log_path=self.log_path, timeout=timeout)
        return self

    def stop(self, timeout: float = 15.0) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        tree = [psutil.Process(self.pid), *self.children()]
        try:
            os.killpg(self.pid, signal.SIGTERM)
            self.proc.wait(timeout)
        except (subprocess.TimeoutExpired, ProcessLookupError):
            pass
        self.kill(tree)

    def kill(self, tree: list[psutil.Process] | None = None) -> None:
        """SIGKILL the whole tree, main process and pool children alike."""
        tree = tree if tree is not None else [psutil.Process(self.pid), *self.children()]
        for p in tree:
            try:
                p.kill()
            except psutil.NoSuchProcess:
                pass
        if self.proc is not None:
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                pass
        psutil.wait_procs(tree, timeout=5)


def wait_worker_ready(settings: Settings, node: str, proc: subprocess.Popen[bytes],
                      pool_size: Callable[[], int], concurrency: int, *, log_path: Path,
                      timeout: float) -> None:
    """Until the Celery node answers a ping and its pool has all its processes; an exit of
    the worker meanwhile fails at once."""
    app = make_celery(settings)

    def ready() -> bool:
        if proc.poll() is not None:
            raise AssertionError(f"worker {node} exited with {proc.returncode}; see {log_path}")
        try:
            replies = app.control.ping(destination=[node], timeout=0.5)
        except Exception:  # the broker is busy or restarting; ask again
            return False
        return bool(replies) and pool_size() >= concurrency

    try:
        eventually(ready, timeout=timeout, interval=0.05,
                   what=f"worker {node} ready (see {log_path})")
    finally:
        app.close()


class ServiceProcess:
    """A real `python -m <module>` daemon (the reaper, the API) in its own session."""

    def __init__(self, module: str, settings: Settings, *, log_path: Path) -> None:
        self.module = module
        self.settings = settings
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> ServiceProcess:
        self.log = open(self.log_path, "ab")  # noqa: SIM115
        self.proc = subprocess.Popen([sys.executable, "-m", self.module], cwd=ROOT,
                                     env=settings_env(self.settings), stdout=self.log,
                                     stderr=subprocess.STDOUT, start_new_session=True)
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def stop(self, timeout: float = 10.0) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()


def wait_gone(pid: int, timeout: float) -> bool:
    """True once the process has exited; a zombie awaiting its parent's reap counts as exited."""
    def exited() -> bool:
        try:
            return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
        except psutil.NoSuchProcess:
            return True

    try:
        return eventually(exited, timeout=timeout, interval=0.005, what=f"pid {pid} to exit")
    except TimedOut:
        return False


def require_debian_packages(missing: list[str], packages: str) -> None:
    """Tests that need a system package `.ci/run` installs: in CI its absence is a failure;
    on a developer's machine the test is skipped, saying what to install."""
    if not missing:
        return
    import pytest

    message = (f"{', '.join(missing)} not found: install Debian's {packages} "
               f"(apt-get install {packages})")
    if os.environ.get("CI"):
        pytest.fail(message, pytrace=False)
    pytest.skip(message)
