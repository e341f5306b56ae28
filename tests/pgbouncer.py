"""A private PgBouncer in transaction pooling mode, in front of the tests' PostgreSQL.

The deployment contract says the code works behind PgBouncer in transaction mode; test modules
marked `pgbouncer` reach their database through one of these (see the `settings` fixture in
conftest.py). Every database of the upstream server is reachable under its own name, so the
databases the suite creates while it runs need no configuration.

PgBouncer refuses to run as root: started by root it drops to an unprivileged user (its own
`user` setting), and its files live in a scratch directory under /tmp that this user owns.
"""

from __future__ import annotations

import getpass
import os
import pwd
import shutil
import signal
import socket
import subprocess
import time
from urllib.parse import parse_qs, quote, unquote, urlsplit

from tests.faults import scratch_dir
from tests.support import free_port, require_debian_packages

PACKAGE = "pgbouncer"
# Debian installs it in /usr/sbin, which a non-root PATH often lacks.
_SEARCH_PATH = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/sbin"])


def binary() -> str | None:
    return shutil.which("pgbouncer", path=_SEARCH_PATH)


def require_pgbouncer() -> str:
    """The pgbouncer executable; skips the test without it (fails it in CI)."""
    found = binary()
    require_debian_packages([] if found else ["pgbouncer"], PACKAGE)
    assert found is not None
    return found


def _psql() -> str:
    found = shutil.which("psql")
    if found:
        return found
    from pgserver._commands import POSTGRES_BIN_PATH  # the embedded server's own client

    return str(POSTGRES_BIN_PATH / "psql")


def _upstream(url: str) -> tuple[str, int, str, str]:
    """(host or socket directory, port, user, password) of a PostgreSQL URL."""
    parts = urlsplit(url)
    query = parse_qs(parts.query)
    host = query.get("host", [parts.hostname or "127.0.0.1"])[0]
    port = int(query.get("port", [parts.port or 5432])[0])
    user = unquote(parts.username) if parts.username else getpass.getuser()
    password = unquote(parts.password) if parts.password else ""
    return host, port, user, password


def _unprivileged_user(host: str) -> str:
    """Whom PgBouncer runs as when started by root: the owner of the upstream's socket
    directory (the embedded server's own user), else `postgres`, else `nobody`."""
    if host.startswith("/"):
        try:
            owner = pwd.getpwuid(os.stat(host).st_uid)
            if owner.pw_uid != 0:
                return owner.pw_name
        except (OSError, KeyError):
            pass
    try:
        return pwd.getpwnam("postgres").pw_name
    except KeyError:
        return "nobody"


class PgBouncer:
    """One pgbouncer process; `route(url)` gives the pooled URL of any upstream database."""

    # pool_size bounds the server connections per database: above the client count of the
    # busiest module (workers' pool processes, guardians, reapers, the test's own pool), so no
    # client ever waits for one; only as many as there are concurrent transactions are opened.
    def __init__(self, upstream_url: str, *, pool_size: int = 60,
                 max_client_conn: int = 2000) -> None:
        self.host, self.upstream_port, self.user, self.password = _upstream(upstream_url)
        self.pool_size = pool_size
        self.max_client_conn = max_client_conn
        self.workdir = scratch_dir("pgbouncer")
        self.port = free_port()
        self.log_path = self.workdir / "pgbouncer.log"
        self.proc: subprocess.Popen[bytes] | None = None

    # -- URLs ---------------------------------------------------------------------------

    def url_for(self, database: str) -> str:
        return f"postgresql://{quote(self.user, safe='')}@127.0.0.1:{self.port}/{database}"

    def route(self, url: str) -> str:
        """The same database as `url` (an upstream URL), through this pooler."""
        return self.url_for(urlsplit(url).path.lstrip("/") or self.user)

    # -- process ------------------------------------------------------------------------

    def _config(self, run_as: str | None) -> str:
        quoted = '"' + self.user.replace('"', '""') + '"'
        secret = '"' + self.password.replace('"', '""') + '"'
        (self.workdir / "users.txt").write_text(f"{quoted} {secret}\n")
        lines = [
            "[databases]",
            # Any database name a client asks for, on the upstream server, as the same user.
            f"* = host={self.host} port={self.upstream_port}",
            "",
            "[pgbouncer]",
            "listen_addr = 127.0.0.1",
            f"listen_port = {self.port}",
            "unix_socket_dir =",
            # Clients are this machine's tests; the upstream does its own authentication with
            # the password from the auth file (none for a trust server).
            "auth_type = trust",
            f"auth_file = {self.workdir / 'users.txt'}",
            f"admin_users = {self.user}",
            "pool_mode = transaction",
            f"default_pool_size = {self.pool_size}",
            "min_pool_size = 0",
            "reserve_pool_size = 0",
            f"max_client_conn = {self.max_client_conn}",
            "server_login_retry = 1",
            "ignore_startup_parameters = extra_float_digits",
            "log_connections = 0",
            "log_disconnections = 0",
        ]
        if run_as:
            lines.append(f"user = {run_as}")
        return "\n".join(lines) + "\n"

    def start(self, timeout: float = 15.0) -> PgBouncer:
        exe = require_pgbouncer()
        run_as = _unprivileged_user(self.host) if os.geteuid() == 0 else None
        config = self.workdir / "pgbouncer.ini"
        config.write_text(self._config(run_as))
        for path in (self.workdir / "users.txt", config):
            path.chmod(0o600)
        if run_as:
            entry = pwd.getpwnam(run_as)
            for path in (self.workdir, self.workdir / "users.txt", config):
                os.chown(path, entry.pw_uid, entry.pw_gid)
        self._log = open(self.log_path, "ab")  # noqa: SIM115
        self.proc = subprocess.Popen([exe, str(config)], stdout=self._log,
                                     stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"pgbouncer exited with {self.proc.returncode}:\n{self.log()}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return self
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"pgbouncer did not listen on {self.port}:\n{self.log()}")

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-4000:]
        except OSError:
            return ""

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)  # immediate shutdown: clients are dropped
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)

    def remove(self) -> None:
        self.stop()
        if self.proc is not None:
            self._log.close()
        shutil.rmtree(self.workdir, ignore_errors=True)

    # -- admin console ------------------------------------------------------------------

    def show(self, what: str) -> list[dict[str, str]]:
        """`SHOW <what>` on the admin console (simple query protocol only, hence psql)."""
        out = subprocess.run(
            [_psql(), "-X", "-q", "-h", "127.0.0.1", "-p", str(self.port), "-U", self.user,
             "-d", "pgbouncer", "-A", "-F", "\x1f", "-P", "footer=off", "-c", f"SHOW {what}"],
            capture_output=True, text=True, timeout=10, check=True,
            env={**os.environ, "PGCONNECT_TIMEOUT": "5"}).stdout
        lines = [line for line in out.splitlines() if line]
        if not lines:
            return []
        header = lines[0].split("\x1f")
        return [dict(zip(header, line.split("\x1f"), strict=True)) for line in lines[1:]]

    def server_pids(self) -> set[int]:
        """PostgreSQL backend pids of PgBouncer's server connections."""
        return {int(row["remote_pid"]) for row in self.show("SERVERS")}
