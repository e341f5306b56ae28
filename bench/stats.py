"""Latency distributions: nearest-rank percentiles, so every reported figure was observed."""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any


def percentile(sorted_values: list[float], q: float) -> float:
    """Nearest rank: the smallest value with at least q% of the samples at or below it."""
    if not sorted_values:
        return math.nan
    rank = max(1, math.ceil(q / 100.0 * len(sorted_values)))
    return sorted_values[rank - 1]


@dataclass
class Dist:
    """Samples in milliseconds (or any one unit), with the usual summary."""

    samples: list[float] = field(default_factory=list)
    unit: str = "ms"

    def add(self, value: float) -> None:
        self.samples.append(value)

    @contextmanager
    def timing(self) -> Iterator[None]:
        """Adds the milliseconds the block took; a block that raised adds nothing."""
        started = time.perf_counter()
        yield
        self.add((time.perf_counter() - started) * 1000)

    @property
    def n(self) -> int:
        return len(self.samples)

    def pct(self, q: float) -> float:
        return percentile(sorted(self.samples), q)

    @property
    def p50(self) -> float:
        return self.pct(50)

    @property
    def p99(self) -> float:
        return self.pct(99)

    @property
    def max(self) -> float:
        return max(self.samples) if self.samples else math.nan

    @property
    def mean(self) -> float:
        return statistics.fmean(self.samples) if self.samples else math.nan

    def shifted(self, by: float) -> Dist:
        return Dist([s + by for s in self.samples], self.unit)

    def to_json(self, *, with_samples: bool = True) -> dict[str, Any]:
        out: dict[str, Any] = {"unit": self.unit, "n": self.n, "p50": _r(self.p50),
                               "p99": _r(self.p99), "max": _r(self.max), "mean": _r(self.mean)}
        if with_samples:
            out["samples"] = [_r(s) for s in self.samples]
        return out


async def timed(fn: Callable[[], Awaitable[Any]], n: int) -> Dist:
    """Awaits `fn` n times, one call after the other, keeping each call's milliseconds."""
    dist = Dist()
    for _ in range(n):
        with dist.timing():
            await fn()
    return dist


def _r(value: float) -> float | None:
    return None if math.isnan(value) else round(value, 3)
