"""Several hosts on one machine, for tests of what must hold across hosts.

A simulated host is a PID and UTS namespace of its own (`unshare --uts --pid --fork
--mount-proc`): its own hostname and its own pid numbers, which collide with other
hosts' as they would on real machines, while network and files are shared. A small
init is its PID 1 (as `init: true` gives each container in docker-compose.yml), so a
worker's main process is never PID 1, which would ignore SIGKILL sent from inside.
Workers and taskctl commands run inside it through `nsenter`.

From outside, every process of a host is visible with its outer pid; `ns_pid` gives the
pid the host itself sees, which is what the workers record in Redis and the DB.

Needs root (namespaces) and util-linux's `unshare` and `nsenter`.
"""

from __future__ import annotations

import atexit
import ctypes
import os
import shutil
import signal
import subprocess
import sys
import uuid
from pathlib import Path
from typing import IO

import psutil

from shared.processes import is_gone, wait_gone
from shared.settings import Settings
from tests.support import ROOT, eventually, settings_env, wait_worker_ready

PR_SET_PDEATHSIG = 1

# PID 1 of a host: names the host, then reaps whatever ends up as its child (processes
# entered with nsenter are reparented to it when their nsenter parent goes).
_INIT = r"""
import os, socket, sys, time
socket.sethostname(sys.argv[1])
print("ready", flush=True)
while True:
    try:
        os.wait()
    except ChildProcessError:
        time.sleep(0.2)
"""


def _die_with_parent() -> None:
    """In the child before exec: SIGKILL it when the thread that started it ends, so a test
    run that is killed leaves no host behind (unshare's --kill-child then takes PID 1, and
    with it every process of the host)."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


def missing_tools() -> list[str]:
    return [t for t in ("unshare", "nsenter") if shutil.which(t) is None]


def unavailable() -> str | None:
    """Why simulated hosts cannot be made here, or None when they can."""
    if os.geteuid() != 0:
        return "simulated hosts need root (PID and UTS namespaces via unshare)"
    if missing_tools():
        return f"{', '.join(missing_tools())} not found (Debian's util-linux)"
    probe = subprocess.run(["unshare", "--uts", "--pid", "--fork", "--mount-proc", "true"],
                           capture_output=True, text=True, timeout=30)
    if probe.returncode != 0:
        return f"unshare cannot create namespaces here: {probe.stderr.strip()}"
    return None


def _pid_ns(pid: int) -> str | None:
    try:
        return os.readlink(f"/proc/{pid}/ns/pid")
    except OSError:
        return None


def ns_pid(proc: psutil.Process | int) -> int:
    """The pid a process has inside its own (innermost) PID namespace."""
    pid = proc if isinstance(proc, int) else proc.pid
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("NSpid:"):
                return int(line.split()[-1])
    raise LookupError(f"no NSpid for {pid}")


class HostWorker:
    """A `python -m services.worker` (Celery prefork) inside a simulated host."""

    def __init__(self, host: SimulatedHost, *, concurrency: int, queues: str, log_path: Path
                 ) -> None:
        self.host = host
        self.node = f"w-{uuid.uuid4().hex[:6]}@{host.name}"
        self.concurrency = concurrency
        self.queues = queues
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None
        self._main: psutil.Process | None = None
        self._log: IO[bytes] | None = None

    def start(self) -> HostWorker:
        env = settings_env(self.host.settings)
        env["WORKER_CONCURRENCY"] = str(self.concurrency)
        if self.queues:
            env["WORKER_QUEUES"] = self.queues
        self._log = open(self.log_path, "ab")  # noqa: SIM115
        self.proc = subprocess.Popen(
            self.host.command([sys.executable, "-m", "services.worker", "-n", self.node]),
            cwd=ROOT, env=env, stdout=self._log, stderr=subprocess.STDOUT,
            start_new_session=True)
        return self

    @property
    def main(self) -> psutil.Process:
        """The worker's main process (outer pid): nsenter's only child."""
        if self._main is None:
            assert self.proc is not None
            kids = psutil.Process(self.proc.pid).children()
            if not kids:
                raise LookupError(f"{self.node}: main process not started yet")
            self._main = kids[0]
        return self._main

    def pool(self) -> list[psutil.Process]:
        """The pool processes (outer pids), in the order of the pid the host sees."""
        try:
            kids = [p for p in self.main.children() if not is_gone(p)]
        except (psutil.NoSuchProcess, LookupError):
            return []
        numbered = []
        for p in kids:
            try:
                numbered.append((ns_pid(p), p))
            except (OSError, LookupError):  # it has just exited
                continue
        return [p for _, p in sorted(numbered, key=lambda pair: pair[0])]

    def processes(self) -> list[psutil.Process]:
        try:
            return [self.main, *self.main.children(recursive=True)]
        except (psutil.NoSuchProcess, LookupError):
            return []

    def alive(self) -> bool:
        try:
            return not is_gone(self.main)
        except LookupError:
            return self.proc is not None and self.proc.poll() is None

    def wait_ready(self, timeout: float = 60.0) -> HostWorker:
        assert self.proc is not None
        wait_worker_ready(self.host.settings, self.node, self.proc, lambda: len(self.pool()),
                          self.concurrency, log_path=self.log_path, timeout=timeout)
        return self

    def terminate(self) -> None:
        """Asks for a warm shutdown (SIGTERM to the main process); `stop` waits for it."""
        if self.alive():
            try:
                self.main.send_signal(signal.SIGTERM)
            except (psutil.NoSuchProcess, LookupError):
                pass

    def stop(self, timeout: float = 10.0) -> None:
        """A warm shutdown, then SIGKILL for whatever is left of it."""
        if self.proc is None:
            return
        self.resume_helper()
        tree = self.processes()
        self.terminate()
        wait_gone(tree[:1], timeout)
        for p in tree:
            try:
                p.kill()
            except psutil.NoSuchProcess:
                pass
        wait_gone(tree, 5)
        self.reap()

    def resume_helper(self) -> None:
        """nsenter stops itself whenever its child is stopped (as a shell does with a job), so
        after a SIGSTOP (force-kill freezes a main process before killing it) it would never
        collect the child's exit status, and the host's PID 1 could not finish exiting."""
        if self.proc is not None and self.proc.poll() is None:
            try:
                os.kill(self.proc.pid, signal.SIGCONT)
            except ProcessLookupError:
                pass

    def reap(self) -> None:
        if self.proc is not None:
            self.resume_helper()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        if self._log is not None:
            self._log.close()
            self._log = None


class SimulatedHost:
    """One host: a PID + UTS namespace with its own hostname and an init as PID 1."""

    def __init__(self, name: str, settings: Settings, log_dir: Path) -> None:
        self.name = name
        self.settings = settings
        self.log_dir = log_dir
        self.unshare: subprocess.Popen[str] | None = None
        self.init: psutil.Process | None = None
        self.workers: list[HostWorker] = []
        self._ns: str | None = None

    # -- the host itself ----------------------------------------------------------------------

    def start(self, timeout: float = 20.0) -> SimulatedHost:
        """Lives until `close`, or until the calling thread ends (start it from a thread
        that lasts, such as the main one)."""
        self.unshare = subprocess.Popen(
            ["unshare", "--uts", "--pid", "--fork", "--mount-proc", "--kill-child",
             sys.executable, "-c", _INIT, self.name],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
            preexec_fn=_die_with_parent)
        atexit.register(self.close)
        assert self.unshare.stdout is not None
        line = self.unshare.stdout.readline()  # the init prints once, then only reaps
        if line.strip() != "ready":
            rest = self.unshare.stdout.read() if self.unshare.poll() is not None else ""
            self.close()
            raise AssertionError(f"host {self.name} did not start: {line}{rest}")
        unshare = psutil.Process(self.unshare.pid)
        self.init = eventually(unshare.children, timeout=timeout, interval=0.01,
                               what=f"host {self.name}'s init process")[0]
        self._ns = _pid_ns(self.init.pid)
        assert ns_pid(self.init) == 1, "the host's init is not its PID 1"
        return self

    @property
    def running(self) -> bool:
        return self.init is not None and not is_gone(self.init)

    def command(self, argv: list[str]) -> list[str]:
        """`argv` as a command line that runs inside this host."""
        assert self.init is not None, f"host {self.name} is not started"
        return ["nsenter", "-t", str(self.init.pid), "--uts", "--pid", "--mount",
                f"--wd={ROOT}", "--", *argv]

    def processes(self) -> list[psutil.Process]:
        """Every process of this host (its whole PID namespace), with outer pids."""
        if self._ns is None:
            return []
        out = []
        for p in psutil.process_iter():
            if _pid_ns(p.pid) == self._ns and not is_gone(p):
                out.append(p)
        return out

    def outer(self, pid: int) -> psutil.Process:
        """The process this host calls `pid`."""
        for p in self.processes():
            try:
                if ns_pid(p) == pid:
                    return p
            except (OSError, LookupError):
                continue
        raise LookupError(f"host {self.name} has no pid {pid}")

    @property
    def worker(self) -> HostWorker:
        """The worker started last."""
        return self.workers[-1]

    # -- what runs inside -----------------------------------------------------------------------

    def start_worker(self, *, concurrency: int = 2, queues: str = "", wait: bool = True
                     ) -> HostWorker:
        w = HostWorker(self, concurrency=concurrency, queues=queues,
                       log_path=self.log_dir / f"worker-{self.name}-{len(self.workers)}.log")
        self.workers.append(w.start())
        return w.wait_ready() if wait else w

    def run(self, argv: list[str], *, timeout: float = 60.0, env: dict[str, str] | None = None
            ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(self.command(argv), cwd=ROOT,
                              env=env or settings_env(self.settings), capture_output=True,
                              text=True, timeout=timeout, stdin=subprocess.DEVNULL)

    def ctl(self, *args: str, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
        """`taskctl ARGS` run on this host."""
        return self.run([sys.executable, "-m", "services.ctl", *args], timeout=timeout)

    # -- ending it ------------------------------------------------------------------------------

    def kill_all(self, timeout: float = 10.0) -> list[int]:
        """SIGKILL every process of the host at once, init included (outer pids, from outside).

        Returns the outer pids signalled."""
        procs = self.processes()
        for p in procs:
            try:
                p.kill()
            except psutil.NoSuchProcess:
                pass
        for w in self.workers:
            w.resume_helper()
        wait_gone(procs, timeout)
        self._reap()
        return [p.pid for p in procs]

    def stop(self) -> None:
        """Workers shut down warmly first (all at once), then nothing of the host is left."""
        for w in self.workers:
            w.terminate()
        for w in self.workers:
            w.stop()
        self.close()

    def close(self) -> None:
        if self.unshare is not None:
            self.kill_all()

    def _reap(self) -> None:
        for w in self.workers:
            w.reap()
        if self.unshare is not None:
            try:
                self.unshare.wait(5)
            except subprocess.TimeoutExpired:
                self.unshare.kill()
                self.unshare.wait(5)
            if self.unshare.stdout is not None:
                self.unshare.stdout.close()
            self.unshare = None
            atexit.unregister(self.close)
