"""How the trees section's report modules read its results."""

from __future__ import annotations

from typing import Any

from bench.figures import Results


def trees(results: Results) -> dict[str, Any]:
    return results.get("trees") or {}


def rounds_of(t: dict[str, Any]) -> list[dict[str, Any]]:
    return list((t.get("ours") or {}).get("rounds") or [])


def ms(value: float | None) -> str:
    return "—" if value is None else f"{value:,.0f} ms"


def worst(rounds: list[dict[str, Any]], fn: Any) -> float | None:
    values = [v for r in rounds if (v := fn(r)) is not None]
    return max(values) if values else None


def stopped(r: dict[str, Any]) -> float | None:
    return r["running_ends"]["stopped_ms"].get("max")

