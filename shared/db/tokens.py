"""API tokens: made, looked up by the hash of their secret, listed and revoked."""

from __future__ import annotations

from shared.db.base import DbBase, Record


class TokenQueries(DbBase):
    async def insert_api_token(self, name: str, role: str, secret_hash: str, by: str
                               ) -> Record | None:
        """The new token's row; None when a live token already has that name."""
        return await self.pool.fetchrow(self.q["insert_api_token"], name, role, secret_hash, by)

    async def live_api_token(self, secret_hash: str) -> Record | None:
        """name and role of the unrevoked token with this secret hash."""
        return await self.pool.fetchrow(self.q["live_api_token"], secret_hash)

    async def list_api_tokens(self) -> list[Record]:
        return await self.pool.fetch(self.q["list_api_tokens"])

    async def revoke_api_token(self, name: str, by: str) -> Record | None:
        """The revoked token's name, role and time; None when no live token has that name."""
        return await self.pool.fetchrow(self.q["revoke_api_token"], name, by)
