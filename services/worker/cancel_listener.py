"""The pool process's cancel listener: cancel events pushed by Redis, matched locally.

One subscription per process: the fleet-wide channel (a cancel-all is one event, not
one per task) plus the channel of the task this process is about to run or runs. A
task's channel is watched before its claim, so that no cancel slips by in between.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import redis.asyncio as aioredis
import structlog

from services.worker.execution import Execution
from services.worker.subscription import Subscription
from shared.cancellation import event_matches
from shared.keys import Keys

log = structlog.get_logger("worker.sidecar")

# Sets the execution's token: (execution, reason, forced=, via=).
Trigger = Callable[..., None]


class CancelListener:
    def __init__(self, client: aioredis.Redis, keys: Keys,
                 current: Callable[[], Execution | None], trigger: Trigger) -> None:
        self.keys = keys
        self._current = current
        self._trigger = trigger
        self.subscription = Subscription(client, [keys.cancel_channel], self._on_message,
                                         log=log, error_event="worker.cancel_listener_error")

    async def run(self) -> None:
        await self.subscription.run()

    async def watch(self, task_id: str) -> None:
        """Listens to one task's cancel channel."""
        try:
            await self.subscription.add(self.keys.task_cancel_channel(task_id))
        except Exception as exc:  # the subscription resubscribes when it reconnects
            log.warning("worker.cancel_subscribe_failed", task_id=task_id, error=str(exc))

    async def forget(self, task_id: str) -> None:
        try:
            await self.subscription.discard(self.keys.task_cancel_channel(task_id))
        except Exception as exc:
            log.warning("worker.cancel_subscribe_failed", task_id=task_id, error=str(exc))

    def _on_message(self, data: Any) -> None:
        event: dict[str, Any] = json.loads(data)
        ex = self._current()
        if ex is None or ex.finished.is_set():
            return
        if event_matches(event, task_id=ex.id, actor=ex.actor, queue=ex.queue,
                         started_at=ex.started_at):
            self._trigger(ex, event.get("reason") or "cancelled", forced=bool(event.get("force")),
                          via="event")
