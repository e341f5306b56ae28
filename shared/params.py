"""Actor parameters: derived from a function signature, stored as JSON, checked on submit.

The API validates kwargs against the stored description, so it never imports worker code.
"""

from __future__ import annotations

import inspect
import math
import types
import typing
from dataclasses import dataclass
from typing import Any

_TYPES: dict[type, str] = {str: "string", int: "integer", float: "number", bool: "boolean",
                           list: "array", dict: "object"}


@dataclass(frozen=True)
class Range:
    """Annotated[...] metadata bounding a number (or a string's or list's length)."""

    min: float | None = None
    max: float | None = None


class KwargsError(ValueError):
    def __init__(self, problems: dict[str, str]) -> None:
        super().__init__("; ".join(f"{k}: {v}" for k, v in problems.items()))
        self.problems = problems


def describe(fn: typing.Callable[..., Any]) -> dict[str, dict[str, Any]]:
    """JSON description of every keyword parameter after the context argument."""
    hints = typing.get_type_hints(fn, include_extras=True)
    params = list(inspect.signature(fn).parameters.values())[1:]
    out: dict[str, dict[str, Any]] = {}
    for p in params:
        if p.kind in (p.VAR_KEYWORD, p.VAR_POSITIONAL):
            continue
        spec: dict[str, Any] = {}
        hint = hints.get(p.name, Any)
        if typing.get_origin(hint) is typing.Annotated:
            hint, *meta = typing.get_args(hint)
            for m in meta:
                if isinstance(m, Range):
                    spec.update({k: v for k, v in (("min", m.min), ("max", m.max)) if v is not None})
        nullable, kinds = _unwrap(hint)
        spec["types"] = kinds
        spec["nullable"] = nullable
        if p.default is inspect.Parameter.empty:
            spec["required"] = True
        else:
            spec["required"] = False
            spec["default"] = p.default
        out[p.name] = spec
    return out


def _unwrap(hint: Any) -> tuple[bool, list[str]]:
    if hint is Any:
        return True, []
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(hint)
        nullable = type(None) in args
        kinds = [k for a in args if a is not type(None) for k in _unwrap(a)[1]]
        return nullable, kinds
    base = origin or hint
    if base not in _TYPES:
        raise TypeError(f"unsupported parameter type {hint!r}: use str, int, float, bool, list or dict")
    return False, [_TYPES[base]]


def _matches(value: Any, kind: str) -> bool:
    if kind == "integer":
        # JSON has one number type: 3.0 is the integer 3 (as JSON Schema says too).
        return (isinstance(value, int) and not isinstance(value, bool)) or (
            isinstance(value, float) and value.is_integer())
    if kind == "number":
        return (isinstance(value, int | float) and not isinstance(value, bool)
                and math.isfinite(value))
    return isinstance(value, {"string": str, "boolean": bool, "array": list, "object": dict}[kind])


def validate(spec: dict[str, dict[str, Any]], kwargs: Any) -> dict[str, Any]:
    """Returns kwargs with defaults filled in, or raises KwargsError naming each problem."""
    if not isinstance(kwargs, dict):
        raise KwargsError({"kwargs": "must be an object"})
    problems: dict[str, str] = {}
    for name in kwargs:
        if name not in spec:
            problems[name] = "unknown argument"
    out: dict[str, Any] = {}
    for name, p in spec.items():
        if name not in kwargs:
            if p.get("required"):
                problems[name] = "required"
            else:
                out[name] = p.get("default")
            continue
        value = kwargs[name]
        if value is None:
            if not p.get("nullable"):
                problems[name] = "must not be null"
            out[name] = None
            continue
        kinds = p.get("types") or []
        if kinds and not any(_matches(value, k) for k in kinds):
            problems[name] = f"must be {' or '.join(kinds)}"
            continue
        if isinstance(value, float) and "integer" in kinds and "number" not in kinds:
            value = int(value)  # an integral float where an int is declared: the int
        size = len(value) if isinstance(value, str | list) else value
        if isinstance(size, int | float) and not isinstance(size, bool):
            if "min" in p and size < p["min"]:
                problems[name] = f"must be at least {p['min']}"
            elif "max" in p and size > p["max"]:
                problems[name] = f"must be at most {p['max']}"
        out[name] = value
    if problems:
        raise KwargsError(problems)
    return out
