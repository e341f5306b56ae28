"""Command line: `python -m bench [--quick] [--only SECTION,...] [--out DIR] [--render]`."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

import structlog
from rich.console import Console

from bench import plot, report, results_md
from bench.plan import FULL, QUICK
from bench.suite import SECTIONS, Suite

HERE = Path(__file__).resolve().parent


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description="Cancellation latency, check cost, cancel-all, reconcile, API, fleet and "
                    "scale figures for Taskreaper next to plain Celery, on this machine.")
    parser.add_argument("--quick", action="store_true",
                        help="a few rounds of everything (a smoke check, about two minutes); "
                             "writes under bench/out/quick unless --out is given")
    parser.add_argument("--only", default="",
                        help=f"comma-separated subset of: {', '.join(SECTIONS)}")
    parser.add_argument("--out", type=Path, default=None,
                        help="where results.json, RESULTS.md and latency.png go "
                             "(default: bench/ for the full run)")
    parser.add_argument("--scale", type=int, default=None, metavar="N",
                        help="queued tasks in the scale section (default 1,000,000; "
                             "20,000 with --quick)")
    parser.add_argument("--simulated", default=None, metavar="N,N,...",
                        help="running tasks in each run of the simulated section (default "
                             "100,1000,10000; 100,1000 with --quick)")
    parser.add_argument("--render", action="store_true",
                        help="only rebuild RESULTS.md and latency.png from results.json")
    args = parser.parse_args(argv)
    args.sections = tuple(s.strip() for s in args.only.split(",") if s.strip()) or SECTIONS
    unknown = sorted(set(args.sections) - set(SECTIONS))
    if unknown:
        parser.error(f"unknown section {', '.join(unknown)}; choose from {', '.join(SECTIONS)}")
    if args.out is None:
        args.out = HERE / "out" / "quick" if args.quick else HERE
    return args


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    # The shared modules log their routine steps (migrations, embedded servers); the
    # bench's own output is the progress lines and the tables.
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    console = Console(width=None if Console().is_terminal else 160)
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    results_path = out / "results.json"
    if args.render:
        results = json.loads(results_path.read_text())
    else:
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
        work = HERE / "out" / "runs" / stamp  # service logs; ignored by git
        plan = QUICK if args.quick else FULL
        if args.scale is not None:
            plan = replace(plan, scale=args.scale)
        if args.simulated:
            plan = replace(plan, simulated=tuple(
                int(n.replace("_", "").replace(",", "")) for n in args.simulated.split(",")
                if n.strip()))
        console.print(f"[bold]Taskreaper bench[/] ({plan.name}); service logs in {work}")
        results = asyncio.run(Suite(plan, work, args.sections, console).run())
        results["meta"]["logs"] = str(work.relative_to(HERE.parent))
    results["goals"] = report.goals(results)
    results_path.write_text(json.dumps(results, indent=1) + "\n")
    plotted = plot.latency(results, out / "latency.png")
    (out / "RESULTS.md").write_text(results_md.markdown(results, plotted))
    report.print_tables(results, console)
    console.print(f"\nwrote {results_path}, {out / 'RESULTS.md'}"
                  + (f", {out / 'latency.png'}" if plotted else ""))
    return 0
