"""How the report modules read a run's results and write its figures, one way for every
section's tables, goals and notes."""

from __future__ import annotations

from typing import Any

# A run's results document (results.json): one entry per section, plus its `meta`.
Results = dict[str, Any]


def number(value: float | None, digits: int = 1) -> str:
    """A figure with thousands separators, or a dash for one this run did not take."""
    return "—" if value is None else f"{value:,.{digits}f}"


def percentiles(d: dict[str, Any] | None) -> str:
    """A latency distribution (`Dist.to_json`) as p50 / p99 / max with its count."""
    if not d or not d.get("n"):
        return "—"
    return f"p50 {d['p50']:,.1f} / p99 {d['p99']:,.1f} / max {d['max']:,.1f} ms (n={d['n']})"
