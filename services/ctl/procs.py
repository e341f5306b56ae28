"""This host's worker processes, found only through what the workers wrote about themselves.

A worker's main process records node, host, pid and process start time in the
`workers` hash; each pool process records the same for its execution in the
registry. A process counts as ours only if its pid and start time both match such
a record, or if it descends from a main process that does. A look-alike (anything
whose command line merely mentions celery) is never touched (invariant 6).
"""

from __future__ import annotations

import json
import os
import signal
from dataclasses import dataclass, field
from typing import Any

import psutil
import redis.asyncio as aioredis

from shared.keys import Keys
from shared.processes import REUSED, ProcessIdentity, wait_gone
from shared.registry import LiveExecution, live_executions


@dataclass(frozen=True)
class WorkerEntry:
    node: str
    host: str
    pid: int
    pid_started: float
    concurrency: int | None = None
    started_at: float | None = None

    @classmethod
    def parse(cls, node: str, raw: str) -> WorkerEntry | None:
        try:
            info: dict[str, Any] = json.loads(raw)
            return cls(node=node, host=str(info.get("host", "")), pid=int(info["pid"]),
                       pid_started=float(info["pid_started"]),
                       concurrency=info.get("concurrency"), started_at=info.get("started_at"))
        except (ValueError, KeyError, TypeError):
            return None


@dataclass
class LocalProcess:
    proc: psutil.Process
    role: str  # main | pool | child | orphan
    node: str
    created: float

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def identity(self) -> ProcessIdentity:
        return ProcessIdentity(pid=self.pid, started=self.created)


@dataclass
class HostWorkers:
    host: str
    entries: list[WorkerEntry]
    # node -> alive | gone | pid reused | remote (another host's: not ours to check)
    states: dict[str, str]
    processes: list[LocalProcess] = field(default_factory=list)
    executions: list[LiveExecution] = field(default_factory=list)

    @property
    def pids(self) -> set[int]:
        return {p.pid for p in self.processes}

    def stale_nodes(self) -> list[str]:
        return [n for n, s in self.states.items() if s in ("gone", "pid reused")]


async def read_workers(redis: aioredis.Redis, keys: Keys) -> list[WorkerEntry]:
    raw = await redis.hgetall(keys.workers)
    entries = [WorkerEntry.parse(_text(k), _text(v)) for k, v in raw.items()]
    return sorted((e for e in entries if e is not None), key=lambda e: e.node)


async def read_executions(redis: aioredis.Redis, keys: Keys) -> list[LiveExecution]:
    return list((await live_executions(redis, keys, include_expired=True)).values())


def _text(value: str | bytes) -> str:
    return value.decode() if isinstance(value, bytes) else value


def verified(pid: int, started: float) -> tuple[psutil.Process | None, str]:
    """The process with this pid, if it is still the one that started at `started`;
    the state is alive, gone or pid reused."""
    return ProcessIdentity(pid=pid, started=started).check()


def _descendants(main: LocalProcess) -> list[LocalProcess]:
    out = []
    try:
        kids = main.proc.children(recursive=True)
    except psutil.NoSuchProcess:
        return []
    for kid in kids:
        try:
            role = "pool" if kid.ppid() == main.pid else "child"
            out.append(LocalProcess(proc=kid, role=role, node=main.node,
                                    created=kid.create_time()))
        except psutil.NoSuchProcess:
            continue
    return out


async def find_local(redis: aioredis.Redis, keys: Keys, host: str) -> HostWorkers:
    entries = await read_workers(redis, keys)
    executions = await read_executions(redis, keys)
    return locate(entries, executions, host)


def locate(entries: list[WorkerEntry], executions: list[LiveExecution], host: str
           ) -> HostWorkers:
    found = HostWorkers(host=host, entries=entries, states={},
                        executions=[e for e in executions if e.host == host])
    for entry in entries:
        if entry.host != host:
            found.states[entry.node] = "remote"
            continue
        proc, state = verified(entry.pid, entry.pid_started)
        found.states[entry.node] = state
        if proc is not None:
            main = LocalProcess(proc=proc, role="main", node=entry.node, created=entry.pid_started)
            found.processes.extend([main, *_descendants(main)])
    # A pool process whose main is unknown or dead still registered its execution.
    for ex in found.executions:
        if ex.pid in found.pids:
            continue
        proc, _ = verified(ex.pid, ex.pid_started)
        if proc is not None:
            orphan = LocalProcess(proc=proc, role="orphan", node=ex.node, created=ex.pid_started)
            found.processes.extend([orphan, *_descendants(orphan)])
    return found


# -- killing ----------------------------------------------------------------------------


@dataclass
class KillReport:
    killed: list[int] = field(default_factory=list)
    already_gone: list[int] = field(default_factory=list)
    refused: list[tuple[int, str]] = field(default_factory=list)
    survivors: list[int] = field(default_factory=list)


def _signal(p: LocalProcess, sig: signal.Signals, report: KillReport) -> bool:
    """Sends `sig` only if the pid still belongs to the process we identified."""
    if p.pid in this_pid_tree():
        report.refused.append((p.pid, "taskctl itself or its parent"))
        return False
    try:
        proc, state = p.identity.check()
        if proc is None:
            if state == REUSED:
                report.refused.append((p.pid, REUSED))
            else:
                report.already_gone.append(p.pid)
            return False
        proc.send_signal(sig)  # psutil re-checks the start time right before signalling
        return True
    except (psutil.NoSuchProcess, ProcessLookupError):
        report.already_gone.append(p.pid)
        return False
    except psutil.AccessDenied:
        report.refused.append((p.pid, "permission denied (run as the workers' user)"))
        return False


def kill_local(found: HostWorkers, *, timeout: float = 5.0) -> KillReport:
    """SIGKILL this host's worker processes: pool processes first, then their main.

    Each main is frozen (SIGSTOP) first, so it cannot fork a replacement for a pool
    process killed under it; its tree is then read again, which also catches a
    child forked after the first look."""
    report = KillReport()
    mains = [p for p in found.processes if p.role == "main"]
    frozen = [m for m in mains if _signal(m, signal.SIGSTOP, report)]
    tree: dict[int, LocalProcess] = {}
    for m in frozen:
        for kid in _descendants(m):
            tree[kid.pid] = kid
    for p in found.processes:
        if p.role != "main" and p.pid not in tree:
            tree[p.pid] = p
    # Deepest first: a pool process's own children, then pool processes, then mains.
    order = sorted(tree.values(), key=lambda p: p.role != "child")
    targets = [p for p in order if _signal(p, signal.SIGKILL, report)]
    targets += [m for m in frozen if _signal(m, signal.SIGKILL, report)]
    report.killed = [p.pid for p in targets]
    report.survivors = [p.pid for p in wait_gone([p.identity for p in targets], timeout)]
    return report


def snapshot(p: LocalProcess, now: float) -> dict[str, Any]:
    """Resource use of one process; cpu_percent is relative to the previous call."""
    try:
        with p.proc.oneshot():
            return {"pid": p.pid, "ppid": p.proc.ppid(), "role": p.role, "node": p.node,
                    "rss": p.proc.memory_info().rss,
                    "cpu_percent": p.proc.cpu_percent(None),
                    "uptime_s": round(now - p.created, 1), "status": p.proc.status(),
                    "threads": p.proc.num_threads()}
    except (psutil.NoSuchProcess, psutil.ZombieProcess):
        return {"pid": p.pid, "ppid": None, "role": p.role, "node": p.node, "rss": None,
                "cpu_percent": None, "uptime_s": None, "status": "gone", "threads": None}


def prime_cpu(processes: list[LocalProcess]) -> None:
    for p in processes:
        try:
            p.proc.cpu_percent(None)
        except (psutil.NoSuchProcess, psutil.ZombieProcess):
            continue


def this_pid_tree() -> set[int]:
    """taskctl itself and its ancestors: never a target, whatever the records say."""
    out = {os.getpid()}
    try:
        out.update(p.pid for p in psutil.Process().parents())
    except psutil.NoSuchProcess:
        pass
    return out
