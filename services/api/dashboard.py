"""The operator dashboard: one HTML page and its assets, served by the API itself.

The files are read once when the app is built and served from memory, so a request
can only ever name one of them (no path handling, no traversal). Every response
carries a strong ETag and `Cache-Control: no-cache`: browsers keep their copy and
revalidate it with a cheap 304, and an upgraded server is never hidden behind a
stale script.
"""

from __future__ import annotations

import functools
import hashlib
from dataclasses import dataclass
from pathlib import Path

import structlog
from aiohttp import web

from services.api.errors import ApiError

log = structlog.get_logger("api.dashboard")

STATIC_DIR = Path(__file__).with_name("static")
INDEX = "index.html"
CONTENT_TYPES = {
    ".html": "text/html",
    ".css": "text/css",
    ".js": "text/javascript",
    ".svg": "image/svg+xml",
}
# The page loads nothing from elsewhere and is never framed; scripts come only from here.
_PAGE_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"),
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
}


@dataclass(frozen=True)
class Asset:
    body: bytes
    content_type: str
    etag: str

    @classmethod
    def read(cls, path: Path) -> Asset:
        body = path.read_bytes()
        return cls(body, CONTENT_TYPES[path.suffix], f'"{hashlib.sha256(body).hexdigest()[:20]}"')


def load_assets(directory: Path = STATIC_DIR) -> dict[str, Asset]:
    """Every servable file in the directory, by name."""
    if not directory.is_dir():
        return {}
    return {p.name: Asset.read(p) for p in sorted(directory.iterdir())
            if p.is_file() and p.suffix in CONTENT_TYPES}


@functools.cache
def asset_names() -> tuple[str, ...]:
    """The names `/static/{name}` answers for (the page itself is served at `/`)."""
    return tuple(n for n in load_assets() if n != INDEX)


def _not_modified(request: web.Request, asset: Asset) -> bool:
    tags = request.headers.get("If-None-Match", "")
    return tags.strip() == "*" or asset.etag in (t.strip() for t in tags.split(","))


def _serve(request: web.Request, asset: Asset, extra: dict[str, str] | None = None) -> web.Response:
    headers = {"ETag": asset.etag, "Cache-Control": "no-cache",
               "X-Content-Type-Options": "nosniff", **(extra or {})}
    if _not_modified(request, asset):
        return web.Response(status=304, headers=headers)
    return web.Response(body=asset.body, content_type=asset.content_type, charset="utf-8",
                        headers=headers)


class Dashboard:
    def __init__(self, assets: dict[str, Asset]) -> None:
        self.assets = assets

    async def index(self, request: web.Request) -> web.Response:
        page = self.assets.get(INDEX)
        if page is None:
            raise ApiError(404, "not_found", "the dashboard is not installed with this server")
        return _serve(request, page, _PAGE_HEADERS)

    async def static(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        asset = self.assets.get(name) if name != INDEX else None
        if asset is None:
            raise ApiError(404, "not_found", "no such file")
        return _serve(request, asset)


def add_routes(router: web.UrlDispatcher, directory: Path = STATIC_DIR) -> None:
    assets = load_assets(directory)
    if INDEX not in assets:
        log.warning("api.dashboard_missing", directory=str(directory))
    dashboard = Dashboard(assets)
    router.add_get("/", dashboard.index)
    router.add_get("/static/{name}", dashboard.static)
