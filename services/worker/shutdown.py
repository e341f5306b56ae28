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
3. waits for the pool to be idle, up to DRAIN_GRACE less a reserve for what follows (more
   of it the more tasks still run);
4. kills what still runs then, each pool process identified as for every kill here
   (services/worker/control.py), and hands its task back from here once the process is
   confirmed gone (stragglers.py, handback.py);
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

from services.worker.handback import HandBack
from services.worker.loop_thread import LoopThread
from services.worker.stragglers import (
    connect_hand,
    finish,
    finish_need,
    held_requests,
    kill_each,
)
from services.worker.subscription import Subscription
from shared.drain import drain_message, parse_drain
from shared.events import encode
from shared.keys import Keys
from shared.redis_client import connect
from shared.settings import Settings

log = structlog.get_logger("worker.drain")

# Kept of DRAIN_GRACE for the kills, the hand-backs and Celery's own shutdown, which takes
# a second or two of its own even when idle (each billiard pool process pauses 1 s on exit).
RESERVE = 3.0
RESERVE_SHARE = 0.5
CELERY_EXIT = RESERVE / 2
# The least time the kills and hand-backs get, on the connection made ahead or on a fresh one.
FINISH_FLOOR = RESERVE / 2
FALLBACK_FLOOR = 1.0
# How often the drain looks at what the pool still runs.
POLL = 0.05
# How long a step on Celery's event loop may take to get its turn.
HUB_WAIT = 2.0


# Set for the rest of the process's life once a drain starts (one worker per process).
_DRAINING = threading.Event()


def draining() -> bool:
    """A drain is under way in this process: it hands back every execution of the pool,
    those whose process dies meanwhile included."""
    return _DRAINING.is_set()


def kill_after(grace: float, stragglers: int = 0) -> float:
    """Seconds into a drain at which what still runs is killed: earlier when more still
    runs, for their kills and hand-backs to fit within the grace."""
    reserve = max(RESERVE, CELERY_EXIT + finish_need(stragglers))
    return grace - min(reserve, grace * RESERVE_SHARE)


def _nothing() -> None:
    pass


class WorkerDrain:
    def __init__(self, settings: Settings, node: str) -> None:
        self.settings = settings
        self.node = node
        self.keys = Keys(settings.key_prefix)
        self.thread = LoopThread("taskreaper-drain")
        self.redis = connect(settings.redis_url)
        self.subscription = Subscription(
            connect(settings.redis_url, socket_timeout=None),
            [self.keys.node_drain_channel(node)], self._on_message, log=log,
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
        end = started + grace - CELERY_EXIT
        finished = False
        try:
            self._on_hub(self._stop_consuming)
            self._call(self._tell(grace), timeout=HUB_WAIT)
            hand = self._call(self._prepare(), timeout=max(0.5, kill_after(grace) / 2))
            seen = self._wait(started, grace)
            if hand is not None:
                finished = self._finish(hand, seen, max(FINISH_FLOOR, end - time.monotonic()))
        except Exception as exc:
            log.error("worker.drain_error", node=self.node, error=repr(exc))
        if not finished:  # on a fresh connection, not to leave a row to the heartbeat timeout
            log.warning("worker.drain_finish_again", node=self.node)
            finished = self._finish(None, seen, max(FALLBACK_FLOOR, end - time.monotonic()))
        if not finished:  # no database: what still runs must not hold Celery's exit up
            kill_each(held_requests(), self.node)
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
            pipe.publish(self.keys.node_drain_channel(self.node),
                         drain_message(by=self.by or f"worker:{self.via}"))
            pipe.publish(self.keys.events_channel, encode(
                "worker.draining", node=self.node, via=self.via, by=self.by, grace_s=grace))
            await pipe.execute()

    def _wait(self, started: float, grace: float) -> dict[str, uuid.UUID]:
        seen: dict[str, uuid.UUID] = {}
        while True:
            held = held_requests()
            seen.update(held)
            if (not held or self._hurry.is_set()
                    or time.monotonic() >= started + kill_after(grace, len(held))):
                return seen
            self._hurry.wait(POLL)

    async def _prepare(self) -> HandBack:
        """Connects ahead of the kills, so that they are not kept waiting for it."""
        return await connect_hand(self.settings, self.redis, self.node)

    def _finish(self, hand: HandBack | None, seen: dict[str, uuid.UUID],
                bound: float) -> bool:
        """Kills what still runs and hands back what is confirmed stopped (stragglers.py);
        True once every hand-back was tried within `bound` seconds."""
        done = self._call(finish(self.settings, self.redis, self.node, hand, seen),
                          timeout=bound)
        return done is True

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
