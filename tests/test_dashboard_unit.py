"""The dashboard's files as the API serves them: types, caching, headers, and what they may contain."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from yarl import URL

from services.api import dashboard
from services.api.errors import error_middleware
from services.api.openapi import document
from tests.fixtures_api import ApiClient

STATIC = dashboard.STATIC_DIR
INDEX = (STATIC / "index.html").read_text()
SCRIPT = (STATIC / "app.js").read_text()
STYLE = (STATIC / "app.css").read_text()
REFERENCED = re.findall(r'(?:href|src)="/static/([^"]+)"', INDEX)


async def test_the_page_is_html_revalidated_and_locked_down(api: ApiClient) -> None:
    resp = await api.get("/")

    assert resp.status == 200
    assert resp.content_type == "text/html" and resp.charset == "utf-8"
    assert "<title>Taskreaper</title>" in await resp.text()
    assert resp.headers["Cache-Control"] == "no-cache"
    assert re.fullmatch(r'"[0-9a-f]{20}"', resp.headers["ETag"])
    assert resp.headers["X-Content-Type-Options"] == "nosniff"
    csp = resp.headers["Content-Security-Policy"]
    assert "script-src 'self'" in csp and "frame-ancestors 'none'" in csp
    assert "unsafe-inline" not in csp and "unsafe-eval" not in csp


@pytest.mark.parametrize(("name", "content_type"), [
    ("app.js", "text/javascript"), ("app.css", "text/css"), ("favicon.svg", "image/svg+xml")])
async def test_assets_have_their_content_type(api: ApiClient, name: str,
                                              content_type: str) -> None:
    resp = await api.get(f"/static/{name}")

    assert resp.status == 200 and resp.content_type == content_type
    assert await resp.read() == (STATIC / name).read_bytes()
    assert resp.headers["Cache-Control"] == "no-cache" and resp.headers["ETag"]


@pytest.mark.parametrize("path", ["/", "/static/app.js"])
async def test_an_unchanged_file_answers_304_without_a_body(api: ApiClient, path: str) -> None:
    etag = (await api.get(path)).headers["ETag"]

    same = await api.get(path, headers={"If-None-Match": f'"other", {etag}'})
    changed = await api.get(path, headers={"If-None-Match": '"stale"'})

    assert same.status == 304 and await same.read() == b""
    assert same.headers["ETag"] == etag
    assert changed.status == 200


async def test_head_answers_like_get_without_a_body(api: ApiClient) -> None:
    resp = await api.head("/static/app.css")

    assert resp.status == 200 and resp.content_type == "text/css"
    assert await resp.read() == b""


@pytest.mark.parametrize("name", ["nope.js", "index.html", "..", "../app.py", "app.js.map"])
async def test_only_the_shipped_files_are_served(api: ApiClient, name: str) -> None:
    # Sent as written: the client would otherwise resolve the dots itself.
    url = URL.build(scheme="http", host=api.host, port=api.port, path=f"/static/{name}",
                    encoded=True)
    resp = await api.session.get(url)

    assert resp.status == 404
    assert (await resp.json())["error"]["code"] == "not_found"


def test_every_file_the_page_loads_is_shipped_and_described() -> None:
    described = document()["paths"]["/static/{name}"]["get"]["parameters"][0]["schema"]["enum"]
    assert set(REFERENCED) == {"app.css", "app.js", "favicon.svg"}
    assert set(REFERENCED) <= set(dashboard.asset_names()) == set(described)


def test_the_page_loads_nothing_from_elsewhere_and_writes_no_markup() -> None:
    for text in (INDEX, SCRIPT, STYLE):
        assert not re.search(r"(?:https?:)?//[a-z0-9.-]+\.[a-z]{2,}/", text, re.I)
        assert "<script>" not in text and "style=" not in text
    # Server data reaches the page as text: none of the ways to parse a string as markup.
    for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval(",
                 "new Function", "srcdoc"):
        assert sink not in SCRIPT, sink


async def test_without_its_files_the_api_still_runs_and_says_so(
        tmp_path: Path, aiohttp_client: object) -> None:
    app = web.Application(middlewares=[error_middleware])
    dashboard.add_routes(app.router, tmp_path / "absent")
    client: TestClient = await aiohttp_client(app)  # type: ignore[operator]

    resp = await client.get("/")

    assert resp.status == 404
    assert "not installed" in (await resp.json())["error"]["message"]
