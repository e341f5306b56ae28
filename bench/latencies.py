"""The latency distributions of one run, by name, with what each one measures."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Latency:
    key: str
    label: str
    dist: dict[str, Any]
    # Panel of the plot: paths that act at once, paths that wait for the grace period, or
    # "table" for breakdowns that are only listed.
    group: str

    @property
    def plotted(self) -> bool:
        return self.group != "table"


def _get(results: dict[str, Any], *path: str) -> dict[str, Any] | None:
    node: Any = results
    for part in path:
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node if isinstance(node, dict) and node.get("n") else None


def collect(results: dict[str, Any]) -> list[Latency]:
    wanted = [
        ("coop_observed", "ours, cooperative: cancel call → token observed",
         ("cooperative", "observed"), "immediate"),
        ("coop_terminal", "ours, cooperative: cancel call → row terminal",
         ("cooperative", "terminal"), "immediate"),
        ("coop_terminal_polled", "ours, cooperative: cancel call → terminal row seen by 2 ms poll",
         ("cooperative", "terminal_polled"), "table"),
        ("coop_announced", "ours: cancel call → API committed and published the event",
         ("cooperative", "announced"), "immediate"),
        ("coop_delivery", "ours: API published the event → token observed (the event's trip)",
         ("cooperative", "delivery"), "table"),
        ("coop_api", "ours: cancel HTTP round trip", ("cooperative", "api_call"), "table"),
        ("celery_terminate", "Celery revoke(terminate, SIGKILL) → process gone",
         ("celery_terminate", "gone"), "immediate"),
        ("celery_abort", "Celery AbortableTask abort() → task exit (10 ms poll)",
         ("celery_abort", "exited"), "immediate"),
        ("sleep_gone", "ours, stubborn sleep: cancel call → process gone",
         ("uncooperative", "sleep", "gone"), "grace"),
        ("gil_gone", "ours, stubborn gil: cancel call → process gone",
         ("uncooperative", "gil", "gone"), "grace"),
    ]
    out = []
    for key, label, path, group in wanted:
        dist = _get(results, *path)
        if dist is not None:
            out.append(Latency(key, label, dist, group))
    return out


def by_key(results: dict[str, Any]) -> dict[str, Latency]:
    return {lat.key: lat for lat in collect(results)}
