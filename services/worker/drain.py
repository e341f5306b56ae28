"""A pool process's part in a drain: the task it runs stops with reason `shutdown`.

The worker's main process asks for a drain with one message on its drain channel (see
shared/drain.py). Each pool process listens there too and sets its execution's token with
reason `shutdown`; the task saves its checkpoint and returns, and its end puts the row
back to `queued` with a fresh message (preempted), for another worker to go on from the
checkpoint. Unlike a cancel, nothing is written to the row first and no watchdog is armed:
the row stays `running` until the task ends, and a task that does not stop in time is
the main process's to kill and re-queue (services/worker/shutdown.py), never `cancelled`.

Once draining, a process stops every execution that begins here too: the consumer is
already cancelled, but a delivery on its way to the pool may still arrive.
"""

from __future__ import annotations

import signal
from collections.abc import Callable
from typing import Any

import redis.asyncio as aioredis
import structlog

from services.worker.execution import Execution
from services.worker.subscription import Subscription
from shared.drain import parse_drain
from shared.keys import Keys
from shared.states import CancelReason

log = structlog.get_logger("worker.sidecar")


class PoolDrain:
    def __init__(self, client: aioredis.Redis, keys: Keys, node: str,
                 current: Callable[[], Execution | None], main_thread_id: int,
                 interrupt_signal: signal.Signals) -> None:
        self._current = current
        self._main_thread_id = main_thread_id
        self._interrupt_signal = interrupt_signal
        self.draining = False
        self.by: str | None = None
        self.subscription = Subscription(client, [keys.node_drain_channel(node)],
                                         self._on_message, log=log,
                                         error_event="worker.drain_listener_error")

    async def run(self) -> None:
        await self.subscription.run()

    def _on_message(self, data: Any) -> None:
        request = parse_drain(data)
        if request is None:
            return
        self.draining = True
        self.by = request.get("by")
        self.stop(self._current())

    def on_begin(self, ex: Execution) -> None:
        """Called when an execution begins in this process."""
        if self.draining:
            self.stop(ex)

    def stop(self, ex: Execution | None) -> None:
        """Sets the execution's token with reason `shutdown`. Runs on the sidecar loop."""
        if ex is None or ex.finished.is_set() or not ex.token.cancel(CancelReason.SHUTDOWN):
            return
        log.info("task.drain_observed", task_id=ex.id, attempt=ex.attempt, by=self.by)
        if ex.interruptible and ex.in_user_code:
            signal.pthread_kill(self._main_thread_id, self._interrupt_signal)
