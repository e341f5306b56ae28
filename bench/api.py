"""A small client for our HTTP API, as an operator's script would use it."""

from __future__ import annotations

from typing import Any

import aiohttp


class ApiError(RuntimeError):
    pass


class Api:
    def __init__(self, session: aiohttp.ClientSession, base_url: str, token: str) -> None:
        self.http = session
        self.base = base_url.rstrip("/") + "/api/v1"
        self.auth = {"Authorization": f"Bearer {token}"}

    async def _call(self, method: str, path: str, body: dict[str, Any] | None = None,
                    ok: tuple[int, ...] = (200, 202)) -> tuple[int, dict[str, Any]]:
        async with self.http.request(method, self.base + path, json=body,
                                     headers=self.auth) as resp:
            data = await resp.json(content_type=None)
            if resp.status not in ok:
                raise ApiError(f"{method} {path} -> {resp.status}: {data}")
            return resp.status, data

    async def submit(self, actor: str, kwargs: dict[str, Any], *, queue: str | None = None
                     ) -> dict[str, Any]:
        body: dict[str, Any] = {"actor": actor, "kwargs": kwargs}
        if queue is not None:
            body["queue"] = queue
        return (await self._call("POST", "/tasks", body, ok=(202,)))[1]

    async def cancel(self, task_id: str, *, force: bool = False) -> dict[str, Any]:
        return (await self._call("POST", f"/tasks/{task_id}/cancel",
                                 {"reason": "bench", "force": force}))[1]

    async def cancel_all(self, **scope: Any) -> dict[str, Any]:
        return (await self._call("POST", "/tasks/cancel-all",
                                 {"reason": "bench", **scope}, ok=(202,)))[1]

    async def get(self, task_id: str) -> dict[str, Any]:
        return (await self._call("GET", f"/tasks/{task_id}", ok=(200,)))[1]
