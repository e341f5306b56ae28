"""Remote control command the reaper uses to kill a stuck execution on its own host.

Runs in the worker's main process, which is never blocked by a pool child holding
its GIL. Kill safety (invariant 6): the signal goes only to a pool child of this
worker that is verifiably executing that exact message, with the expected pid and
process start time. Anything else is refused and reported.
"""

from __future__ import annotations

import os
import signal
from typing import Any

import psutil
import structlog
from celery.worker import state as worker_state
from celery.worker.control import control_command

from shared.processes import REUSED, ProcessIdentity

log = structlog.get_logger("worker.control")


def find_request(message_id: str, task_id: str | None) -> Any | None:
    for req in list(worker_state.active_requests):
        if req.id != message_id:
            continue
        if task_id is not None and (req.kwargs or {}).get("task_id") != task_id:
            continue
        return req
    return None


def verify_target(message_id: str, task_id: str | None, pid: int | None,
                  pid_started: float | None) -> tuple[psutil.Process | None, str]:
    req = find_request(message_id, task_id)
    if req is None:
        return None, "not executing here"
    worker_pid = req.worker_pid
    if not worker_pid:
        return None, "accepted by no pool process yet"
    if pid is not None and worker_pid != pid:
        return None, f"executing in pid {worker_pid}, not {pid}"
    try:
        proc = psutil.Process(worker_pid)
        if proc.ppid() != os.getpid():
            return None, f"pid {worker_pid} is not a pool process of this worker"
        # Without an announced start time, the pool process found by pid right now is meant.
        identity = (ProcessIdentity.of(proc) if pid_started is None
                    else ProcessIdentity(pid=worker_pid, started=pid_started))
    except psutil.NoSuchProcess:
        return None, "process already gone"
    live, state = identity.check()
    if live is None:
        return None, (f"pid {worker_pid} was reused by another process" if state == REUSED
                      else "process already gone")
    return live, "verified"


@control_command(
    args=[("message_id", str), ("task_id", str), ("pid", int), ("pid_started", float)],
    signature="<message_id> [task_id] [pid] [pid_started]",
)
def taskreaper_kill(state: Any, message_id: str, task_id: str | None = None,
                    pid: int | None = None, pid_started: float | None = None) -> dict[str, Any]:
    """SIGKILL the pool process running `message_id`, after verifying it is that process."""
    proc, why = verify_target(message_id, task_id, pid, pid_started)
    if proc is None:
        log.info("worker.kill_refused", message_id=message_id, task_id=task_id, why=why)
        return {"ok": True, "killed": False, "why": why}
    try:
        proc.send_signal(signal.SIGKILL)  # psutil re-checks pid and start time first
    except psutil.NoSuchProcess:
        return {"ok": True, "killed": False, "why": "process already gone"}
    log.warning("worker.killed", message_id=message_id, task_id=task_id, pid=proc.pid)
    return {"ok": True, "killed": True, "pid": proc.pid}
