"""The submit request as the actor catalogue has it: one variant per actor, its kwargs
described from the actor's parameters (shared/params.py), so that what the document calls
valid is what the API accepts, and an actor that is not in the catalogue is invalid.

JSON strings and keys may not hold a NUL character (PostgreSQL's jsonb cannot store one):
the schemas say so at every depth. Nesting deeper than 32 levels is refused too; that one is
only in the description.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from shared.db import Record

Schema = dict[str, Any]

NO_NUL = "^[^\\u0000]*$"
_VALUE = {"$ref": "#/components/schemas/JsonValue"}


def json_value() -> Schema:
    """Any JSON value that PostgreSQL can store."""
    return {
        "description": "Any JSON value without a NUL character in its strings and keys, "
                       "nested at most 32 levels",
        "anyOf": [
            {"type": "null"},
            {"type": "string", "pattern": NO_NUL}, {"type": "number"}, {"type": "boolean"},
            {"type": "array", "items": _VALUE},
            {"type": "object", "additionalProperties": _VALUE,
             "propertyNames": {"pattern": NO_NUL}},
        ],
    }


def _bounds(kind: str, spec: dict[str, Any]) -> Schema:
    low, high = spec.get("min"), spec.get("max")
    names = {"string": ("minLength", "maxLength"), "array": ("minItems", "maxItems"),
             "integer": ("minimum", "maximum"), "number": ("minimum", "maximum")}.get(kind)
    if names is None:
        return {}
    out: Schema = {}
    if low is not None:
        out[names[0]] = math.ceil(low) if kind in ("string", "array") else low
    if high is not None:
        out[names[1]] = math.floor(high) if kind in ("string", "array") else high
    return out


def _kind(kind: str, spec: dict[str, Any]) -> Schema:
    kinds: dict[str, Schema] = {
        "string": {"type": "string", "pattern": NO_NUL},
        "integer": {"type": "integer"},
        "number": {"type": "number"},
        "boolean": {"type": "boolean"},
        "array": {"type": "array", "items": _VALUE},
        "object": {"type": "object", "additionalProperties": _VALUE,
                   "propertyNames": {"pattern": NO_NUL}},
    }
    return {**kinds[kind], **_bounds(kind, spec)}


def param_schema(spec: dict[str, Any]) -> Schema:
    kinds = spec.get("types") or []
    if not kinds:
        return _VALUE
    variants = [_kind(k, spec) for k in kinds]
    if spec.get("nullable"):
        variants.append({"type": "null"})
    return variants[0] if len(variants) == 1 else {"anyOf": variants}


def kwargs_schema(params: dict[str, dict[str, Any]]) -> Schema:
    schema: Schema = {"type": "object", "additionalProperties": False,
                      "properties": {name: param_schema(spec) for name, spec in params.items()}}
    required = [name for name, spec in params.items() if spec.get("required")]
    if required:
        schema["required"] = required
    return schema


def submit_request(generic: Schema, actors: Sequence[Record]) -> Schema:
    """`generic` (any actor name, any kwargs) made exact for each actor of the catalogue."""
    if not actors:
        return generic
    variants = []
    for actor in actors:
        props = dict(generic["properties"])
        props["actor"] = {"type": "string", "enum": [actor["name"]]}
        props["kwargs"] = kwargs_schema(actor["params"])
        required = ["actor", "kwargs"] if props["kwargs"].get("required") else ["actor"]
        variants.append({**generic, "properties": props, "required": required})
    return {"oneOf": variants}
