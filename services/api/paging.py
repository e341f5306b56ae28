"""Pages with a size cap: a page stops growing at MAX_RESPONSE_BYTES, whatever its rows hold,
and its `next` goes on from the last row it carries. A page always carries its first row
(one row is capped by what submit accepts), so paging always moves forward."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from aiohttp import web

Row = TypeVar("Row")
# Room kept for the page's own fields around its items (`next`, `task_id`: under 100 bytes).
ENVELOPE = 256


def fit(rows: Sequence[Row], render: Callable[[Row], Any], budget: int
        ) -> tuple[list[str], bool]:
    """The JSON of as many leading rows as fit in `budget` bytes with the page's envelope,
    and whether any were cut."""
    parts: list[str] = []
    size = ENVELOPE
    for row in rows:
        part = json.dumps(render(row))
        size += len(part.encode()) + 2
        if parts and size > budget:
            return parts, True
        parts.append(part)
    return parts, False


def page_response(fields: dict[str, Any], items: list[str]) -> web.Response:
    """`{...fields, "items": [...]}` from items already in JSON."""
    head = json.dumps(fields)[:-1]
    joiner = ", " if fields else ""
    body = f'{head}{joiner}"items": [{", ".join(items)}]}}'
    return web.Response(body=body.encode(), content_type="application/json")
