"""Short human forms for durations, sizes and task states in taskctl's tables."""

from __future__ import annotations

from rich.text import Text

# One colour per state wherever taskctl prints one: green runs, yellow is stopping, blue
# waits on children, red ended badly, dim ended as asked.
STATE_STYLE = {
    "queued": "cyan", "running": "green", "cancelling": "yellow", "pausing": "yellow",
    "paused": "magenta", "waiting": "blue", "succeeded": "bold green", "failed": "bold red",
    "lost": "bold red", "cancelled": "dim",
}


def state(status: str) -> Text:
    return Text(status, style=STATE_STYLE.get(status, ""))


def duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    seconds = max(0.0, seconds)
    if seconds < 60:
        return f"{seconds:.1f}s" if seconds < 10 else f"{seconds:.0f}s"
    minutes, secs = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    if hours < 48:
        return f"{hours}h{minutes:02d}m"
    return f"{hours // 24}d{hours % 24:02d}h"


def ago(seconds: float) -> str:
    return f"{duration(seconds)} ago"


def size(n: int | None) -> str:
    if n is None:
        return "-"
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} GiB"
