"""Leader election: one Redis key with a TTL, renewed by its owner; followers take over."""

from __future__ import annotations

import uuid

import redis.asyncio as aioredis

# Renew or release only if we still own the key: compare-and-act in one step.
_RENEW = """
if redis.call('get', KEYS[1]) == ARGV[1] then
  return redis.call('pexpire', KEYS[1], ARGV[2])
end
return 0
"""
_RELEASE = """
if redis.call('get', KEYS[1]) == ARGV[1] then
  return redis.call('del', KEYS[1])
end
return 0
"""


class LeaderLock:
    def __init__(self, redis: aioredis.Redis, key: str, ttl: float, identity: str | None = None
                 ) -> None:
        self.redis = redis
        self.key = key
        self.ttl_ms = int(ttl * 1000)
        self.identity = identity or uuid.uuid4().hex
        self.is_leader = False

    async def acquire_or_renew(self) -> bool:
        if self.is_leader:
            renewed = await self.redis.eval(_RENEW, 1, self.key, self.identity, self.ttl_ms)
            self.is_leader = bool(renewed)
        if not self.is_leader:
            self.is_leader = bool(await self.redis.set(self.key, self.identity, nx=True,
                                                       px=self.ttl_ms))
        return self.is_leader

    async def release(self) -> None:
        if self.is_leader:
            await self.redis.eval(_RELEASE, 1, self.key, self.identity)
            self.is_leader = False

    async def current(self) -> str | None:
        value = await self.redis.get(self.key)
        return value.decode() if isinstance(value, bytes) else value
