"""Reading request input strictly: bodies, fields, query parameters and ids.

Status rule: 400 for anything the published OpenAPI schema rejects (malformed JSON,
wrong types, unknown fields, bad ids); 422 for requests the schema allows but the
actor catalogue does not (see tasks.py).
"""

from __future__ import annotations

import json
import math
import re
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any, NoReturn

from aiohttp import web

from services.api.errors import ApiError

# Names that end up in Redis keys and log lines: no spaces, no control characters.
NAME_PATTERN = r"^[A-Za-z0-9_.:-]+$"
NAME_MAX = 200
QUEUE_PATTERN = r"^[A-Za-z0-9_.-]+$"
QUEUE_MAX = 64
REASON_MAX = 500
# Deeper documents are refused before they reach the JSON encoder or PostgreSQL.
MAX_DEPTH = 32
NAME_RE = re.compile(NAME_PATTERN)
QUEUE_RE = re.compile(QUEUE_PATTERN)
_INTEGER = re.compile(r"-?\d{1,18}", re.ASCII)
# RFC 3339, the `date-time` of OpenAPI: stricter than what fromisoformat would take.
_RFC3339 = re.compile(r"\d{4}-\d{2}-\d{2}[Tt]\d{2}:\d{2}:\d{2}(\.\d+)?([Zz]|[+-]\d{2}:\d{2})",
                      re.ASCII)


def _no_constants(name: str) -> NoReturn:
    raise ValueError(f"{name} is not allowed in JSON")


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"number {text[:20]} is out of range")
    return value


def _storable(value: Any) -> str | None:
    """Why PostgreSQL would refuse this JSON document, or None.

    jsonb holds no NUL characters and no unpaired surrogates; iterative, so depth is
    checked without recursing.
    """
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if depth > MAX_DEPTH:
            return f"nested deeper than {MAX_DEPTH} levels"
        if isinstance(item, dict):
            for key, child in item.items():
                if (why := _bad_text(key)) is not None:
                    return f"a key {why}"
                stack.append((child, depth + 1))
        elif isinstance(item, list):
            stack.extend((child, depth + 1) for child in item)
        elif isinstance(item, str) and (why := _bad_text(item)) is not None:
            return f"a string {why}"
    return None


def _bad_text(text: str) -> str | None:
    if "\x00" in text:
        return "contains a NUL character"
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return "contains an unpaired surrogate"
    return None


async def json_object(request: web.Request, *, optional: bool = False) -> dict[str, Any]:
    """The body as a JSON object; an empty body is `{}` when the body is optional.

    Raises 413 (through aiohttp's client_max_size) before reading an oversized body.
    """
    raw = await request.read()
    if not raw.strip():
        if optional:
            return {}
        raise ApiError(400, "invalid_json", "request body must be a JSON object")
    try:
        data = json.loads(raw.decode("utf-8"), parse_constant=_no_constants, parse_float=_finite)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise ApiError(400, "invalid_json", f"malformed JSON: {exc}") from None
    if not isinstance(data, dict):
        raise ApiError(400, "invalid_body", "request body must be a JSON object")
    if (why := _storable(data)) is not None:
        raise ApiError(400, "invalid_body", f"request body rejected: {why}")
    return data


_MISSING: Any = object()


class Body:
    """Typed access to the fields of a JSON object, collecting every problem at once."""

    def __init__(self, data: dict[str, Any], allowed: set[str]) -> None:
        self.data = data
        self.problems: dict[str, str] = {
            name: "unknown field" for name in data if name not in allowed}

    def problem(self, name: str, message: str) -> None:
        self.problems.setdefault(name, message)

    def _get(self, name: str, required: bool = False) -> Any:
        if name in self.data:
            return self.data[name]
        if required:
            self.problem(name, "required")
        return _MISSING

    def string(self, name: str, *, max_length: int, pattern: re.Pattern[str] | None = None,
               required: bool = False) -> str | None:
        value = self._get(name, required)
        if value is _MISSING:
            return None
        if not isinstance(value, str):
            self.problem(name, "must be a string")
        elif len(value) > max_length:
            self.problem(name, f"must be at most {max_length} characters")
        elif pattern is not None and not pattern.fullmatch(value):
            self.problem(name, f"must match {pattern.pattern}")
        else:
            return value
        return None

    def boolean(self, name: str) -> bool | None:
        value = self._get(name)
        if value is _MISSING:
            return None
        if not isinstance(value, bool):
            self.problem(name, "must be a boolean")
            return None
        return value

    def number(self, name: str, *, minimum: float, maximum: float) -> float | None:
        value = self._get(name)
        if value is _MISSING:
            return None
        if isinstance(value, bool) or not isinstance(value, int | float):
            self.problem(name, "must be a number")
        elif not minimum <= value <= maximum:
            self.problem(name, f"must be between {minimum:g} and {maximum:g}")
        else:
            return float(value)
        return None

    def object(self, name: str) -> dict[str, Any] | None:
        value = self._get(name)
        if value is _MISSING:
            return None
        if not isinstance(value, dict):
            self.problem(name, "must be an object")
            return None
        return value

    def timestamp(self, name: str) -> datetime | None:
        """An ISO-8601 date-time with a UTC offset, returned in UTC."""
        value = self._get(name)
        if value is _MISSING:
            return None
        if isinstance(value, str) and _RFC3339.fullmatch(value):
            at = _instant(value)
            if at is not None:
                return at
        self.problem(name, "must be an ISO-8601 date-time with a UTC offset, "
                           "e.g. 2030-01-01T00:00:00Z")
        return None

    def done(self) -> None:
        if self.problems:
            message = "; ".join(f"{k}: {v}" for k, v in self.problems.items())
            raise ApiError(400, "invalid_body", message, details=self.problems)


def _instant(value: str) -> datetime | None:
    """An RFC 3339 date-time in UTC, as the schema's `date-time` allows it: a leap second is
    the instant after :59, and a time within a day of the calendar's ends is the nearest
    instant UTC can hold. None for a date that does not exist (February 30th)."""
    text = value.upper()
    leap = text[17:19] == "60"
    if leap:
        text = text[:17] + "59" + text[19:]
    try:
        local = datetime.fromisoformat(text)
    except ValueError:
        return None
    try:
        return local.astimezone(UTC) + (timedelta(seconds=1) if leap else timedelta())
    except OverflowError:
        return (datetime.min if local.year == 1 else datetime.max).replace(tzinfo=UTC)


def task_id(request: web.Request) -> uuid.UUID:
    raw = request.match_info["id"]
    try:
        return uuid.UUID(raw)
    except ValueError:
        raise ApiError(400, "invalid_id", "task id must be a UUID") from None


def query_name(request: web.Request, name: str) -> str | None:
    value = request.query.get(name)
    if value is None:
        return None
    if len(value) > NAME_MAX or not NAME_RE.fullmatch(value):
        raise ApiError(400, "invalid_query", f"{name} must match {NAME_PATTERN}")
    return value


def query_int(request: web.Request, name: str, *, default: int, minimum: int,
              maximum: int) -> int:
    raw = request.query.get(name)
    if raw is None:
        return default
    if not _INTEGER.fullmatch(raw):
        raise ApiError(400, "invalid_query", f"{name} must be an integer")
    value = int(raw)
    if not minimum <= value <= maximum:
        raise ApiError(400, "invalid_query", f"{name} must be between {minimum} and {maximum}")
    return value
