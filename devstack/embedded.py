"""PostgreSQL and Redis from PyPI wheels, for `make run` and tests when none are configured.

Both keep their data under `run_dir`, so tasks and queues survive restarts. Several processes
may use one `run_dir` at once (`make run` in one terminal, `make test` in another): each
`start()` registers its user, each `stop()` removes it, and the servers stop with the last
user. Servers left behind by a process that was killed are adopted by the next `start()`.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import structlog

from devstack.postgres import EmbeddedPostgres
from devstack.redis_server import EmbeddedRedis
from devstack.servers import EmbeddedError
from shared.processes import ProcessIdentity

__all__ = ["EmbeddedError", "EmbeddedServices"]  # what start() raises, for callers to catch

log = structlog.get_logger("embedded")


class EmbeddedServices:
    """Starts (or attaches to) the PostgreSQL and Redis servers that live under `run_dir`."""

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = Path(run_dir).expanduser().resolve()
        self._id = uuid.uuid4().hex
        self._postgres = EmbeddedPostgres(self.run_dir / "pg")
        self._redis = EmbeddedRedis(self.run_dir / "redis")
        self._registered = False
        self._users_path = self.run_dir / "embedded.users.json"

    def start(self) -> tuple[str, str]:
        """Returns (database_url, redis_url); safe to call while other users run."""
        self.run_dir.mkdir(parents=True, exist_ok=True)
        with self._locked():
            users = self._live_users()
            try:
                database_url = self._postgres.ensure_running()
                redis_url = self._redis.ensure_running()
            except BaseException:
                if not users:  # nobody else relies on a half-started pair
                    self.stop_servers()
                raise
            users.append(self._me())
            self._write_users(users)
            self._registered = True
        log.info("embedded.ready", run_dir=str(self.run_dir), users=len(users),
                 database_url=database_url, redis_url=redis_url)
        return database_url, redis_url

    def stop(self) -> None:
        """Stops both servers unless another live process still uses them."""
        if not self._registered:
            return
        with self._locked():
            users = [u for u in self._live_users() if u["id"] != self._id]
            self._write_users(users)
            self._registered = False
            if users:
                log.info("embedded.left_running", run_dir=str(self.run_dir), users=len(users))
                return
            self.stop_servers()
        log.info("embedded.stopped", run_dir=str(self.run_dir))

    def server_pids(self) -> list[int]:
        """PIDs of the running servers (postmaster and redis-server), for tests and tooling."""
        postmaster = self._postgres.postmaster()
        return [p.pid for p in self._redis.processes()] + ([postmaster.pid] if postmaster else [])

    def stop_servers(self) -> None:
        """Stops both servers whoever uses them: cleanup after a crash, or `rm -rf` prep."""
        try:
            self._redis.stop()
        finally:  # Postgres must stop even if Redis would not
            self._postgres.stop()

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        with open(self.run_dir / "embedded.lock", "a") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)  # released when the file closes, even on a crash
            yield

    def _me(self) -> dict[str, Any]:
        me = ProcessIdentity.current()
        return {"id": self._id, "pid": me.pid, "created": me.started}

    def _live_users(self) -> list[dict[str, Any]]:
        try:
            users = json.loads(self._users_path.read_text())
        except (FileNotFoundError, ValueError):
            return []
        return [user for user in users if _is_alive(user)]

    def _write_users(self, users: list[dict[str, Any]]) -> None:
        tmp = self._users_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(users))
        tmp.replace(self._users_path)


def _is_alive(user: dict[str, Any]) -> bool:
    """True if the user's process still runs; a recycled PID has another start time."""
    try:
        identity = ProcessIdentity(pid=int(user["pid"]), started=float(user["created"]))
        return identity.verify() is not None
    except (psutil.Error, KeyError, TypeError, ValueError):
        return False
