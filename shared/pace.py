"""How progress is told to people: the heartbeat log's interval by job size, and durations
in words."""

from __future__ import annotations

from shared.settings import Settings


def log_interval(total: int | None, settings: Settings) -> float:
    """Bigger jobs log less often; HEARTBEAT_LOG_INTERVAL overrides."""
    if settings.heartbeat_log_interval > 0:
        return settings.heartbeat_log_interval
    if total is not None and total > 500:
        return 900.0
    if total is not None and total > 100:
        return 600.0
    return 300.0


def human(seconds: float | None) -> str:
    if seconds is None:
        return "unknown"
    if seconds >= 3600:
        return f"{seconds / 3600:.1f}h"
    if seconds >= 60:
        return f"{seconds / 60:.1f}min"
    return f"{seconds:.0f}s"
