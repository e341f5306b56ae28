"""A log call must not pass a field named `event`.

structlog takes a log line's name as its first argument, called `event`; a keyword of
the same name raises TypeError at the moment the line is logged. Those lines sit in
error paths (a failed publish, a lost connection), so the TypeError replaces the
handled failure with an unhandled one, and an HTTP request that should have succeeded
answers 500. Reading the source finds every such call without waiting for an outage.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parent.parent
CHECKED = ("services", "shared", "bench")
LOG_METHODS = frozenset({"debug", "info", "warning", "warn", "error", "exception", "critical",
                         "fatal", "msg", "log"})
# A context field named `event` is overwritten by the name of each line logged with it.
BIND_METHODS = frozenset({"bind", "new"})
RESERVED = "event"


def _passes_reserved(call: ast.Call) -> bool:
    for keyword in call.keywords:
        if keyword.arg == RESERVED:
            return True
        # `**{"event": ...}` collides just the same.
        if keyword.arg is None and isinstance(keyword.value, ast.Dict):
            if any(isinstance(k, ast.Constant) and k.value == RESERVED
                   for k in keyword.value.keys):
                return True
    return False


def bad_log_calls(source: str, filename: str = "<source>") -> Iterator[str]:
    """`file:line method(event=...)` for each offending call in the source."""
    for node in ast.walk(ast.parse(source, filename)):
        if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)):
            continue
        method = node.func.attr
        if method in LOG_METHODS | BIND_METHODS and _passes_reserved(node):
            yield f"{filename}:{node.lineno} {method}({RESERVED}=...)"


def python_files() -> list[Path]:
    return sorted(p for folder in CHECKED for p in (ROOT / folder).rglob("*.py"))


def test_no_log_call_passes_a_field_named_event() -> None:
    files = python_files()
    assert len(files) > 50, f"found only {len(files)} files under {CHECKED}"

    bad = [line for path in files
           for line in bad_log_calls(path.read_text(), str(path.relative_to(ROOT)))]

    assert not bad, ("structlog's first argument is `event`; name the field otherwise "
                     "(kind=, event_type=):\n" + "\n".join(bad))


@pytest.mark.parametrize("source", [
    'log.warning("api.event_publish_failed", event=kind, error=str(exc))',
    'self.log.info("x", event="y")',
    'structlog.get_logger("a").error("x", **{"event": 1})',
    'log.bind(event=kind).info("x")',
])
def test_the_rule_finds_a_field_named_event(source: str) -> None:
    assert len(list(bad_log_calls(source))) == 1


@pytest.mark.parametrize("source", [
    'log.warning("api.event_publish_failed", kind=kind)',
    'log.info(event)',
    'asyncio.Event().set()',
    'pubsub.subscribe(event="x")',
    'log.info("x", **fields)',
])
def test_the_rule_leaves_other_calls_alone(source: str) -> None:
    assert list(bad_log_calls(source)) == []
