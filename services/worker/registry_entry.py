"""The running execution's entry in the Redis registry: what runs where, without a
broadcast. The reaper reads the entries (O(active)); each expires unless its heartbeat
refreshes it, so a process that died leaves nothing behind for long."""

from __future__ import annotations

import redis.asyncio as aioredis
import structlog

from services.worker.execution import Execution
from shared.keys import Keys
from shared.registry import Entry, refresh, register, unregister
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
        # The execution whose whole entry this process wrote: its later beats only push the
        # expiry on; a new execution's first beat writes the entry at once (one round trip,
        # not a refresh that finds it missing first).
        self._written: tuple[str, int] | None = None

    async def refresh(self, ex: Execution) -> None:
        entry = Entry(task_id=ex.id, attempt=ex.attempt, message_id=str(ex.message_id),
                      node=self._node, host=self._settings.hostname, pid=self._pid,
                      pid_started=self._pid_started, started_at=ex.started_at)
        ttl = self._settings.heartbeat_timeout
        try:
            if self._written == (ex.id, ex.attempt):
                await refresh(self._client, self._keys, entry, ttl)
            else:
                await register(self._client, self._keys, entry, ttl)
                self._written = (ex.id, ex.attempt)
        except Exception as exc:
            log.warning("worker.registry_failed", task_id=ex.id, error=str(exc))

    async def remove(self, ex: Execution) -> None:
        try:
            await unregister(self._client, self._keys, ex.id, ex.attempt)
        except Exception as exc:
            log.warning("worker.registry_failed", task_id=ex.id, error=str(exc))
