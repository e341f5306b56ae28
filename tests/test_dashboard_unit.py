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


# -- job trees and the modules' shape ---------------------------------------------------------

ROOT = Path(dashboard.__file__).resolve().parents[2]
# A change published with its kind as a literal: encode("tree.resumed", ...),
# publish_event(app, "tasks.submitted", ...), sidecar.publish("task.changed", ex, ...).
PUBLISHED = re.compile(r'\b(?:encode|publish_event|publish|_publish|publish_change)\(\s*'
                       r'(?:[\w.\[\]]+,\s*)?"([a-z]+\.[a-z_]+)"', re.S)


def module_list(name: str, constant: str) -> set[str]:
    found = re.search(rf"const {constant} = (?:new Set\()?\[(.*?)\]", SCRIPTS[name], re.S)
    assert found, (name, constant)
    return set(re.findall(r'"([^"]+)"', found.group(1)))


@pytest.mark.unit
def test_every_module_stays_under_300_lines() -> None:
    for name, text in SCRIPTS.items():
        assert len(text.splitlines()) < 300, name


@pytest.mark.unit
def test_the_page_listens_for_every_change_the_services_publish() -> None:
    # An EventSource drops an event whose name it has no listener for: a kind missing here
    # (a subtree's cancel, a batch submit) would reach the page only with the next poll.
    published = {kind for folder in ("services", "shared")
                 for path in (ROOT / folder).rglob("*.py")
                 for kind in PUBLISHED.findall(path.read_text())}
    assert {"tree.cancel_requested", "tree.pause_requested", "tree.resumed",
            "tasks.submitted", "task.changed"} <= published
    listened = module_list("sync.js", "EVENT_TYPES")
    assert published <= listened, sorted(published - listened)
    # Those that change a tree's totals are a subset of what the stream listens for.
    assert module_list("sync.js", "TREE_EVENTS") <= listened


@pytest.mark.unit
def test_the_page_asks_the_list_and_the_tree_only_what_the_api_documents() -> None:
    paths = document()["paths"]
    list_params = {p["name"] for p in paths["/api/v1/tasks"]["get"]["parameters"]}
    calls = re.findall(r"listTasks\(\{(.*?)\}\)", SCRIPTS["sync.js"], re.S)
    assert calls
    for call in calls:
        assert {e.split(":")[0].strip() for e in call.split(",") if e.strip()} <= list_params
    # Without a state filter the list holds roots only: each unfiltered load says so.
    assert sum("roots: true" in call for call in calls) == len(calls) - 1

    tree = {p["name"]: p for p in paths["/api/v1/tasks/{id}/tree"]["get"]["parameters"]}
    text = SCRIPTS["trees.js"]
    asked = set(re.findall(r'q\.set\("(\w+)"', text)) | set(
        re.findall(r"URLSearchParams\(\{ (\w+):", text))
    assert asked == {"limit", "cursor"} and asked <= set(tree)
    # One page per open node is all a level ever renders: it must be one the API serves.
    page = re.search(r"export const PAGE_SIZE = (\d+);", text)
    assert page, "trees.js names its page size"
    limit = tree["limit"]["schema"]
    assert limit["minimum"] <= int(page.group(1)) <= min(limit["maximum"], 100)


@pytest.mark.unit
def test_the_tree_fields_the_page_reads_are_the_documented_ones() -> None:
    schemas = document()["components"]["schemas"]
    placement = set(schemas["Task"]["properties"]["tree"]["properties"])
    totals = set(schemas["TreeAggregate"]["properties"])
    read_tree: set[str] = set()
    read_totals: set[str] = set()
    for text in SCRIPTS.values():
        # (Not an event's name: "tree.resumed" is no field.)
        read_tree |= set(re.findall(r'(?<!")\btree\??\.(\w+)', text))
        read_totals |= set(re.findall(r"\b(?:aggregate|agg)\??\.(\w+)", text))
    assert {"children", "parent_id"} <= read_tree <= placement, read_tree - placement
    assert {"active", "by_status", "done", "eta_seconds"} <= read_totals <= totals, \
        read_totals - totals


@pytest.mark.unit
def test_every_class_a_script_gives_is_styled() -> None:
    styled = set(re.findall(r"\.([a-zA-Z][\w-]*)", STYLE))
    for name, text in SCRIPTS.items():
        given = set(re.findall(r'classList\.(?:toggle|add|remove|contains)\("([\w-]+)"', text))
        for _, value in re.findall(r'\bclass(?:Name)?\s*[:=]\s*(["`])(.*?)\1', text):
            # A template's fixed words count; `s-${status}` is one of the state classes.
            given |= {w for w in re.sub(r"\$\{[^}]*\}", " ", value).split()
                      if not w.endswith("-")}
        assert given <= styled, (name, sorted(given - styled))


@pytest.mark.unit
def test_tree_controls_are_buttons_named_for_what_they_do() -> None:
    # A toggle and a pager are reached with Tab and pressed with Enter or Space: buttons,
    # each saying what it does to which task (an arrow alone says nothing to a screen reader).
    rows, branches = SCRIPTS["rows.js"], SCRIPTS["branches.js"]
    assert re.search(r'el\("button", \{[^}]*class: "[^"]*tree-toggle', rows)
    assert 'setAttribute("aria-expanded"' in rows and 'setAttribute("aria-label"' in rows
    for action in ("first", "back", "more", "retry"):
        assert re.search(rf'button\("{action}", "[^"]+"\)', branches), action
    assert "ArrowRight" in SCRIPTS["main.js"] and "ArrowLeft" in SCRIPTS["main.js"]
