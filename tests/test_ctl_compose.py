"""docker-compose.yml and the Dockerfile: the file validates with Docker Compose itself, and
every command, entrypoint and healthcheck in them names something that exists here."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import subprocess
import tomllib
from fnmatch import fnmatch
from typing import Any

import pytest
import yaml

from tests.support import ROOT, require_debian_packages

COMPOSE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"
OUR_SERVICES = {"migrate", "api", "reaper", "worker", "flower"}


def _compose_cli() -> list[str] | None:
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    if shutil.which("docker"):
        probe = subprocess.run(["docker", "compose", "version"], capture_output=True)
        if probe.returncode == 0:
            return ["docker", "compose"]
    return None


def _config(**env: str) -> dict[str, Any]:
    cli = _compose_cli()
    require_debian_packages([] if cli else ["docker-compose"], "docker-compose")
    assert cli is not None
    # A clean environment: the defaults in the file are what gets checked.
    clean = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": "/tmp", **env}
    out = subprocess.run([*cli, "-f", str(COMPOSE), "--profile", "flower", "config"],
                         capture_output=True, text=True, cwd=ROOT, env=clean, timeout=60)
    assert out.returncode == 0, out.stderr
    return yaml.safe_load(out.stdout)


@pytest.fixture(scope="module")
def config() -> dict[str, Any]:
    return _config()


def _module_exists(module: str) -> bool:
    """`python -m module` would run something of ours: a package with __main__, or a module
    that runs itself."""
    spec = importlib.util.find_spec(module)
    if spec is None or spec.origin is None:
        return False
    if spec.submodule_search_locations:  # a package
        return (ROOT / module.replace(".", "/") / "__main__.py").is_file()
    source = (ROOT / (module.replace(".", "/") + ".py"))
    return source.is_file() and '__name__ == "__main__"' in source.read_text()


def _console_scripts() -> set[str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    return set(project.get("scripts", {}))


def _check_argv(argv: list[str], where: str) -> None:
    assert argv, f"{where}: empty command"
    if argv[0] == "python" and argv[1] == "-m":
        assert _module_exists(argv[2]), f"{where}: no module {argv[2]} to run"
    elif argv[0] == "python" and argv[1] == "-c":
        compile(argv[2], where, "exec")
    elif argv[0] == "taskctl":
        assert "taskctl" in _console_scripts(), f"{where}: taskctl is not a console script"
    else:
        raise AssertionError(f"{where}: {argv[0]!r} is not something this image provides")


def test_compose_file_validates_with_the_expected_services(config: dict[str, Any]) -> None:
    services = config["services"]
    assert set(services) == {"postgres", "redis", *OUR_SERVICES}
    assert services["flower"]["profiles"] == ["flower"]
    assert set(config["volumes"]) >= {"pgdata", "redisdata", "logs"}


def test_every_command_and_healthcheck_names_something_that_exists(
        config: dict[str, Any]) -> None:
    for name in OUR_SERVICES:
        service = config["services"][name]
        assert "build" in service, f"{name} must run this repository's image"
        for key in ("command", "entrypoint"):
            if key in service:
                _check_argv(service[key], f"{name}.{key}")
        test = service.get("healthcheck", {}).get("test")
        if test:
            assert test[0] == "CMD", f"{name}: healthchecks run without a shell"
            _check_argv(test[1:], f"{name}.healthcheck")
    # and the image's own default command
    cmd = re.search(r"^CMD (\[.*\])$", DOCKERFILE.read_text(), flags=re.MULTILINE)
    assert cmd, "the Dockerfile has no CMD"
    _check_argv(json.loads(cmd.group(1)), "Dockerfile CMD")


def test_the_dockerfile_copies_only_what_exists_and_is_not_ignored() -> None:
    ignored = [line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()
               if line.strip() and not line.startswith("#")]
    for line in DOCKERFILE.read_text().splitlines():
        if not line.startswith("COPY "):
            continue
        *sources, _dest = line.split()[1:]
        for source in sources:
            assert (ROOT / source).exists(), f"Dockerfile copies a missing {source}"
            assert not any(fnmatch(source, pattern) for pattern in ignored), (
                f"{source} is excluded by .dockerignore")


def test_operational_shape(config: dict[str, Any]) -> None:
    services = config["services"]
    # workers scale: nothing that would clash between replicas
    worker = services["worker"]
    assert "container_name" not in worker and "ports" not in worker
    # the services start after the schema exists, and the databases are healthy
    for name in ("api", "reaper", "worker"):
        deps = services[name]["depends_on"]
        assert deps["migrate"]["condition"] == "service_completed_successfully", name
        assert deps["postgres"]["condition"] == "service_healthy", name
        assert deps["redis"]["condition"] == "service_healthy", name
    assert services["migrate"]["command"] == ["python", "-m", "shared.migrate"]
    assert "pg_isready" in " ".join(services["postgres"]["healthcheck"]["test"])
    assert services["redis"]["healthcheck"]["test"][1:] == ["redis-cli", "ping"]
    assert "/readyz" in " ".join(services["api"]["healthcheck"]["test"])
    # named volumes for data and logs
    assert any(_source(v) == "pgdata" for v in _volumes(services["postgres"]))
    assert any(_source(v) == "redisdata" for v in _volumes(services["redis"]))
    for name in ("api", "reaper", "worker"):
        assert any(_source(v) == "logs" for v in _volumes(services[name])), name
    # every app service reads the same broker and database settings from the environment
    for name in OUR_SERVICES:
        env = services[name]["environment"]
        assert env["REDIS_URL"] == "redis://redis:6379/0", name
        assert env["DATABASE_URL"].endswith("@postgres:5432/taskreaper"), name
        assert env["KEY_PREFIX"] == "taskreaper", name
    assert services["api"]["environment"]["HOST"] == "0.0.0.0"


def test_settings_come_from_the_environment() -> None:
    config = _config(API_TOKEN="s3cret", KEY_PREFIX="blue", WORKER_CONCURRENCY="8")
    for name in OUR_SERVICES:
        env = config["services"][name]["environment"]
        assert (env["API_TOKEN"], env["KEY_PREFIX"]) == ("s3cret", "blue"), name
    assert config["services"]["worker"]["environment"]["WORKER_CONCURRENCY"] == "8"


def _volumes(service: dict[str, Any]) -> list[Any]:
    return service.get("volumes", [])


def _source(volume: Any) -> str:
    return volume.split(":", 1)[0] if isinstance(volume, str) else volume.get("source", "")


def _seconds(duration: Any) -> float:
    """A compose duration ("30s", "1m30s") or a number of seconds, as seconds."""
    if isinstance(duration, (int, float)):
        return float(duration)
    total, unit_of = 0.0, {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001}
    for value, unit in re.findall(r"(\d+(?:\.\d+)?)(ms|h|m|s)", str(duration)):
        total += float(value) * unit_of[unit]
    return total


def test_a_stopped_worker_drains_before_docker_kills_it(config: dict[str, Any]) -> None:
    worker = config["services"]["worker"]
    # SIGTERM reaches the worker's main process (init passes it on), which drains
    assert worker.get("init") is True
    assert worker.get("stop_signal", "SIGTERM") == "SIGTERM"
    assert re.search(r"^STOPSIGNAL SIGTERM$", DOCKERFILE.read_text(), flags=re.MULTILINE)
    # and Docker's SIGKILL comes after the drain's own bound, with room for the exit
    grace = float(worker["environment"]["DRAIN_GRACE"])
    assert grace == 25.0
    assert _seconds(worker["stop_grace_period"]) >= grace + 3
    assert _seconds(worker["stop_grace_period"]) <= 30  # Kubernetes' default
