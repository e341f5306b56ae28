"""Every Redis key and channel name, in one place."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Keys:
    prefix: str

    @property
    def cancel_channel(self) -> str:
        return f"{self.prefix}:cancel"

    def task_cancel_channel(self, task_id: str) -> str:
        """Cancels of one task: only the process executing it listens here."""
        return f"{self.prefix}:cancel:task:{task_id}"

    def node_cancel_channel(self, node: str) -> str:
        """Cancels of tasks on one worker: its guardian listens here."""
        return f"{self.prefix}:cancel:node:{node}"

    def node_drain_channel(self, node: str) -> str:
        """Drain requests for one worker: its main process and each of its pool processes
        listen here (apart from the cancels, so a cancel reaches only its guardian)."""
        return f"{self.prefix}:drain:node:{node}"

    @property
    def pending(self) -> str:
        """Sorted set of message ids published and not yet taken by a worker, scored by
        publish time: the lost-message rule asks it about a few rows instead of reading
        whole queues."""
        return f"{self.prefix}:pending"

    @property
    def events_channel(self) -> str:
        return f"{self.prefix}:events"

    @property
    def cancelled(self) -> str:
        """Sorted set of cancelled task ids, scored by cancel time: the guard's fast path."""
        return f"{self.prefix}:cancelled"

    @property
    def executions(self) -> str:
        """Sorted set of live executions, member task id, score the expiry (epoch seconds)."""
        return f"{self.prefix}:executions"

    @property
    def execution_info(self) -> str:
        """Hash: task id -> JSON with attempt, host, pid, pid start time."""
        return f"{self.prefix}:execution-info"

    @property
    def workers(self) -> str:
        """Hash: Celery node name -> JSON with host, pid and start time of its main process."""
        return f"{self.prefix}:workers"

    @property
    def workers_alive(self) -> str:
        """Sorted set of Celery node names, scored by when each worker's main process must
        beat again by (epoch seconds): a worker past it is gone."""
        return f"{self.prefix}:workers-alive"

    @property
    def leader(self) -> str:
        return f"{self.prefix}:reaper:leader"

    @property
    def scan_request(self) -> str:
        """Set by cancel-all: the reaper looks for orphans at once instead of on schedule."""
        return f"{self.prefix}:reaper:scan-request"

    @property
    def reaper_status(self) -> str:
        return f"{self.prefix}:reaper:status"

    @property
    def celery_prefix(self) -> str:
        """Celery's own keys (queues, unacked set, pidbox channels) live under this."""
        return f"{self.prefix}:celery:"

    def celery_key(self, name: str) -> str:
        return f"{self.celery_prefix}{name}"
