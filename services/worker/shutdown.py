"""A worker told to stop drains: every task it runs goes on elsewhere, from its checkpoint.

Celery's own shutdown does not fit tasks that take hours. Its warm shutdown (SIGTERM) stops
taking messages, then waits for the running tasks however long they take, while Kubernetes,
`docker stop` and systemd kill the worker after their grace period, its tasks with it. The
soft shutdown of Celery 5.5 (`worker_soft_shutdown_timeout`) bounds the wait, then ends what
still runs and, with `acks_late`, has the message delivered again: the task starts over and
every chunk it had done is done again. Neither asks a task to stop at a chunk boundary.

So the worker's main process takes SIGTERM and SIGINT (and a drain request on its node
channel, see shared/drain.py) before Celery does, and:
1. cancels its task consumer on Celery's event loop (no new message) and puts the ETA
   messages it holds back in their queue (else unacknowledged until the visibility timeout);
2. tells its pool processes, on the node channel, to set each running task's token with
   reason `shutdown` (services/worker/drain.py): the task saves and returns, and its end puts
   the row back to `queued` with a fresh message (preempted); Celery sees an ordinary return
   and acknowledges the old message, which the claim would refuse anyway;
3. waits for the pool to be idle, up to DRAIN_GRACE less a reserve for what follows;
4. kills what still runs then, each pool process identified as for every kill here
   (services/worker/control.py), and hands its task back from here (handback.py);
5. hands over to Celery's warm shutdown, with nothing left to wait for: exit 0 within
   DRAIN_GRACE.
Every task the worker ran ends `queued` under a fresh message (or as a cancel or a pause that
came meanwhile says), and nothing waits for hours. A second signal skips the rest of the wait.

A drain requested from outside (an operator's, before maintenance) ends the same way, with
exit 0; what follows is the supervisor's call: `make run` and systemd's `Restart=on-failure`
leave the worker stopped, Kubernetes and compose's `restart: always` start a fresh one. A
worker kept alive but idle would still hold its pool, its connections and its place in the
status board, and would need a second command to take work again.
"""

from __future__ import annotations

import functools
import signal
import threading
import time
import uuid
from collections.abc import Callable
from types import FrameType
from typing import Any

import structlog
from celery.platforms import EX_OK
from celery.worker import state as worker_state

from services.worker.control import verify_target
from services.worker.handback import HandBack
from services.worker.loop_thread import LoopThread
from services.worker.subscription import Subscription
from shared.broker import make_celery
from shared.db import Db
from shared.drain import drain_message, parse_drain
from shared.events import encode
from shared.keys import Keys
from shared.processes import ProcessIdentity
from shared.redis_client import connect
from shared.settings import Settings

log = structlog.get_logger("worker.drain")

# Kept of DRAIN_GRACE for the kills, the hand-backs and Celery's own shutdown, which takes
# a second or two of its own even when idle (each billiard pool process pauses 1 s on exit).
RESERVE = 3.0
RESERVE_SHARE = 0.5
# How often the drain looks at what the pool still runs.
POLL = 0.05
# How long a step on Celery's event loop may take to get its turn.
HUB_WAIT = 2.0
KILL_WAIT = 0.5


# Set for the rest of the process's life once a drain starts (one worker per process).
_DRAINING = threading.Event()


def draining() -> bool:
    """A drain is under way in this process: it hands back every execution of the pool,
    those whose process dies meanwhile included."""
    return _DRAINING.is_set()


def kill_after(grace: float) -> float:
    """Seconds into a drain at which what still runs is killed."""
    return grace - min(RESERVE, grace * RESERVE_SHARE)


def _nothing() -> None:
    pass


def held_requests() -> dict[str, uuid.UUID]:
    """message id -> task id of every delivery this worker holds for its pool (running, or
    on its way to a pool process). Read from another thread than the one changing it."""
    for _ in range(5):
        try:
            requests = list(worker_state.reserved_requests)
            break
        except RuntimeError:
            continue
    else:
        return {}
    out: dict[str, uuid.UUID] = {}
    for req in requests:
        try:
            out[req.id] = uuid.UUID(str((req.kwargs or {}).get("task_id")))
        except ValueError:
            continue
    return out


class WorkerDrain:
    def __init__(self, settings: Settings, node: str) -> None:
        self.settings = settings
        self.node = node
        self.keys = Keys(settings.key_prefix)
        self.thread = LoopThread("taskreaper-drain")
        self.redis = connect(settings.redis_url)
        self.subscription = Subscription(
            connect(settings.redis_url, socket_timeout=None),
            [self.keys.node_cancel_channel(node)], self._on_message, log=log,
            error_event="worker.drain_listen_error")
        self.consumer: Any = None
        self.via: str | None = None
        self.by: str | None = None
        self._begin = threading.Event()
        self._hurry = threading.Event()
        self._celery_stop: Any = None

    def install(self, consumer: Any) -> None:
        """On the main thread, once the worker runs (Celery has set its handlers by then)."""
        self.consumer = consumer
        self._celery_stop = signal.getsignal(signal.SIGTERM)
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._on_signal)
        self.thread.start(self._listen)
        threading.Thread(target=self._run, name="taskreaper-drain-run", daemon=True).start()

    def _listen(self) -> None:
        self.thread.spawn(self.subscription.run())

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        self.request(via=signal.Signals(signum).name)

    def _on_message(self, data: Any) -> None:
        if (asked := parse_drain(data)) is not None:
            self.request(via="request", by=asked.get("by"))

    def request(self, *, via: str, by: str | None = None) -> None:
        """Starts the drain; a signal during one ends its wait."""
        if self._begin.is_set():
            if via != "request":
                self._hurry.set()
            return
        self.via, self.by = via, by
        _DRAINING.set()
        self._begin.set()

    # -- the drain, on a thread of its own ------------------------------------------------

    def _run(self) -> None:
        self._begin.wait()
        started = time.monotonic()
        grace = self.settings.drain_grace
        log.warning("worker.drain_started", node=self.node, via=self.via, by=self.by,
                    grace_s=grace)
        seen: dict[str, uuid.UUID] = {}
        try:
            self._on_hub(self._stop_consuming)
            self._call(self._tell(grace), timeout=HUB_WAIT)
            hand = self._call(self._prepare(), timeout=max(0.5, kill_after(grace) / 2))
            seen = self._wait(started + kill_after(grace))
            if hand is not None:
                self._call(self._finish(hand, seen), timeout=RESERVE / 2)
        except Exception as exc:
            log.error("worker.drain_error", node=self.node, error=repr(exc))
        for message_id, task_id in held_requests().items():  # whatever the DB said
            self._kill(message_id, task_id)
        took = time.monotonic() - started
        log.warning("worker.drained", node=self.node, tasks=len(seen), took_s=round(took, 3))
        self._call(self._event("worker.drained", tasks=len(seen), took_s=round(took, 3)),
                   timeout=0.5)
        self._exit()

    def _call(self, coro: Any, timeout: float = HUB_WAIT) -> Any:
        try:
            return self.thread.call(coro, timeout)
        except Exception as exc:
            log.warning("worker.drain_step_failed", node=self.node, error=repr(exc))
            return None

    def _on_hub(self, fn: Callable[[], None]) -> None:
        """Runs `fn` on Celery's event loop, which owns the consumer, and waits for it."""
        hub = getattr(self.consumer, "hub", None)
        if hub is None:
            fn()
            return
        done = threading.Event()

        def run() -> None:
            try:
                fn()
            finally:
                done.set()

        hub.call_soon(run)
        if not done.wait(HUB_WAIT):
            log.warning("worker.drain_hub_slow", node=self.node)

    def _stop_consuming(self) -> None:
        consumer = self.consumer
        if consumer is None:
            return
        if consumer.task_consumer is not None:
            for queue in list(consumer.app.amqp.queues.consume_from):
                consumer.cancel_task_queue(queue)
        # Held for their ETA: back to their queue now, for another worker to hold.
        for req in list(worker_state.scheduled_requests):
            entry = getattr(req, "_eta_timer_entry", None)
            if entry is not None and consumer.timer is not None:
                consumer.timer.cancel(entry)
            worker_state.scheduled_requests.discard(req)
            req.reject(requeue=True)

    async def _tell(self, grace: float) -> None:
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.publish(self.keys.node_cancel_channel(self.node),
                         drain_message(by=self.by or f"worker:{self.via}"))
            pipe.publish(self.keys.events_channel, encode(
                "worker.draining", node=self.node, via=self.via, by=self.by, grace_s=grace))
            await pipe.execute()

    def _wait(self, kill_at: float) -> dict[str, uuid.UUID]:
        seen: dict[str, uuid.UUID] = {}
        while True:
            held = held_requests()
            seen.update(held)
            if not held or self._hurry.is_set() or time.monotonic() >= kill_at:
                return seen
            self._hurry.wait(POLL)

    async def _prepare(self) -> HandBack:
        """Connects ahead of the kills, so that they are not kept waiting for it."""
        db = await Db.connect(self.settings.database_url, min_size=1, max_size=1)
        return HandBack(self.settings, db, make_celery(self.settings), self.redis, self.node)

    async def _finish(self, hand: HandBack, seen: dict[str, uuid.UUID]) -> None:
        """Hands back what still runs (killing it) and what died without recording its end."""
        try:
            still = held_requests()
            for message_id, task_id in still.items():
                await self._hand_back(hand, task_id, message_id,
                                      functools.partial(self._kill, message_id, task_id))
            for message_id, task_id in seen.items():
                if message_id not in still:
                    await self._hand_back(hand, task_id, message_id, None)
        finally:
            hand.db.terminate()  # the process ends next: no graceful goodbyes to wait for

    async def _hand_back(self, hand: HandBack, task_id: uuid.UUID, message_id: str,
                         stop: Callable[[], None] | None) -> None:
        try:
            await hand.execution(task_id, message_id, stop)
        except Exception as exc:  # the next one still gets its turn
            log.warning("worker.hand_back_failed", node=self.node, task_id=str(task_id),
                        error=repr(exc))

    def _kill(self, message_id: str, task_id: uuid.UUID) -> None:
        try:
            proc, why = verify_target(message_id, str(task_id), None, None)
        except RuntimeError:  # the pool's bookkeeping changed under us: it is ending anyway
            return
        if proc is None:
            return
        try:
            identity = ProcessIdentity.of(proc)
            proc.send_signal(signal.SIGKILL)  # psutil checks pid and start time again first
        except Exception:  # gone meanwhile
            return
        log.warning("worker.drain_killed", node=self.node, task_id=str(task_id), pid=proc.pid)
        identity.wait_gone(KILL_WAIT)

    async def _event(self, kind: str, **fields: Any) -> None:
        await self.redis.publish(self.keys.events_channel,
                                 encode(kind, node=self.node, **fields))

    def _exit(self) -> None:
        """Celery's warm shutdown, as its own SIGTERM handler starts it (exit status 0)."""
        stop = self._celery_stop
        try:
            if callable(stop):
                stop(signal.SIGTERM, None)
        finally:
            worker_state.should_stop = EX_OK
            hub = getattr(self.consumer, "hub", None)
            if hub is not None:
                hub.call_soon(_nothing)  # wakes the loop to notice
