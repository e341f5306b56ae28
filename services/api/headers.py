"""Headers every response carries: the security headers, and CORS for configured origins.

Set as each response is prepared, so error pages, 304s and event streams get them too. A
response that chose its own (the dashboard's stricter CSP) keeps them. CORS is off unless
CORS_ORIGINS names origins: then those origins, and only those, may call from a browser.
"""

from __future__ import annotations

from aiohttp import web

from services.api.state import SETTINGS

SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    # API answers are data, never documents: nothing in them may load, run or be framed.
    "Content-Security-Policy": "default-src 'none'; frame-ancestors 'none'",
    # Task data (kwargs, results, errors) must not be kept by browsers or proxies.
    "Cache-Control": "no-store",
}
_CORS_METHODS = "GET, POST, DELETE"
_CORS_HEADERS = "Authorization, Content-Type"
_CORS_EXPOSE = "Location, Retry-After"


def allowed_origins(raw: str) -> frozenset[str]:
    return frozenset(o.strip().rstrip("/") for o in raw.split(",") if o.strip())


async def add_headers(request: web.Request, response: web.StreamResponse) -> None:
    for name, value in SECURITY_HEADERS.items():
        response.headers.setdefault(name, value)
    origin = request.headers.get("Origin")
    if origin is None:
        return
    origins = allowed_origins(request.app[SETTINGS].cors_origins)
    if origin not in origins and "*" not in origins:
        return
    response.headers["Access-Control-Allow-Origin"] = origin
    response.headers.add("Vary", "Origin")
    response.headers["Access-Control-Expose-Headers"] = _CORS_EXPOSE
    if request.method == "OPTIONS" and "Access-Control-Request-Method" in request.headers:
        response.headers["Access-Control-Allow-Methods"] = _CORS_METHODS
        response.headers["Access-Control-Allow-Headers"] = _CORS_HEADERS
        response.headers["Access-Control-Max-Age"] = "600"
