"""Child processes the bench starts, and what it asks the OS about processes."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil

from shared import processes
from tests.support import ROOT


class Child:
    """`python -m <module> [args]` in a session of its own, output to a log file."""

    def __init__(self, name: str, module: str, args: list[str], env: dict[str, str],
                 log_path: Path) -> None:
        self.name = name
        self.module = module
        self.args = args
        self.env = env
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Child:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", self.module, *self.args], cwd=ROOT, env=self.env,
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                start_new_session=True)
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None, f"{self.name} was not started"
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def check(self) -> None:
        if self.proc is not None and self.proc.poll() is not None:
            raise RuntimeError(f"{self.name} exited with {self.proc.returncode}; "
                               f"see {self.log_path}")

    def children(self) -> list[psutil.Process]:
        try:
            return psutil.Process(self.pid).children()
        except psutil.NoSuchProcess:
            return []

    def live_children(self) -> list[psutil.Process]:
        """Children that still run: a killed pool process stays a zombie until reaped."""
        return [p for p in self.children() if not is_gone(p.pid)]

    def stop(self, timeout: float = 15.0) -> None:
        """SIGTERM to its process group (a prefork worker's pool included), then SIGKILL."""
        if self.proc is None or self.proc.poll() is not None:
            return
        tree = [psutil.Process(self.pid), *self.children()]
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            pass
        for p in tree:
            with contextlib.suppress(psutil.NoSuchProcess):
                p.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(10)
        psutil.wait_procs(tree, timeout=5)


def is_gone(pid: int) -> bool:
    """A zombie (exited, not yet reaped by its parent) counts as gone."""
    try:
        return processes.is_gone(psutil.Process(pid))
    except psutil.NoSuchProcess:
        return True


def wait_gone(pid: int, timeout: float, interval: float = 0.001) -> float | None:
    """Polls until the process is gone; returns time.perf_counter() right after the poll
    that saw it gone, or None after `timeout`."""
    try:
        proc = psutil.Process(pid)
    except psutil.NoSuchProcess:
        return time.perf_counter()
    if processes.wait_gone([proc], timeout, interval=interval):
        return None
    return time.perf_counter()


def rss_mib(pid: int) -> float | None:
    try:
        return psutil.Process(pid).memory_info().rss / 2**20
    except psutil.NoSuchProcess:
        return None
