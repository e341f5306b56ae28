"""The drain's last step: what still runs is killed, and every execution is handed back.

A task is handed back (preempted: `queued` under a fresh message) only once the pool process
that ran it is confirmed gone, or confirmed not to run it any more. Otherwise the old process
could go on beside the new attempt: the attempt fence refuses its writes, but the work is
done twice. An execution whose kill cannot be confirmed (no pool process has accepted it yet,
the pool's bookkeeping changed under us, the process outlived its SIGKILL's wait) keeps its
row; it is settled once its process ends (by its own end, or by the reaper), and the log
says why.

The kills run side by side, each on a thread of its own: each waits up to KILL_WAIT for its
process to go, and one after another they would eat the hand-backs' time. The hand-backs
get a bound that grows with their number, within DRAIN_GRACE; if it passes, or the
connection made ahead of time is missing, they are done again on a fresh connection, so
that no row is left `running` for the heartbeat timeout to call `lost`.
"""

from __future__ import annotations

import asyncio
import os
import signal
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import psutil
import redis.asyncio as aioredis
import structlog
from celery.worker import state as worker_state

from services.worker.control import find_request
from services.worker.handback import HandBack
from shared.broker import make_celery
from shared.db import Db
from shared.processes import ProcessIdentity
from shared.settings import Settings

log = structlog.get_logger("worker.drain")

KILL_WAIT = 0.5
# A hand-back's share of the time kept for them: a read, a preempt, a publish to the broker
# and an event.
PER_HAND_BACK = 0.25


def finish_need(count: int) -> float:
    """Seconds the kills (side by side) and `count` hand-backs are expected to take."""
    return KILL_WAIT + PER_HAND_BACK * count


def held_requests() -> dict[str, uuid.UUID]:
    """message id -> task id of every delivery this worker holds for its pool (running, or
    on its way to a pool process). Read from another thread than the one changing it."""
    requests = _reserved()
    out: dict[str, uuid.UUID] = {}
    for req in requests or ():
        try:
            out[req.id] = uuid.UUID(str((req.kwargs or {}).get("task_id")))
        except ValueError:
            continue
    return out


def _reserved() -> list[Any] | None:
    """Celery's held deliveries; None when they could not be read (changing under us)."""
    for _ in range(5):
        try:
            return list(worker_state.reserved_requests)
        except RuntimeError:
            continue
    return None


def _still_held(message_id: str) -> bool:
    """Unreadable counts as held: a kill is never confirmed on a guess."""
    requests = _reserved()
    return requests is None or any(r.id == message_id for r in requests)


def kill(message_id: str, task_id: uuid.UUID, node: str) -> bool:
    """SIGKILLs the pool process running `message_id` for `task_id`. True once that process
    is confirmed gone, or confirmed not to run the task any more; False when that cannot be
    told (the caller then must not hand the task back)."""
    tid = str(task_id)
    try:
        return _kill(message_id, tid, node)
    except RuntimeError:  # the pool's bookkeeping changed under us
        return _unconfirmed(node, tid, "pool bookkeeping changing")
    except Exception as exc:
        return _unconfirmed(node, tid, repr(exc))


def _kill(message_id: str, tid: str, node: str) -> bool:
    req = find_request(message_id, tid)
    if req is None:  # ended here, or not yet begun in a pool process
        return (not _still_held(message_id)
                or _unconfirmed(node, tid, "accepted by no pool process yet"))
    pid = req.worker_pid
    if not pid:
        return _unconfirmed(node, tid, "accepted by no pool process yet")
    try:
        proc = psutil.Process(pid)
        if proc.ppid() != os.getpid():  # our child with that pid ended; the pid is another's
            return True
        identity = ProcessIdentity.of(proc)
    except psutil.NoSuchProcess:
        return True
    # Right before the signal: still that process, still running that very request, so that
    # a pool process that took another job meanwhile is not killed with it.
    live = identity.verify()
    if live is None:
        return True
    again = find_request(message_id, tid)
    if again is None or again.worker_pid != pid:
        return (not _still_held(message_id)
                or _unconfirmed(node, tid, "moved on just before the kill"))
    try:
        live.send_signal(signal.SIGKILL)  # psutil checks pid and start time again first
    except psutil.NoSuchProcess:
        return True
    log.warning("worker.drain_killed", node=node, task_id=tid, pid=pid)
    if identity.wait_gone(KILL_WAIT):
        return True
    return _unconfirmed(node, tid, f"pid {pid} still there {KILL_WAIT}s after SIGKILL")


def _unconfirmed(node: str, tid: str, why: str) -> bool:
    log.warning("worker.drain_left", node=node, task_id=tid, why=why,
                note="not handed back: settled once its process ends")
    return False


def kill_each(targets: dict[str, uuid.UUID], node: str) -> dict[str, bool]:
    """`kill` of every message -> task in `targets`, side by side; message id -> confirmed."""
    if not targets:
        return {}
    with ThreadPoolExecutor(max_workers=min(32, len(targets)),
                            thread_name_prefix="taskreaper-drain-kill") as pool:
        done = {m: pool.submit(kill, m, t, node) for m, t in targets.items()}
        return {m: f.result() for m, f in done.items()}


async def connect_hand(settings: Settings, redis: aioredis.Redis, node: str) -> HandBack:
    db = await Db.connect(settings.database_url, min_size=1, max_size=1)
    return HandBack(settings, db, make_celery(settings), redis, node)


async def finish(settings: Settings, redis: aioredis.Redis, node: str,
                 hand: HandBack | None, seen: dict[str, uuid.UUID]) -> bool:
    """Kills what still runs and hands back each execution whose process is confirmed gone
    or done with it (those that died without recording their end included). Connects
    afresh when `hand` is None. True once every hand-back was tried."""
    if hand is None:
        hand = await connect_hand(settings, redis, node)
    try:
        still = held_requests()
        confirmed = await asyncio.to_thread(kill_each, still, node)
        for message_id, task_id in still.items():
            if confirmed.get(message_id):
                await _hand_back(hand, task_id, message_id, node)
        for message_id, task_id in seen.items():
            if message_id not in still:
                await _hand_back(hand, task_id, message_id, node)
        return True
    finally:
        hand.db.terminate()  # the process ends next: no graceful goodbyes to wait for


async def _hand_back(hand: HandBack, task_id: uuid.UUID, message_id: str, node: str) -> None:
    try:
        await hand.execution(task_id, message_id)
    except Exception as exc:  # the next one still gets its turn
        log.warning("worker.hand_back_failed", node=node, task_id=str(task_id),
                    error=repr(exc))
