"""A rate limit on mutating calls, per token, kept in this API process's memory.

A token bucket per token: `rate` calls a second on average, bursts of up to `burst`. In
memory, so N API processes allow N times the rate; that bounds a runaway script, which is
what it is for, without a round trip to Redis on every call.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

# Buckets untouched this long are full again; dropping them keeps the table small.
_IDLE = 600.0


class RateLimiter:
    def __init__(self, rate: float, burst: int, *,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.rate = rate
        self.burst = float(burst)
        self.clock = clock
        self._buckets: dict[str, tuple[float, float]] = {}
        self._pruned = clock()

    @property
    def enabled(self) -> bool:
        return self.rate > 0

    def take(self, key: str) -> float | None:
        """Spends one call of `key`'s bucket: None when allowed, else the seconds to wait."""
        if not self.enabled:
            return None
        now = self.clock()
        self._prune(now)
        tokens, at = self._buckets.get(key, (self.burst, now))
        tokens = min(self.burst, tokens + (now - at) * self.rate)
        if tokens < 1.0:
            self._buckets[key] = (tokens, now)
            return (1.0 - tokens) / self.rate
        self._buckets[key] = (tokens - 1.0, now)
        return None

    def _prune(self, now: float) -> None:
        if now - self._pruned < _IDLE:
            return
        self._pruned = now
        self._buckets = {k: v for k, v in self._buckets.items() if now - v[1] < _IDLE}


def retry_after(seconds: float) -> str:
    """A Retry-After value: whole seconds, at least one."""
    return str(max(1, math.ceil(seconds)))
