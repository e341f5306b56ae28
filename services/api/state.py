"""Typed keys for what the application holds while it runs."""

from __future__ import annotations

import asyncio

import redis.asyncio as aioredis
from aiohttp import web
from celery import Celery

from services.api.metrics import Metrics
from shared.cancellation import Canceller
from shared.db import Db
from shared.keys import Keys
from shared.settings import Settings

SETTINGS = web.AppKey("settings", Settings)
KEYS = web.AppKey("keys", Keys)
DB = web.AppKey("db", Db)
REDIS = web.AppKey("redis", aioredis.Redis)
CELERY = web.AppKey("celery", Celery)
CANCELLER = web.AppKey("canceller", Canceller)
METRICS = web.AppKey("metrics", Metrics)
# Set when the application begins to shut down, so long-lived streams can end on their own.
STOPPING = web.AppKey("stopping", asyncio.Event)
# Seconds between keep-alive comments on the event stream.
SSE_KEEPALIVE = web.AppKey("sse_keepalive", float)
