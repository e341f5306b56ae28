"""Everything the reaper's loops share: settings, connections, metrics."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis
import structlog

from services.reaper.celery_ops import CeleryOps
from services.reaper.leader import LeaderLock
from services.reaper.metrics import ReaperMetrics
from shared.db import Db
from shared.events import encode
from shared.keys import Keys
from shared.settings import Settings

log = structlog.get_logger("reaper")


@dataclass
class ReaperContext:
    settings: Settings
    db: Db
    redis: aioredis.Redis
    celery: CeleryOps
    keys: Keys
    leader: LeaderLock
    metrics: ReaperMetrics

    async def publish_change(self, task_id: Any, status: str, **extra: Any) -> None:
        await self.publish_event("task.changed", task_id=str(task_id), status=status, **extra)

    async def publish_event(self, kind: str, **fields: Any) -> None:
        """Best effort: the DB row is the record, the event only makes the news travel."""
        try:
            await self.redis.publish(self.keys.events_channel, encode(kind, **fields))
        except Exception as exc:
            log.warning("reaper.event_publish_failed", kind=kind, error=str(exc))
