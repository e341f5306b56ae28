"""Which methods a path answers.

A literal path owns its methods: `GET /api/v1/tasks/cancel-all` is a 405 (Allow: POST),
never the `/api/v1/tasks/{id}` route reading "cancel-all" as a task id. OPTIONS answers 204
with the path's own Allow (CORS adds its headers in headers.py); the router's default would
advertise the methods of every route whose pattern the path happens to match.
"""

from __future__ import annotations

from aiohttp import web
from aiohttp.typedefs import Middleware

from services.api.errors import ApiError, Handler


class Methods:
    """One app's paths and methods, read once its routes are final (at its first request)."""

    def __init__(self) -> None:
        self._literal: dict[str, frozenset[str]] | None = None

    def literal(self, router: web.UrlDispatcher) -> dict[str, frozenset[str]]:
        if self._literal is None:
            out: dict[str, set[str]] = {}
            for resource in router.resources():
                if isinstance(resource, web.PlainResource):
                    out.setdefault(resource.canonical, set()).update(r.method for r in resource)
            self._literal = {path: frozenset(methods) for path, methods in out.items()}
        return self._literal

    async def allowed(self, request: web.Request) -> frozenset[str] | None:
        """The methods of the first route whose path matches, in the order they were added;
        None when no route has this path."""
        router = request.app.router
        owner = self.literal(router).get(request.path)
        if owner is not None:
            return owner
        for resource in router.resources():
            match, methods = await resource.resolve(request)
            if match is not None:
                return frozenset(r.method for r in resource)
            if methods:
                return frozenset(methods)
        return None


def allow_header(methods: frozenset[str]) -> str:
    return ", ".join(sorted(methods | {"OPTIONS"}))


def methods_middleware(methods: Methods) -> Middleware:
    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.method == "OPTIONS":
            allowed = await methods.allowed(request)
            if allowed is None:
                return await handler(request)  # 404 for a path nothing serves
            return web.Response(status=204, headers={"Allow": allow_header(allowed)})
        owner = methods.literal(request.app.router).get(request.path)
        if owner is not None and request.method not in owner:
            raise ApiError(405, "method_not_allowed",
                           f"Method Not Allowed: {request.method} {request.path}",
                           headers={"Allow": allow_header(owner)})
        return await handler(request)

    return middleware
