"""Helpers for tests: real processes, polling, environment for subprocesses."""

from __future__ import annotations

import asyncio
import os
import signal
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

ROOT = Path(__file__).resolve().parent.parent
T = TypeVar("T")
TERMINAL = ("succeeded", "failed", "cancelled", "lost")


def settings_env(settings: Settings) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in {f.upper() for f in asdict(settings)}}
    env.update({k.upper(): str(v) for k, v in asdict(settings).items()})
    env["PYTHONPATH"] = str(ROOT)
    env["PYTHONUNBUFFERED"] = "1"
    return env


async def wait_for(check: Callable[[], Awaitable[T]], *, timeout: float, interval: float = 0.05,
                   what: str = "condition") -> T:
    """Polls an async check until it returns something truthy."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while True:
        last = await check()
        if last:
            return last
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}; last={last!r}")
        await asyncio.sleep(interval)


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
        app = make_celery(self.settings)
        deadline = time.monotonic() + timeout
        try:
            while time.monotonic() < deadline:
                assert self.proc is not None
                if self.proc.poll() is not None:
                    raise AssertionError(f"worker exited with {self.proc.returncode}; see {self.log_path}")
                try:
                    replies = app.control.ping(destination=[self.node], timeout=0.5)
                except Exception:  # the broker is restarting; ask again
                    time.sleep(0.2)
                    continue
                if replies and len(self.children()) >= self.concurrency:
                    return self
            raise AssertionError(f"worker {self.node} not ready after {timeout}s")
        finally:
            app.close()

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
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
                return True
        except psutil.NoSuchProcess:
            return True
        time.sleep(0.005)
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
