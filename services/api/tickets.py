"""Stream tickets: a browser's EventSource cannot send an Authorization header, so it asks
for a ticket with its token first and opens the stream with `?ticket=...`.

A ticket lives in Redis for TICKET_TTL seconds (any API process may serve the stream) and
is taken by the first use. It names the token by its secret's hash, so the token is looked
up again when the stream opens: a revocation in between refuses the ticket too.
"""

from __future__ import annotations

import hashlib
import re
import secrets

import redis.asyncio as aioredis

TICKET_TTL = 30
TICKET_PATTERN = r"^[A-Za-z0-9_-]{43}$"
_TICKET_RE = re.compile(TICKET_PATTERN)


def _key(prefix: str, ticket: str) -> str:
    # Stored under its hash: the keys of a Redis dump open no stream.
    return f"{prefix}:events-ticket:{hashlib.sha256(ticket.encode()).hexdigest()}"


async def issue(redis: aioredis.Redis, prefix: str, secret_hash: str) -> str:
    ticket = secrets.token_urlsafe(32)
    await redis.set(_key(prefix, ticket), secret_hash, ex=TICKET_TTL)
    return ticket


async def redeem(redis: aioredis.Redis, prefix: str, ticket: str) -> str | None:
    """The secret hash of the token the ticket was issued to, once; None if unknown, used
    or expired."""
    if not _TICKET_RE.fullmatch(ticket):
        return None
    value = await redis.getdel(_key(prefix, ticket))
    if value is None:
        return None
    return value.decode() if isinstance(value, bytes) else str(value)
