"""The reaper's Prometheus metrics, in a registry of its own."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


class ReaperMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.passes = Counter("taskreaper_reconcile_passes", "Reconcile passes run",
                              registry=self.registry)
        self.pass_seconds = Histogram(
            "taskreaper_reconcile_pass_seconds", "Duration of one reconcile pass",
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5), registry=self.registry)
        self.findings = Counter("taskreaper_reconcile_findings", "Inconsistencies found, by rule",
                                ["rule"], registry=self.registry)
        self.kills = Counter("taskreaper_kills", "Kills requested through a worker, by result",
                             ["result"], registry=self.registry)
        self.revoked = Counter("taskreaper_revoked_messages", "Message ids revoked in Celery",
                               registry=self.registry)
        self.swept = Counter("taskreaper_fence_swept_tasks",
                             "Queued tasks a cancel fence covered, written cancelled",
                             registry=self.registry)
        self.sweep_seconds = Histogram(
            "taskreaper_fence_sweep_batch_seconds", "Duration of one sweep batch statement",
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.2, 0.5, 1), registry=self.registry)
        self.purged = Counter("taskreaper_fence_purged_messages",
                              "Covered messages taken out of the broker's queues",
                              registry=self.registry)
        self.leader = Gauge("taskreaper_is_leader", "1 while this replica leads",
                            registry=self.registry)
