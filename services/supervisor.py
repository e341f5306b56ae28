"""The supervisor of `make run`: the API, the reaper and a worker, with prefixed output.

Each service runs in a process group of its own (honcho's Process, started by `exec`, so
the group is the service's), its output multiplexed onto the terminal.

Stopping (Ctrl-C, SIGTERM): the API and the reaper get SIGTERM at once; the worker's main
process alone gets SIGTERM and drains (services/worker/shutdown.py), so its tasks go back
to the queue from their checkpoints and the next `make run` goes on with them. A signal to
its whole group would end the pool processes before they could save anything. A second
Ctrl-C hurries the drain (what still runs is killed and re-queued now), a third kills
everything. Whatever outlives its bound (the worker: DRAIN_GRACE and a margin) is killed.

A service that ends on its own: a worker that was killed or crashed (`taskctl force-kill`,
the OOM killer) is started again, saying so, up to RESTARTS times within RESTART_WINDOW;
past that, or when the API or the reaper ends, everything stops with a non-zero status, as
nothing is left to serve. A worker that exits 0 was drained on request (an operator's
`taskctl drain`, before maintenance) and stays stopped; the API and the reaper go on.
"""

from __future__ import annotations

import collections
import datetime
import multiprocessing
import os
import queue
import signal
import time
from dataclasses import dataclass, field
from types import FrameType
from typing import Any

import structlog
from honcho.colour import get_colours
from honcho.printer import Message, Printer
from honcho.process import Process

log = structlog.get_logger("run")

WORKER = "worker"
RESTARTS = 5
RESTART_WINDOW = 60.0
# How long the API and the reaper get to stop before they are killed.
STOP_WAIT = 5.0
# Beyond DRAIN_GRACE: the worker's own Celery shutdown, on a loaded machine.
DRAIN_MARGIN = 10.0
_EXIT_STATUS: dict[int, int] = {signal.SIGINT: 130, signal.SIGTERM: 143}


@dataclass
class Child:
    process: Process
    runner: Any = None  # the multiprocessing.Process that reads its output
    pid: int | None = None
    returncode: int | None = None
    kill_at: float | None = None
    restarts: collections.deque[float] = field(default_factory=collections.deque)

    @property
    def running(self) -> bool:
        return self.pid is not None and self.returncode is None


def describe_exit(rc: int) -> str:
    if rc < 0:
        try:
            return f"killed by {signal.Signals(-rc).name}"
        except ValueError:
            return f"killed by signal {-rc}"
    return f"exit status {rc}"


class Supervisor:
    def __init__(self, printer: Printer, drain_grace: float) -> None:
        self.events: multiprocessing.Queue[Message] = multiprocessing.Queue()
        self.printer = printer
        self.drain_grace = drain_grace
        self.children: dict[str, Child] = {}
        self.returncode: int | None = None
        self._colours = get_colours()
        self._signals: list[int] = []
        self._stops = 0  # stop requests acted on: 1 drains, 2 hurries, 3 kills

    def add_process(self, name: str, cmd: str, env: dict[str, str]) -> None:
        self.children[name] = Child(Process(cmd, name=name, colour=next(self._colours),
                                            env=env))
        self.printer.width = max(self.printer.width, len(name), len("system"))

    # -- the loop ---------------------------------------------------------------------------

    def loop(self) -> int:
        signal.signal(signal.SIGINT, self._on_signal)
        signal.signal(signal.SIGTERM, self._on_signal)
        for name in self.children:
            self._start(name)
        while self._busy():
            try:
                self._handle(self.events.get(timeout=0.1))
            except queue.Empty:
                pass
            while self._signals:
                self._stop(self._signals.pop(0))
            self._enforce_bounds()
        self._flush()
        return self.returncode if self.returncode is not None else 1

    def _flush(self) -> None:
        """The lines still queued (the last ones of the services, the supervisor's own)."""
        while True:
            try:
                msg = self.events.get(timeout=0.05)
            except queue.Empty:
                return
            if msg.type == "line":
                self.printer.write(msg)

    def _busy(self) -> bool:
        return any(c.returncode is None and c.runner is not None for c in self.children.values())

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        self._signals.append(signum)  # acted on by the loop, not inside the handler

    def _start(self, name: str) -> None:
        child = self.children[name]
        child.pid, child.returncode, child.kill_at = None, None, None
        child.runner = multiprocessing.Process(name=name, target=child.process.run,
                                               args=(self.events, True))
        child.runner.start()

    def _handle(self, msg: Message) -> None:
        if msg.type == "line":
            self.printer.write(msg)
            return
        child = self.children[msg.name]
        if msg.type == "start":
            child.pid = msg.data["pid"]
            self.say(f"{msg.name} started (pid={child.pid})")
            if self._stops:  # started again just as everything stops
                self._stop_child(msg.name, child)
        elif msg.type == "stop":
            child.returncode = rc = msg.data["returncode"]
            child.runner.join(1.0)
            self.say(f"{msg.name} stopped ({describe_exit(rc)})")
            if not self._stops:
                self._exited_on_its_own(msg.name, rc)

    def _exited_on_its_own(self, name: str, rc: int) -> None:
        if name != WORKER:
            self._give_up(rc or 1)
        elif rc == 0:
            self.say("worker drained and stopped on request; it is not restarted "
                     "(`make worker` starts one)")
            log.info("run.worker_drained")
            if not any(c.running for c in self.children.values()):
                self.returncode = 0
        elif self._may_restart(self.children[name]):
            n = len(self.children[name].restarts)
            self.say(f"worker {describe_exit(rc)}: starting it again ({n} of at most "
                     f"{RESTARTS} within {RESTART_WINDOW:.0f}s)")
            log.warning("run.worker_restarted", rc=rc, restarts=n)
            self._start(name)
        else:
            self.say(f"worker {describe_exit(rc)} {RESTARTS} times within "
                     f"{RESTART_WINDOW:.0f}s: stopping everything")
            log.error("run.worker_restarts_exhausted", rc=rc)
            self._give_up(1)

    def _may_restart(self, child: Child) -> bool:
        now = time.monotonic()
        while child.restarts and now - child.restarts[0] > RESTART_WINDOW:
            child.restarts.popleft()
        if len(child.restarts) >= RESTARTS:
            return False
        child.restarts.append(now)
        return True

    def _give_up(self, rc: int) -> None:
        self.returncode = rc
        self._stop(None)

    # -- stopping ---------------------------------------------------------------------------

    def _stop(self, signum: int | None) -> None:
        if signum is not None:
            self.say(f"{signal.Signals(signum).name} received")
            if self.returncode is None:
                self.returncode = _EXIT_STATUS.get(signum, 1)
        self._stops += 1
        worker = self.children.get(WORKER)
        if self._stops == 2 and worker is not None and worker.running:
            self.say("hurrying the worker's drain: what still runs is killed and re-queued")
        for name, child in self.children.items():
            if child.running:
                self._stop_child(name, child)

    def _stop_child(self, name: str, child: Child) -> None:
        if self._stops >= 3:
            self._signal(name, child, signal.SIGKILL, group=True)
        elif name == WORKER:
            # The main process alone: its pool processes must live to save their work.
            self._signal(name, child, signal.SIGTERM, group=False)
            if child.kill_at is None:
                child.kill_at = time.monotonic() + self.drain_grace + DRAIN_MARGIN
                self.say(f"worker draining: its tasks go back to the queue (up to "
                         f"{self.drain_grace:.0f}s; Ctrl-C again to hurry it)")
        elif child.kill_at is None:
            self._signal(name, child, signal.SIGTERM, group=True)
            child.kill_at = time.monotonic() + STOP_WAIT

    def _enforce_bounds(self) -> None:
        now = time.monotonic()
        for name, child in self.children.items():
            if child.running and child.kill_at is not None and now > child.kill_at:
                self._signal(name, child, signal.SIGKILL, group=True)
                child.kill_at = now + STOP_WAIT

    def _signal(self, name: str, child: Child, sig: signal.Signals, *, group: bool) -> None:
        assert child.pid is not None
        self.say(f"sending {sig.name} to {name} (pid {child.pid}"
                 f"{', its process group' if group else ''})")
        try:
            if group:
                os.killpg(child.pid, sig)
            else:
                os.kill(child.pid, sig)
        except (ProcessLookupError, PermissionError):
            pass

    def say(self, text: str) -> None:
        """A line of the supervisor's own, through the same queue as every other line."""
        self.events.put(Message(type="line", data=text + "\n", time=datetime.datetime.now(),
                                name="system", colour=None))
