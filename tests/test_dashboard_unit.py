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
from shared.states import TaskStatus, describe
from tests.fixtures_api import ApiClient

STATIC = dashboard.STATIC_DIR
INDEX = (STATIC / "index.html").read_text()
SCRIPTS = {p.name: p.read_text() for p in sorted(STATIC.glob("*.js"))}
STYLE = (STATIC / "app.css").read_text()
REFERENCED = re.findall(r'(?:href|src)="/static/([^"]+)"', INDEX)
ENTRY = "main.js"
IMPORT = re.compile(r'^\s*(?:import|export)\b[^;]*?\bfrom\s+"([^"]+)"', re.M | re.S)


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
    *((name, "text/javascript") for name in SCRIPTS), ("app.css", "text/css"),
    ("favicon.svg", "image/svg+xml")])
async def test_assets_have_their_content_type(api: ApiClient, name: str,
                                              content_type: str) -> None:
    resp = await api.get(f"/static/{name}")

    assert resp.status == 200 and resp.content_type == content_type
    assert await resp.read() == (STATIC / name).read_bytes()
    assert resp.headers["Cache-Control"] == "no-cache" and resp.headers["ETag"]


@pytest.mark.parametrize("path", ["/", f"/static/{ENTRY}"])
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


@pytest.mark.parametrize("name", ["nope.js", "index.html", "..", "../app.py", "main.js.map"])
async def test_only_the_shipped_files_are_served(api: ApiClient, name: str) -> None:
    # Sent as written: the client would otherwise resolve the dots itself.
    url = URL.build(scheme="http", host=api.host, port=api.port, path=f"/static/{name}",
                    encoded=True)
    resp = await api.session.get(url)

    assert resp.status == 404
    assert (await resp.json())["error"]["code"] == "not_found"


def imports(name: str) -> list[str]:
    return IMPORT.findall(SCRIPTS[name])


@pytest.mark.unit
def test_every_file_the_page_loads_is_shipped_and_described() -> None:
    described = document()["paths"]["/static/{name}"]["get"]["parameters"][0]["schema"]["enum"]
    assert set(REFERENCED) == {"app.css", ENTRY, "favicon.svg"}
    assert set(REFERENCED) <= set(dashboard.asset_names()) == set(described)
    assert set(SCRIPTS) <= set(dashboard.asset_names())


@pytest.mark.unit
def test_the_script_is_one_module_graph_of_shipped_files() -> None:
    # The page loads one module; the browser fetches the rest from its imports.
    assert re.findall(r"<script\b[^>]*>", INDEX) == [
        f'<script type="module" src="/static/{ENTRY}">']
    reached, todo = {ENTRY}, [ENTRY]
    while todo:
        for spec in imports(todo.pop()):
            # Relative to /static/, so a module can only name a file served beside it.
            assert re.fullmatch(r"\./[a-z]+\.js", spec), spec
            assert spec[2:] in SCRIPTS, spec
            if spec[2:] not in reached:
                reached.add(spec[2:])
                todo.append(spec[2:])
    assert reached == set(SCRIPTS), "a module nothing imports"
    for name, text in SCRIPTS.items():
        # Modules are strict already; a sloppy-mode script pasted in would say so.
        assert '"use strict"' not in text and "import(" not in text, name


@pytest.mark.unit
def test_the_page_loads_nothing_from_elsewhere_and_writes_no_markup() -> None:
    for text in (INDEX, STYLE, *SCRIPTS.values()):
        assert not re.search(r"(?:https?:)?//[a-z0-9.-]+\.[a-z]{2,}/", text, re.I)
        assert "<script>" not in text and "style=" not in text
    # Server data reaches the page as text: none of the ways to parse a string as markup.
    for name, text in SCRIPTS.items():
        for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval(",
                     "new Function", "srcdoc"):
            assert sink not in text, (name, sink)


@pytest.mark.unit
def test_the_scripts_compare_with_no_state_and_list_none() -> None:
    # The states and their sets come from GET /api/v1/states; none is copied by hand.
    # ("failed" is also a progress field: a state's name alone is not a copy.)
    names = "|".join(s.value for s in TaskStatus)
    literal = rf"""["'`](?:{names})["'`]"""
    compared = re.compile(rf"(?:[=!]==?|\bcase|\.(?:has|includes|indexOf)\()\s*{literal}"
                          rf"|{literal}\s*[=!]==?")
    for name, text in SCRIPTS.items():
        assert not compared.search(text), (name, compared.search(text))
        for listed in re.findall(r"\[[^\[\]]*\]", text):
            assert len(re.findall(literal, listed)) < 2, (name, listed)


async def test_the_states_are_served_as_the_table_says(api: ApiClient) -> None:
    resp = await api.get("/api/v1/states")

    assert resp.status == 200 and resp.content_type == "application/json"
    assert await resp.json() == describe()


@pytest.mark.unit
def test_every_state_has_its_colour_and_the_palette_is_written_once() -> None:
    for state in TaskStatus:
        assert f".s-{state.value} {{ --c: var(--{state.value}); }}" in STYLE, state.value
    declared = re.findall(r"^\s*(--[a-z0-9-]+):", STYLE, re.M)
    assert declared and len(declared) == len(set(declared)), sorted(declared)


@pytest.mark.unit
async def test_without_its_files_the_api_still_runs_and_says_so(
        tmp_path: Path, aiohttp_client: object) -> None:
    app = web.Application(middlewares=[error_middleware])
    dashboard.add_routes(app.router, tmp_path / "absent")
    client: TestClient = await aiohttp_client(app)  # type: ignore[operator]

    resp = await client.get("/")

    assert resp.status == 404
    assert "not installed" in (await resp.json())["error"]["message"]
