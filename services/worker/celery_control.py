"""Celery's own remote control, honoured: a `revoke` of one of our messages is our cancel.

Operators reach workers with Celery's tools: `app.control.revoke(id)`, `celery control
revoke --terminate`, Flower's revoke and terminate buttons. The id they pass is the Celery
message id, our row's `message_id`. Left to itself, Celery only remembers the id (a
running task goes on) or, with `terminate`, signals whichever pool process it believes
runs the message, unverified, and the row stays `running` until the heartbeat timeout
calls it `lost`, with no audit.

So the worker's `revoke` and `revoke_by_stamped_headers` commands are replaced by ones
that keep Celery's bookkeeping (its revoked set drops a queued message when it arrives)
but never let Celery signal a pool process that runs one of our messages. Each of our
messages is cancelled through the Canceller instead, audited as `celery-control`: a plain
revoke as a cancel, `terminate` (whatever the signal) as a forced cancel, whose deadline
the guardian (or, without one, the reaper) enforces with a verified kill. Every worker
gets the broadcast and each tries; the cancel is one locked statement that changes and
audits a row once, and the others' tries change nothing.
"""

from __future__ import annotations

import asyncio
import os
import threading
import uuid
from collections.abc import Iterable
from typing import Any

import structlog
from billiard.common import TERM_SIGNAME
from celery import Celery
from celery.platforms import signals
from celery.signals import task_revoked, worker_ready
from celery.utils.functional import maybe_list
from celery.worker import state as worker_state
from celery.worker.control import control_command, ok
from celery.worker.control import revoke as celery_revoke
from celery.worker.control import revoke_by_stamped_headers as celery_revoke_by_stamped_headers

from services.worker.db_connection import UNREACHABLE, OneConnection
from services.worker.loop_thread import LoopThread
from shared.broker import SETTLED_REVOKE
from shared.cancellation import Canceller
from shared.errors import CancelConflict, TaskNotFound
from shared.keys import Keys
from shared.redis_client import connect
from shared.settings import Settings

log = structlog.get_logger("worker.celery_control")

BY = "celery-control"
# A DB out of reach when a revoke arrives: Celery drops a revoked queued message as it
# arrives, so giving up early would leave a row queued with no message. Tried this often,
# this far apart.
ATTEMPTS = 30
RETRY_AFTER = 1.0


def revoke_reason(terminate: bool, signal: str | int | None) -> str:
    if not terminate:
        return "celery revoke"
    return f"celery revoke --terminate ({signal or TERM_SIGNAME})"


class CeleryControl:
    """The worker main process's side of Celery's revoke: which messages are ours, and
    their cancel, on a loop of its own (Celery's consumer thread must not wait on I/O)."""

    def __init__(self, settings: Settings, celery: Celery, actors: Iterable[str]) -> None:
        self.settings = settings
        self.celery = celery
        self.actors = frozenset(actors)
        self.keys = Keys(settings.key_prefix)
        self.thread = LoopThread("taskreaper-celery-control")
        self.connection = OneConnection(settings.database_url)
        self._canceller: Canceller | None = None
        self._started = False
        self._lock = threading.Lock()
        # Made before the pool forks: only the main process, where Celery runs control
        # commands, ever acts on a revoke.
        self._pid = os.getpid()

    def start(self) -> None:
        with self._lock:
            if self._started:
                return
            self.thread.start()
            self._started = True
        self.thread.loop.call_soon_threadsafe(lambda: self.thread.spawn(self._connect()))

    async def _connect(self) -> None:
        """Ahead of the first revoke, which then needs no new connection."""
        try:
            await (await self.canceller()).db.ping()
        except Exception as exc:  # the first revoke tries again
            log.warning("worker.celery_control_connect_failed", error=str(exc))

    def ours(self, task_name: str | None) -> bool:
        return task_name in self.actors

    def held_here(self, message_ids: Iterable[str]) -> set[str]:
        """Those of our messages this worker holds (reserved or executing): the ones Celery
        itself would signal on `terminate`."""
        held = set()
        for message_id in message_ids:
            request = worker_state.requests.get(message_id)
            if request is not None and self.ours(request.name):
                held.add(message_id)
        return held

    def cancel(self, message_ids: Iterable[str], *, forced: bool, reason: str) -> None:
        """Called on Celery's consumer thread: hands the cancel to our loop, returns at once."""
        ids = sorted({str(m) for m in message_ids})
        if not ids or os.getpid() != self._pid:
            return
        self.start()
        self.thread.loop.call_soon_threadsafe(
            lambda: self.thread.spawn(self._cancel(ids, forced, reason)))

    async def _cancel(self, message_ids: list[str], forced: bool, reason: str) -> None:
        ids = [u for u in map(_as_uuid, message_ids) if u is not None]
        if not ids:
            return
        for attempt in range(1, ATTEMPTS + 1):
            try:
                await self._cancel_once(ids, forced, reason)
                return
            except UNREACHABLE as exc:
                log.warning("worker.celery_revoke_retry", message_ids=message_ids,
                            attempt=attempt, error=str(exc))
                await asyncio.sleep(RETRY_AFTER)
            except Exception as exc:
                log.warning("worker.celery_revoke_failed", message_ids=message_ids,
                            error=str(exc))
                return
        log.error("worker.celery_revoke_gave_up", message_ids=message_ids, attempts=ATTEMPTS)

    async def _cancel_once(self, ids: list[uuid.UUID], forced: bool, reason: str) -> None:
        canceller = await self.canceller()
        for row in await canceller.db.active_by_message_ids(ids):
            try:
                out = await canceller.cancel(row["id"], by=BY, reason=reason, force=forced)
            except (CancelConflict, TaskNotFound):
                continue  # it ended, or was deleted, in the meantime
            if out.changed:
                log.info("worker.celery_revoke_cancelled", task_id=str(row["id"]),
                         message_id=str(row["message_id"]), was=row["status"],
                         now=out.row["status"], forced=forced)

    async def canceller(self) -> Canceller:
        if self._canceller is None:
            db = await self.connection.get()
            self._canceller = Canceller(self.settings, db, connect(self.settings.redis_url),
                                        self.celery)
        return self._canceller


def _as_uuid(value: str) -> uuid.UUID | None:
    try:
        return uuid.UUID(value)
    except ValueError:
        return None  # a Celery id of someone else's, never a message of ours


def _control_of(state: Any) -> CeleryControl | None:
    return getattr(state.app, "taskreaper_celery_control", None)


@control_command(name="revoke", variadic="task_id", signature="[id1 [id2 [... [idN]]]]")
def revoke(state: Any, task_id: Any, terminate: bool = False, signal: str | None = None,
           **kwargs: Any) -> dict[str, Any]:
    """Revoke task by task id (or list of ids); messages of taskreaper's tasks are cancelled."""
    control = _control_of(state)
    if control is None:
        return celery_revoke(state, task_id, terminate, signal, **kwargs)
    ids = {str(i) for i in maybe_list(task_id) or []}
    ours = control.held_here(ids)
    if ours:
        # Celery's bookkeeping only: if a kill is needed, the ladder does it, verified.
        celery_revoke(state, sorted(ours), False, None, **kwargs)
    others = sorted(ids - ours)
    reply: dict[str, Any] = (celery_revoke(state, others, terminate, signal, **kwargs)
                             if others or not ours else {})
    if not kwargs.get(SETTLED_REVOKE):
        control.cancel(ids, forced=bool(terminate), reason=revoke_reason(terminate, signal))
    if ours:
        said = f"; {reply['ok']}" if "ok" in reply else ""
        return ok(f"tasks {sorted(ours)} cancelled by taskreaper{said}")
    return reply


@control_command(name="revoke_by_stamped_headers", variadic="headers",
                 signature="[key1=value1 [key2=value2 [... [keyN=valueN]]]]")
def revoke_by_stamped_headers(state: Any, headers: Any, terminate: bool = False,
                              signal: str | None = None, **kwargs: Any) -> dict[str, Any]:
    """Revoke task by header (or list of headers); taskreaper's tasks are cancelled."""
    control = _control_of(state)
    if control is None:
        return celery_revoke_by_stamped_headers(
            state, headers, terminate, signal, **kwargs)
    if isinstance(headers, list):
        headers = dict(h.split("=", 1) for h in headers)
    matching = [r for r in list(worker_state.active_requests) if _stamped(r, headers)]
    # Celery records the stamps (a queued message that carries one is dropped on arrival,
    # and `task_revoked` below cancels its row) and terminates none of ours...
    reply = celery_revoke_by_stamped_headers(state, headers, False, None, **kwargs)
    ours = [r.id for r in matching if control.ours(r.name)]
    if terminate:
        # ...while work of others is terminated as Celery would.
        signum = signals.signum(signal or TERM_SIGNAME)
        for request in matching:
            if not control.ours(request.name):
                request.terminate(state.consumer.pool, signal=signum)
    control.cancel(ours, forced=bool(terminate), reason=revoke_reason(terminate, signal))
    return reply


def _stamped(request: Any, headers: dict[str, Any]) -> bool:
    stamps = request.stamps or {}
    for header, wanted in headers.items():
        have = stamps.get(header)
        if have is not None and {str(v) for v in maybe_list(have)} & {
                str(v) for v in maybe_list(wanted)}:
            return True
    return False


def install_celery_control(app: Celery, settings: Settings, actors: Iterable[str]
                           ) -> CeleryControl:
    """Makes Celery's revoke of this worker app's messages our cancel (see the module doc)."""
    control = CeleryControl(settings, app, actors)
    app.taskreaper_celery_control = control

    @worker_ready.connect(weak=False)
    def _ready(**_: Any) -> None:
        control.start()  # before the first revoke: the loop is up when one comes

    @task_revoked.connect(weak=False)
    def _dropped(sender: Any = None, request: Any = None, terminated: bool = False,
                 expired: bool = False, **_: Any) -> None:
        # A message of ours that Celery dropped on arrival because a revoke named one of its
        # stamps. One revoked by id was cancelled by the revoke itself.
        if (terminated or expired or request is None
                or not control.ours(getattr(sender, "name", None))
                or request.id in worker_state.revoked):
            return
        control.cancel([request.id], forced=False, reason=revoke_reason(False, None))

    return control
