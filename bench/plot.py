"""latency.png: the cumulative distribution of every measured cancel path."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (the backend must be chosen first)
from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter  # noqa: E402

from bench.latencies import Latency, collect  # noqa: E402


def _ecdf(ax: Any, lat: Latency, shift: float = 0.0) -> None:
    values = sorted(v + shift for v in lat.dist["samples"])
    n = len(values)
    ys = [(i + 1) / n for i in range(n)]
    ax.step(values, ys, where="post", label=f"{lat.label} (n={n})")


def latency(results: dict[str, Any], path: Path) -> bool:
    """Returns False when the run measured no latency at all."""
    found = [lat for lat in collect(results) if lat.plotted]
    if not found:
        return False
    grace_ms = 1000 * float((results.get("meta", {}).get("settings") or {})
                            .get("cancel_grace_s", 0.0))
    panels = [g for g in ("immediate", "grace") if any(lat.group == g for lat in found)]
    fig, axes = plt.subplots(len(panels), 1, figsize=(11, 4.2 * len(panels)), squeeze=False)
    for ax, group in zip(axes[:, 0], panels, strict=True):
        shift = -grace_ms if group == "grace" else 0.0
        for lat in found:
            if lat.group == group:
                _ecdf(ax, lat, shift)
        ax.set_xscale("log")
        # Plain numbers at 1, 2, 5 × 10^k read better than powers of ten.
        ax.xaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_ylabel("fraction of cancels")
        ax.grid(True, which="both", alpha=0.3)
        ax.axhline(0.99, color="grey", lw=0.8, ls=":")
        if group == "immediate":
            ax.set_title("Paths that act at once")
            ax.set_xlabel("latency (ms, log scale)")
            ax.axvline(10, color="tab:red", lw=0.8, ls="--", label="goal: token observed < 10 ms")
        else:
            ax.set_title(f"Uncooperative tasks: latency minus the grace period "
                         f"(CANCEL_GRACE={grace_ms / 1000:g} s)")
            ax.set_xlabel("latency − grace (ms, log scale)")
            ax.axvline(250, color="tab:red", lw=0.8, ls="--", label="goal: grace + 250 ms")
        ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True
