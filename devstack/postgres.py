"""PostgreSQL from the pgserver wheel, with its data directory under the run directory."""

from __future__ import annotations

import logging
import os
import subprocess
import warnings
from pathlib import Path
from urllib.parse import quote

import psutil
import structlog

from devstack.servers import STOP_TIMEOUT, EmbeddedError, kill_tree
from shared.processes import wait_gone

with warnings.catch_warnings():
    # platformdirs warns at import when XDG_RUNTIME_DIR is unset; its fallback is fine here.
    warnings.simplefilter("ignore")
    import pgserver

log = structlog.get_logger("embedded")
logging.getLogger("pgserver").setLevel(logging.WARNING)

DATABASE = "taskreaper"


class EmbeddedPostgres:
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
            pgserver.pg_ctl(["-w", "-m", "fast", "-t", str(int(STOP_TIMEOUT)), "stop"],
                            pgdata=self.pgdata, user=user, timeout=STOP_TIMEOUT + 5)
        except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as exc:
            log.warning("embedded.postgres_forced_stop", error=repr(exc))
            kill_tree(postmaster)
        wait_gone([postmaster], STOP_TIMEOUT)
