"""Redis clients with timeouts and a short retry, so a restarted server costs one hiccup."""

from __future__ import annotations

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError, TimeoutError


def connect(url: str, *, socket_timeout: float | None = 5.0, decode: bool = False
            ) -> aioredis.Redis:
    return aioredis.from_url(
        url, socket_connect_timeout=2, socket_timeout=socket_timeout, decode_responses=decode,
        health_check_interval=10,
        retry=Retry(ExponentialBackoff(cap=0.5, base=0.05), 3),
        retry_on_error=[ConnectionError, TimeoutError])
