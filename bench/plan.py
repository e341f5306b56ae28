"""How much of each measurement a run does: the full suite, or a quick smoke check."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Plan:
    name: str
    cooperative: int = 100
    sleep: int = 100
    # Each `gil` round takes grace + the kill + a pool refill: a few seconds.
    gil: int = 20
    terminate: int = 100
    abort: int = 100
    # queued-task count -> repetitions
    cancel_all: dict[int, int] = field(default_factory=lambda: {1_000: 3, 10_000: 3})
    reconcile_sizes: tuple[int, ...] = (10_000, 100_000, 1_000_000)
    reconcile_active: int = 1_000
    reconcile_passes: int = 9
    api_seconds: float = 5.0
    api_concurrency: int = 8
    api_max_requests: int = 50_000
    token_checks: int = 2_000_000
    is_aborted_checks: int = 2_000
    row_reads: int = 500
    round_trips: int = 300
    # Queued tasks in the scale section (rows and real messages), its reaper passes, and how
    # long it watches after the cancel-all answered.
    scale: int = 1_000_000
    scale_reconcile_passes: int = 5
    scale_scan_passes: int = 3
    scale_wait_s: float = 90.0
    # The fleet section: pool processes per simulated host (one worker each), tasks queued
    # behind the running ones, the steady-state window, single cancels, and the no-op
    # events of each delivery burst.
    fleet_concurrency: tuple[int, ...] = (33, 33, 34)
    fleet_queued: int = 30
    fleet_steady_s: float = 20.0
    fleet_singles: int = 10
    fleet_burst: int = 100
    # The simulated section: running tasks per run, the steady-state window, generator
    # processes, and the window of the heartbeat statement alone (pgbench; 0 leaves it out).
    simulated: tuple[int, ...] = (100, 1_000, 10_000)
    simulated_seconds: float = 30.0
    simulated_procs: int = 2
    simulated_pgbench_seconds: float = 15.0
    # The trees section: children under one root, pool processes per simulated host (the
    # children running at the cancel), cancel rounds through the API (a new tree each, then
    # one more in-process with its steps timed), and how long a round watches at most.
    trees_children: int = 10_000
    trees_concurrency: tuple[int, ...] = (33, 33, 34)
    trees_rounds: int = 3
    trees_wait_s: float = 90.0
    # The per-task cost section: short tasks per round, the clients submitting them (and the
    # batches), each submit load's window, tasks run one at a time by the instrumented
    # worker, the idle window the stack's own rate is taken from, warm-up tasks, and the
    # rounds of short tasks (their median is reported).
    task_cost: int = 300
    task_cost_clients: int = 8
    task_cost_batch_clients: int = 4
    task_cost_submit_s: float = 5.0
    task_cost_alone: int = 50
    task_cost_idle_s: float = 5.0
    task_cost_warmup: int = 20
    task_cost_rounds: int = 3


FULL = Plan("full")
QUICK = Plan("quick", cooperative=20, sleep=10, gil=5, terminate=20,
             abort=20, cancel_all={1_000: 1}, reconcile_sizes=(10_000, 100_000),
             reconcile_passes=5, api_seconds=2.0, token_checks=200_000,
             is_aborted_checks=300, row_reads=100, round_trips=100, scale=20_000,
             scale_reconcile_passes=3, scale_scan_passes=2, scale_wait_s=45.0,
             fleet_concurrency=(10, 10, 10), fleet_queued=10, fleet_steady_s=8.0,
             fleet_singles=3, fleet_burst=30, simulated=(100, 1_000), simulated_seconds=8.0,
             simulated_pgbench_seconds=5.0, trees_children=1_000,
             trees_concurrency=(10, 10, 10), trees_rounds=1, trees_wait_s=45.0,
             task_cost=100, task_cost_submit_s=2.0, task_cost_alone=20, task_cost_idle_s=3.0,
             task_cost_rounds=1)
