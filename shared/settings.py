"""Settings: one frozen dataclass, built from the environment and passed explicitly."""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

from shared.sizes import parse_size


class SettingsError(ValueError):
    pass


@dataclass(frozen=True)
class Settings:
    database_url: str = ""
    redis_url: str = ""
    api_token: str = ""
    host: str = "127.0.0.1"
    port: int = 8897
    # Namespaces every Redis key, channel and Celery queue of one deployment.
    key_prefix: str = "taskreaper"
    default_queue: str = "default"
    log_dir: str = "logs"
    log_level: str = "INFO"
    run_dir: str = ".run"
    worker_concurrency: int = 2
    # The worker's main process kills its own pool processes stuck past a cancel deadline.
    guardian: bool = True
    # Celery task events (sent, received, started, ...) for Flower and `celery events`.
    task_events: bool = True
    # Comma-separated queues a worker consumes besides its actors' own and the default.
    worker_queues: str = ""
    # The worker writes progress to the DB at most this often (and at least every
    # CANCEL_POLL_INTERVAL, as its beat is the fallback poll for cancels).
    heartbeat_interval: float = 2.0
    # A running task whose heartbeat is older than this is presumed dead.
    heartbeat_timeout: float = 30.0
    reconcile_interval: float = 5.0
    cancel_grace: float = 5.0
    # Fallback DB poll for cancels whose Redis event was lost.
    cancel_poll_interval: float = 2.0
    # A forced cancel still lets a task that wakes at once exit on its own this long.
    force_window: float = 0.2
    # How long the reaper waits past a deadline before killing through the host.
    kill_margin: float = 1.0
    leader_ttl: float = 10.0
    # Queued rows absent from every queue for this long are re-enqueued once.
    lost_message_after: float = 60.0
    # Fixed interval for the heartbeat log lines; 0 chooses it from the job size.
    heartbeat_log_interval: float = 0.0
    # Prometheus endpoint of the reaper; 0 turns it off.
    reaper_metrics_port: int = 9897
    # How often the reaper asks every worker (a broadcast) for tasks it does not know.
    orphan_scan_interval: float = 30.0
    # Seconds before Redis hands an unacknowledged message to another worker.
    visibility_timeout: float = 3600.0
    # Comma-separated modules whose actors the worker serves; empty means the actors shipped
    # with the worker (the worker names them: settings know no service's modules).
    actor_modules: str = ""
    max_body_bytes: int = 1 << 20
    db_pool_size: int = 10
    history_retention_days: int = 30
    # A claim the DB has not answered within this long is given up (and retried later).
    claim_timeout: float = 10.0
    # A worker told to stop (SIGTERM, a drain request) hands its tasks back and exits within
    # this long; a task still running then is killed and re-queued. Under Kubernetes' 30 s.
    drain_grace: float = 25.0
    # Memory limit of an execution's pool process (RSS) for actors that set none: 536870912,
    # 512MB or 512MiB; empty means no limit. Past it the task is cancelled (`memory_limit`).
    worker_memory_limit: str = ""
    # Reads (task lists, details, results, status) without a token. Mutations and the event
    # stream always need one.
    public_reads: bool = False
    # Comma-separated origins allowed to call the API from a browser; empty turns CORS off.
    cors_origins: str = ""
    # Open event streams per API process, in total and per token; past either, 429.
    event_streams_max: int = 1000
    event_streams_per_token: int = 50
    # Mutating calls per token and API process: a sustained rate per second and a burst;
    # past them, 429 with Retry-After. RATE_LIMIT=0 turns it off.
    rate_limit: float = 50.0
    rate_burst: int = 500
    # A page of tasks or of results stops growing at this many bytes (its `next` goes on).
    max_response_bytes: int = 4 << 20
    # Job trees: how deep a tree may grow (a root is depth 0) and how many children one
    # parent may have; past either, the spawn or submit is refused with nothing created.
    tree_max_depth: int = 8
    tree_max_children: int = 100_000
    # A batch submit takes at most this many tasks in one call.
    batch_max_tasks: int = 10_000
    # How task messages reach the broker: `direct` writes Celery's message to Redis from
    # asyncio (many in one round trip); `kombu` sends it through Celery's blocking client
    # in a thread.
    publish_mode: str = "direct"

    @property
    def hostname(self) -> str:
        return socket.gethostname()

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None, **overrides: Any) -> Settings:
        env = dict(os.environ if env is None else env)
        values: dict[str, Any] = {}
        for f in fields(cls):
            raw = env.get(f.name.upper())
            if raw is None or raw == "":
                continue
            values[f.name] = _convert(f.name, raw, type(f.default))
        values.update(overrides)
        settings = cls(**values)
        settings.validate()
        return settings

    def with_(self, **changes: Any) -> Settings:
        return replace(self, **changes)

    def validate(self) -> None:
        for name in ("heartbeat_interval", "heartbeat_timeout", "reconcile_interval",
                     "cancel_poll_interval", "leader_ttl"):
            if getattr(self, name) <= 0:
                raise SettingsError(f"{name.upper()} must be positive")
        if self.cancel_grace < 0 or self.kill_margin < 0:
            raise SettingsError("CANCEL_GRACE and KILL_MARGIN must not be negative")
        if self.drain_grace <= 0:
            raise SettingsError("DRAIN_GRACE must be positive")
        if self.event_streams_max < 1 or self.event_streams_per_token < 1:
            raise SettingsError("EVENT_STREAMS_MAX and EVENT_STREAMS_PER_TOKEN must be positive")
        if self.rate_limit < 0 or self.rate_burst < 1:
            raise SettingsError("RATE_LIMIT must not be negative and RATE_BURST must be positive")
        if self.max_response_bytes < 4096:
            raise SettingsError("MAX_RESPONSE_BYTES must be at least 4096")
        if self.tree_max_depth < 1 or self.tree_max_children < 1 or self.batch_max_tasks < 1:
            raise SettingsError("TREE_MAX_DEPTH, TREE_MAX_CHILDREN and BATCH_MAX_TASKS must be "
                                "positive")
        if self.publish_mode not in ("direct", "kombu"):
            raise SettingsError("PUBLISH_MODE must be direct or kombu")
        if not 0 < self.port < 65536:
            raise SettingsError("PORT must be between 1 and 65535")
        try:
            parse_size(self.worker_memory_limit)
        except ValueError as exc:
            raise SettingsError(f"WORKER_MEMORY_LIMIT: {exc}") from exc

    def log_path(self, name: str) -> Path:
        return Path(self.log_dir) / name


def _convert(name: str, raw: str, kind: type) -> Any:
    try:
        if kind is bool:
            return raw.strip().lower() in {"1", "true", "yes", "on"}
        if kind is int:
            return int(raw)
        if kind is float:
            return float(raw)
        return raw
    except ValueError as exc:
        raise SettingsError(f"{name.upper()}={raw!r} is not a valid {kind.__name__}") from exc
