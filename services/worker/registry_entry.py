"""The running execution's entry in the Redis registry: what runs where, without a
broadcast. The reaper reads the entries (O(active)); each expires unless its heartbeat
refreshes it, so a process that died leaves nothing behind for long."""

from __future__ import annotations

import redis.asyncio as aioredis
import structlog

from services.worker.execution import Execution
from shared.keys import Keys
from shared.registry import Entry, refresh, unregister
from shared.settings import Settings

log = structlog.get_logger("worker.sidecar")


class RegistryEntry:
    def __init__(self, client: aioredis.Redis, keys: Keys, settings: Settings, node: str,
                 pid: int, pid_started: float) -> None:
        self._client = client
        self._keys = keys
        self._settings = settings
        self._node = node
        self._pid = pid
        self._pid_started = pid_started

    async def refresh(self, ex: Execution) -> None:
        entry = Entry(task_id=ex.id, attempt=ex.attempt, message_id=str(ex.message_id),
                      node=self._node, host=self._settings.hostname, pid=self._pid,
                      pid_started=self._pid_started, started_at=ex.started_at)
        try:
            await refresh(self._client, self._keys, entry, self._settings.heartbeat_timeout)
        except Exception as exc:
            log.warning("worker.registry_failed", task_id=ex.id, error=str(exc))

    async def remove(self, ex: Execution) -> None:
        try:
            await unregister(self._client, self._keys, ex.id, ex.attempt)
        except Exception as exc:
            log.warning("worker.registry_failed", task_id=ex.id, error=str(exc))
