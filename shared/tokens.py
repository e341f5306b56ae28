"""API tokens and roles: who may do what, and the secrets that prove it.

A token is a random secret shown once when it is made; the DB keeps only its SHA-256. The
secret carries 256 random bits, so a lookup by its hash needs no constant-time compare: what
a timing difference could reveal is a hash, and a hash opens nothing. `API_TOKEN` stays the
bootstrap admin, checked in memory and named `admin` in the audit trail.

Roles are ordered: a viewer reads; an operator also submits, cancels, pauses, resumes and
drains; an admin also forces, force-kills and manages tokens.
"""

from __future__ import annotations

import enum
import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass
from datetime import datetime

import redis.asyncio as aioredis
import redis.exceptions
import structlog

from shared.db import Db, Record
from shared.errors import TaskreaperError
from shared.events import encode
from shared.keys import Keys
from shared.settings import Settings

log = structlog.get_logger("tokens")

BOOTSTRAP_NAME = "admin"
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}$"
NAME_RE = re.compile(NAME_PATTERN)
SECRET_PREFIX = "trk_"
# Announced on the events channel when a token is revoked: its open streams end at once.
REVOKED_EVENT = "token.revoked"


class Role(enum.StrEnum):
    VIEWER = "viewer"
    OPERATOR = "operator"
    ADMIN = "admin"

    def allows(self, needed: Role) -> bool:
        return _RANK[self] >= _RANK[needed]


_RANK = {Role.VIEWER: 0, Role.OPERATOR: 1, Role.ADMIN: 2}


@dataclass(frozen=True)
class Principal:
    """Who a request acts for: the token's owner and role. `secret_hash` names the token
    (for stream tickets and per-token limits) without keeping its secret."""

    name: str
    role: Role
    secret_hash: str


@dataclass(frozen=True)
class NewToken:
    name: str
    role: Role
    created_at: datetime
    secret: str


class TokenError(TaskreaperError):
    """A token operation refused for what it asked."""


class InvalidTokenRequest(TokenError):
    pass


class TokenExists(TokenError):
    def __init__(self, name: str) -> None:
        super().__init__(f"a live token named {name!r} exists; revoke it first")
        self.name = name


class TokenNotFound(TokenError):
    def __init__(self, name: str) -> None:
        super().__init__(f"no live token named {name!r}")
        self.name = name


def hash_secret(secret: str) -> str:
    # Header values may carry surrogate escapes; hash them as the bytes that arrived.
    return hashlib.sha256(secret.encode("utf-8", "surrogateescape")).hexdigest()


def new_secret() -> str:
    return SECRET_PREFIX + secrets.token_urlsafe(32)


def check_name(name: str) -> str:
    if not NAME_RE.fullmatch(name):
        raise InvalidTokenRequest(f"token name must match {NAME_PATTERN}")
    if name == BOOTSTRAP_NAME:
        # The audit trail calls the bootstrap token this; one name, one holder.
        raise InvalidTokenRequest(f"{BOOTSTRAP_NAME!r} names the API_TOKEN bootstrap admin")
    return name


def parse_role(value: str) -> Role:
    try:
        return Role(value)
    except ValueError:
        raise InvalidTokenRequest(
            f"role must be one of {', '.join(r.value for r in Role)}") from None


def _bootstrap(settings: Settings) -> Principal | None:
    if not settings.api_token:
        return None
    return Principal(BOOTSTRAP_NAME, Role.ADMIN, hash_secret(settings.api_token))


async def principal_by_hash(db: Db, settings: Settings, secret_hash: str) -> Principal | None:
    """The live token with this secret hash, or None (unknown or revoked). Read from the DB
    each time: a revocation holds from the next request on."""
    boot = _bootstrap(settings)
    if boot is not None and hmac.compare_digest(secret_hash, boot.secret_hash):
        return boot
    row = await db.live_api_token(secret_hash)
    if row is None:
        return None
    return Principal(row["name"], Role(row["role"]), secret_hash)


async def authenticate(db: Db, settings: Settings, secret: str) -> Principal | None:
    return await principal_by_hash(db, settings, hash_secret(secret))


class Tokens:
    """Making, listing and revoking tokens, with their effects: a revocation also ends the
    revoked token's open event streams (an event every API process hears)."""

    def __init__(self, db: Db, redis: aioredis.Redis | None = None, keys: Keys | None = None
                 ) -> None:
        self.db = db
        self.redis = redis
        self.keys = keys

    async def create(self, name: str, role: str, *, by: str) -> NewToken:
        check_name(name)
        parsed = parse_role(role)
        secret = new_secret()
        row = await self.db.insert_api_token(name, parsed.value, hash_secret(secret), by)
        if row is None:
            raise TokenExists(name)
        log.info("token.created", name=name, role=parsed.value, by=by)
        return NewToken(name, parsed, row["created_at"], secret)

    async def list(self) -> list[Record]:
        return await self.db.list_api_tokens()

    async def revoke(self, name: str, *, by: str) -> Record:
        row = await self.db.revoke_api_token(name, by)
        if row is None:
            raise TokenNotFound(name)
        log.info("token.revoked", name=name, by=by)
        if self.redis is not None and self.keys is not None:
            try:
                await self.redis.publish(self.keys.events_channel, encode(REVOKED_EVENT, name=name))
            except redis.exceptions.RedisError as exc:
                # The DB is the record: every new request is refused already; only streams
                # open now keep running until they end.
                log.warning("token.revoke_event_failed", name=name, error=str(exc))
        return row
