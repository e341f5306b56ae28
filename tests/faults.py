"""Servers a test may stop and start again: a Redis without persistence and a PostgreSQL.

The shared services of the machine are never restarted by tests; these are private.
Their files live under /tmp rather than pytest's folder, which is private to root and
so unreadable for the PostgreSQL server's own user.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import warnings
from pathlib import Path

import pgserver
import psutil
import redis

from devstack.redis_server import redis_server_binary
from tests.support import eventually, free_port


def scratch_dir(name: str) -> Path:
    path = Path(tempfile.mkdtemp(prefix=f"taskreaper-{name}-"))
    path.chmod(0o755)
    return path


class RedisServer:
    """Keeps nothing on disk: a restart loses every queue, like the CI server would."""

    def __init__(self) -> None:
        self.workdir = scratch_dir("redis")
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(
            [str(redis_server_binary()), "--port", str(self.port), "--bind", "127.0.0.1",
             "--save", "", "--appendonly", "no", "--dir", str(self.workdir)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        client = redis.Redis(port=self.port, socket_connect_timeout=0.2)
        try:
            eventually(client.ping, timeout=10, what=f"the private Redis on port {self.port}",
                       ignore=(redis.ConnectionError,))
        finally:
            client.close()
        return self

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def remove(self) -> None:
        self.stop()
        shutil.rmtree(self.workdir, ignore_errors=True)


class PostgresServer:
    def __init__(self) -> None:
        self.root = scratch_dir("pg")
        self.pgdata = self.root / "data"
        self.pgdata.mkdir()
        self._server: pgserver.PostgresServer | None = None

    def start(self) -> PostgresServer:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            self._server = pgserver.PostgresServer(self.pgdata, cleanup_mode=None)
        return self

    @property
    def admin_url(self) -> str:
        assert self._server is not None
        info = self._server.get_postmaster_info()
        return f"postgresql://postgres@/postgres?host={info.socket_dir}&port={info.port}"

    def url_for(self, database: str) -> str:
        return self.admin_url.replace("/postgres?", f"/{database}?")

    def stop(self) -> None:
        if self._server is None:
            return
        pgserver.pg_ctl(["-w", "-m", "immediate", "stop"], pgdata=self.pgdata,
                        user=self._server.system_user)

    def remove(self) -> None:
        try:
            self.stop()
        except subprocess.CalledProcessError:
            pass
        shutil.rmtree(self.root, ignore_errors=True)

    def postmaster(self) -> psutil.Process | None:
        pidfile = self.pgdata / "postmaster.pid"
        if not pidfile.exists():
            return None
        return psutil.Process(int(pidfile.read_text().split("\n", 1)[0]))
