"""The dashboard in headless Chromium against a real API server, worker, reaper and database.

The browser is required: without Chromium and its driver these tests fail, they never skip.
"""

from __future__ import annotations

import asyncio
import functools
import json
import shutil
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from selenium import webdriver
from selenium.common.exceptions import StaleElementReferenceException, WebDriverException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support.select import Select

from services.worker.actor import Actor
from services.worker.actors.distill import distill
from shared.db import Db
from shared.settings import Settings
from tests.support import ServiceProcess, free_port, require_debian_packages
from tests.support import eventually as _eventually

# A long run of real processes: `make test-slow` (CI runs it after `make test`).
pytestmark = pytest.mark.slow

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
CHROME_FLAGS = ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--no-first-run", "--disable-background-networking",
                "--disable-component-update", "--disable-sync")
# The page re-renders its rows: one replaced between its lookup and its read is "not yet".
eventually = functools.partial(_eventually, interval=0.1,
                               ignore=(StaleElementReferenceException,))


def http(method: str, url: str, body: dict[str, Any] | None = None,
         token: str | None = None) -> tuple[int, Any]:
    headers = {"Accept": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    data = None
    if body is not None:
        data = json.dumps(body).encode()
        headers["Content-Type"] = "application/json"
    req = urllib.request.Request(url, data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, json.load(resp)
    except urllib.error.HTTPError as exc:
        return exc.code, json.load(exc)


def start_api(settings: Settings, log_path: Path) -> tuple[ServiceProcess, str]:
    """`python -m services.api` on a free port; returns once /readyz answers 200."""
    port = free_port()
    proc = ServiceProcess("services.api", settings.with_(port=port), log_path=log_path).start()
    url = f"http://127.0.0.1:{port}"

    def ready() -> bool:
        assert proc.proc is not None
        if proc.proc.poll() is not None:
            raise AssertionError(f"the API exited with {proc.proc.returncode}; see {log_path}")
        try:
            return http("GET", f"{url}/readyz")[0] == 200
        except OSError:
            return False

    eventually(ready, timeout=30, what="the API to be ready", interval=0.2)
    return proc, url


def register_actor(settings: Settings, act: Actor) -> None:
    """Writes the catalogue row a starting worker would write."""
    async def upsert() -> None:
        db = await Db.connect(settings.database_url, min_size=1, max_size=1)
        try:
            await db.upsert_actor(act.name, act.queue, act.params, act.options)
        finally:
            await db.close()

    asyncio.run(upsert())


def launch_chromium(profile: Path, *, width: int = 1440, height: int = 900) -> WebDriver:
    require_debian_packages([p for p in (CHROMIUM, CHROMEDRIVER) if shutil.which(p) is None],
                            "chromium chromium-driver")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in CHROME_FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={profile}")
    options.add_argument(f"--window-size={width},{height}")
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))


@pytest.fixture
def api_url(settings: Settings, tmp_path: Path) -> Iterator[str]:
    proc, url = start_api(settings, tmp_path / "api.log")
    yield url
    proc.stop()


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[WebDriver]:
    driver = launch_chromium(tmp_path / "chromium-profile")
    yield driver
    driver.quit()


def row_attr(driver: WebDriver, task_id: str, selector: str, attribute: str) -> str | None:
    found = driver.find_elements(By.CSS_SELECTOR, f'tr.task-row[data-id="{task_id}"] {selector}')
    return found[0].get_attribute(attribute) if found else None


def row_status(driver: WebDriver, task_id: str) -> str | None:
    found = driver.find_elements(By.CSS_SELECTOR, f'tr.task-row[data-id="{task_id}"]')
    return found[0].get_attribute("data-status") if found else None


def browser_errors(driver: WebDriver) -> list[str]:
    """Script errors and failed loads logged by the page (an SSE reconnect is not one)."""
    try:
        entries = driver.get_log("browser")
    except WebDriverException:
        return []
    return [e["message"] for e in entries if e["level"] == "SEVERE"
            and "/api/v1/events" not in e["message"]]


def test_operator_submits_watches_progress_and_cancels_without_a_reload(
        settings: Settings, api_url: str, browser: WebDriver, start_worker: Any,
        start_reaper: Any) -> None:
    # given a worker, a reaper and the dashboard open in a browser
    worker = start_worker(concurrency=1)
    start_reaper()
    browser.get(api_url + "/")
    assert browser.title == "Taskreaper"
    browser.execute_script("window.__sameDocument = 'kept';")
    banner = browser.find_element(By.ID, "token-banner")
    assert banner.is_displayed()

    # when the operator enters the API token once
    browser.find_element(By.ID, "token-input").send_keys(settings.api_token)
    browser.find_element(By.ID, "token-save").click()

    # then it is kept for the tab and the prompt goes away
    assert browser.execute_script(
        "return sessionStorage.getItem('taskreaper.token')") == settings.api_token
    eventually(lambda: not banner.is_displayed(), timeout=5, what="the token prompt to hide")

    # when a distill is submitted from the page
    eventually(lambda: "distill" in [o.get_attribute("value") for o in Select(
        browser.find_element(By.ID, "submit-actor")).options], timeout=20,
        what="the worker's actors in the submit form")
    Select(browser.find_element(By.ID, "submit-actor")).select_by_value("distill")
    kwargs = browser.find_element(By.ID, "submit-kwargs")
    kwargs.clear()
    kwargs.send_keys('{"chunks": 60, "chunk_seconds": 0.25}')
    browser.find_element(By.ID, "submit-button").click()

    # then its row appears and its progress bar moves
    task_id = eventually(lambda: next((r.get_attribute("data-id") for r in browser.find_elements(
        By.CSS_SELECTOR, "tr.task-row") if "distill" in r.text), None), timeout=10,
        what="the submitted task's row")
    assert task_id is not None  # eventually returns only a truthy value
    eventually(lambda: row_status(browser, task_id) == "running", timeout=20,
               what="the task to run")
    seen: list[int] = []

    def moved() -> bool:
        value = row_attr(browser, task_id, ".progress", "data-percent")
        if value and (not seen or int(value) != seen[-1]):
            seen.append(int(value))
        return len(seen) >= 2

    eventually(moved, timeout=15, what="two different progress values")
    assert seen == sorted(seen) and seen[-1] < 100, seen
    width = row_attr(browser, task_id, ".progress-done", "style")
    assert width and "width" in width
    eventually(lambda: "ago" in (row_attr(browser, task_id, ".c-beat span", "textContent") or ""),
               timeout=5, what="a heartbeat age")
    assert row_attr(browser, task_id, ".worker", "textContent") == worker.node
    assert row_attr(browser, task_id, ".c-attempt span", "textContent") == "#1"
    system = browser.find_element(By.ID, "system")
    eventually(lambda: worker.node in system.text, timeout=10, what="the worker in the panel")

    # when the operator cancels it from its row, with a reason that looks like markup
    browser.find_element(
        By.CSS_SELECTOR, f'tr.task-row[data-id="{task_id}"] button[data-action="cancel"]').click()
    dialog = browser.find_element(By.ID, "confirm-dialog")
    eventually(dialog.is_displayed, timeout=5, what="the confirmation dialog")
    reason = '<img id="injected" src="x"> enough'
    browser.find_element(By.ID, "confirm-reason").send_keys(reason)
    browser.find_element(By.ID, "confirm-ok").click()

    # then the row turns cancelled in place, with no reload and the work saved so far kept
    eventually(lambda: row_status(browser, task_id) == "cancelled", timeout=10,
               what="the row to show cancelled")
    assert row_attr(browser, task_id, ".badge", "textContent") == "cancelled"
    assert browser.execute_script("return window.__sameDocument") == "kept"
    status, task = http("GET", f"{api_url}/api/v1/tasks/{task_id}")
    assert status == 200 and task["status"] == "cancelled"
    assert task["cancel"]["reason"] == reason
    assert 0 < task["progress"]["done"] < 60
    row = browser.find_element(By.CSS_SELECTOR, f'tr.task-row[data-id="{task_id}"]')
    assert row.find_element(By.CSS_SELECTOR, '[data-action="resume"]').is_displayed()
    assert not row.find_element(By.CSS_SELECTOR, '[data-action="cancel"]').is_displayed()

    # and the reason is shown as text, never as markup
    browser.find_element(
        By.CSS_SELECTOR, f'tr.task-row[data-id="{task_id}"] button[data-action="details"]').click()
    eventually(lambda: reason in browser.find_element(By.CSS_SELECTOR, "tr.detail").text,
               timeout=5, what="the cancel reason in the details")
    assert browser.find_elements(By.ID, "injected") == []

    # when it is resumed from its row, it runs again as attempt 2 from its checkpoint
    row.find_element(By.CSS_SELECTOR, '[data-action="resume"]').click()
    eventually(lambda: row_status(browser, task_id) == "running"
               and row_attr(browser, task_id, ".c-attempt span", "textContent") == "#2",
               timeout=20, what="the resumed task to run as attempt 2")
    assert http("GET", f"{api_url}/api/v1/tasks/{task_id}")[1]["resumes"] == 1
    assert browser.execute_script("return window.__sameDocument") == "kept"
    assert browser_errors(browser) == []
    # A forced stop, so the worker shuts down without waiting for the rest of the job.
    http("POST", f"{api_url}/api/v1/tasks/{task_id}/cancel", {"force": True}, settings.api_token)
    eventually(lambda: row_status(browser, task_id) == "cancelled", timeout=15,
               what="the resumed task stopped")


def queue_tasks(api_url: str, token: str, n: int) -> list[str]:
    """Tasks scheduled an hour ahead: they stay queued, with or without a worker."""
    ids = []
    for _ in range(n):
        status, task = http("POST", f"{api_url}/api/v1/tasks", {
            "actor": "distill", "kwargs": {"chunks": 3}, "countdown": 3600}, token)
        assert status == 202, task
        ids.append(task["id"])
    return ids


def confirm(driver: WebDriver, *, reason: str = "", force: bool = False) -> None:
    dialog = driver.find_element(By.ID, "confirm-dialog")
    eventually(dialog.is_displayed, timeout=5, what="the confirmation dialog")
    if reason:
        driver.find_element(By.ID, "confirm-reason").send_keys(reason)
    if force:
        driver.find_element(By.ID, "confirm-force").click()
    driver.find_element(By.ID, "confirm-ok").click()
    eventually(lambda: not dialog.is_displayed(), timeout=5, what="the dialog to close")


def bulk_button(driver: WebDriver, label: str) -> Any:
    button = driver.find_element(By.ID, "cancel-filtered")
    eventually(lambda: button.is_enabled() and button.text == label, timeout=10,
               what=f"the bulk cancel button to read {label!r}")
    return button


def test_bulk_cancels_follow_the_filters(settings: Settings, api_url: str,
                                         browser: WebDriver) -> None:
    # given queued tasks that no worker will pick up, and the dashboard with the token set
    register_actor(settings, distill)
    token = settings.api_token
    first = queue_tasks(api_url, token, 2)
    browser.get(api_url + "/")
    browser.execute_script("sessionStorage.setItem('taskreaper.token', arguments[0]);", token)
    browser.execute_script("window.__sameDocument = 'kept';")
    eventually(lambda: all(row_status(browser, i) == "queued" for i in first), timeout=10,
               what="the queued rows")
    assert not browser.find_element(By.ID, "cancel-filtered").is_enabled()  # no filter yet

    # when filtered by actor alone, the bulk cancel is one server-side cancel-all for that actor
    Select(browser.find_element(By.ID, "filter-actor")).select_by_value("distill")
    bulk_button(browser, "Cancel all distill").click()
    confirm(browser)
    eventually(lambda: all(row_status(browser, i) == "cancelled" for i in first), timeout=10,
               what="the actor's tasks cancelled")
    for tid in first:
        task = http("GET", f"{api_url}/api/v1/tasks/{tid}")[1]
        assert task["status"] == "cancelled" and task["outcome"] == "never_started"

    # when a state is chosen too, the tasks shown are cancelled one by one
    second = queue_tasks(api_url, token, 2)
    Select(browser.find_element(By.ID, "filter-status")).select_by_value("queued")
    bulk_button(browser, "Cancel filtered (2)").click()
    confirm(browser, reason="bulk from the page")
    Select(browser.find_element(By.ID, "filter-status")).select_by_value("")
    eventually(lambda: all(row_status(browser, i) == "cancelled" for i in second), timeout=10,
               what="the filtered tasks cancelled")
    for tid in second:
        assert http("GET", f"{api_url}/api/v1/tasks/{tid}")[1]["cancel"]["reason"] == \
            "bulk from the page"

    # when everything is cancelled, with force, from the unfiltered page
    third = queue_tasks(api_url, token, 1)
    Select(browser.find_element(By.ID, "filter-actor")).select_by_value("")
    eventually(lambda: row_status(browser, third[0]) == "queued", timeout=10,
               what="the new queued row")
    browser.find_element(By.ID, "cancel-all").click()
    confirm(browser, force=True)

    # then every step happened in the same page, without a reload
    eventually(lambda: row_status(browser, third[0]) == "cancelled", timeout=10,
               what="cancel-all to reach the row")
    assert http("GET", f"{api_url}/api/v1/tasks/{third[0]}")[1]["cancel"]["forced"] is True
    assert browser.execute_script("return window.__sameDocument") == "kept"
    assert browser_errors(browser) == []


def row_button(driver: WebDriver, task_id: str, action: str) -> Any:
    return driver.find_element(By.CSS_SELECTOR,
                               f'tr.task-row[data-id="{task_id}"] [data-action="{action}"]')


def test_pause_and_resume_one_task_or_all_of_them(settings: Settings, api_url: str,
                                                  browser: WebDriver) -> None:
    # given queued tasks that no worker will pick up, and the dashboard with the token set
    register_actor(settings, distill)
    token = settings.api_token
    one, *rest = queue_tasks(api_url, token, 3)
    browser.get(api_url + "/")
    browser.execute_script("sessionStorage.setItem('taskreaper.token', arguments[0]);", token)
    browser.execute_script("window.__sameDocument = 'kept';")
    eventually(lambda: all(row_status(browser, i) == "queued" for i in (one, *rest)),
               timeout=10, what="the queued rows")
    assert not row_button(browser, one, "resume").is_displayed()

    # when one is paused from its row
    row_button(browser, one, "pause").click()

    # then its row says paused in place, and offers a resume instead of a pause
    eventually(lambda: row_status(browser, one) == "paused", timeout=10, what="the row paused")
    assert row_button(browser, one, "resume").is_displayed()
    assert not row_button(browser, one, "pause").is_displayed()
    assert http("GET", f"{api_url}/api/v1/tasks/{one}")[1]["pause"]["by"]

    # when it is resumed from its row, it is queued again
    row_button(browser, one, "resume").click()
    eventually(lambda: row_status(browser, one) == "queued", timeout=10, what="the row queued")

    # when everything is paused with a reason, then resumed, from the toolbar
    browser.find_element(By.ID, "pause-all").click()
    assert not browser.find_element(By.ID, "confirm-force").is_displayed()
    confirm(browser, reason="maintenance window")
    eventually(lambda: all(row_status(browser, i) == "paused" for i in (one, *rest)),
               timeout=10, what="every row paused")
    assert http("GET", f"{api_url}/api/v1/tasks/{rest[0]}")[1]["pause"]["reason"] == \
        "maintenance window"
    browser.find_element(By.ID, "resume-all").click()
    assert not browser.find_element(By.ID, "confirm-reason").is_displayed()
    confirm(browser)
    eventually(lambda: all(row_status(browser, i) == "queued" for i in (one, *rest)),
               timeout=10, what="every row queued again")

    # and all of it happened in the same page, without a reload
    assert browser.execute_script("return window.__sameDocument") == "kept"
    assert browser_errors(browser) == []


# -- job trees -------------------------------------------------------------------------------

def submit_tree(api_url: str, token: str, children: int) -> tuple[str, list[str]]:
    """A root and its children in one batch, scheduled an hour ahead: they stay queued."""
    task = {"actor": "distill", "kwargs": {"chunks": 3}, "countdown": 3600}
    status, made = http("POST", f"{api_url}/api/v1/tasks:batch", {"tasks": [
        {**task, "ref": "root"}, *({**task, "parent_ref": "root"} for _ in range(children))]},
        token)
    assert status == 202, made
    ids = [t["id"] for t in made["tasks"]]
    return ids[0], ids[1:]


def table_ids(driver: WebDriver) -> list[str]:
    """The task rows' ids in the order the table shows them (a tree's children below it)."""
    return driver.execute_script(
        "return [...document.querySelectorAll('#task-rows tr.task-row')].map(r => r.dataset.id)")


def tree_toggle(driver: WebDriver, task_id: str) -> Any:
    return row_button(driver, task_id, "tree")


def tree_line(driver: WebDriver, task_id: str) -> str:
    return row_attr(driver, task_id, ".tree-sub", "textContent") or ""


def test_a_tree_is_one_row_that_opens_to_its_children(settings: Settings, api_url: str,
                                                      browser: WebDriver) -> None:
    # given a root with three children submitted through the API, and the dashboard open
    register_actor(settings, distill)
    token = settings.api_token
    root, children = submit_tree(api_url, token, 3)
    browser.get(api_url + "/")
    browser.execute_script("sessionStorage.setItem('taskreaper.token', arguments[0]);", token)
    browser.execute_script("window.__sameDocument = 'kept';")

    # then the list shows the root alone, collapsed, with its subtree's totals
    eventually(lambda: row_status(browser, root) == "queued", timeout=10, what="the root's row")
    eventually(lambda: "4 queued" in tree_line(browser, root), timeout=10,
               what="the subtree's tasks by state")
    assert "3 children" in tree_line(browser, root)
    toggle = tree_toggle(browser, root)
    assert toggle.get_attribute("aria-expanded") == "false"
    assert "Show the 3 children" in (toggle.get_attribute("aria-label") or "")
    assert not set(children) & set(table_ids(browser))
    # No task has started: no size is known yet.
    assert row_attr(browser, root, ".progress-label span", "textContent") == "not started"

    # when it is opened
    toggle.click()

    # then its three children show right below it, one level in, and nothing else moved in
    def opened() -> bool:
        ids = table_ids(browser)
        at = ids.index(root)
        return sorted(ids[at + 1:at + 4]) == sorted(children)

    eventually(opened, timeout=10, what="the three children below the root")
    assert tree_toggle(browser, root).get_attribute("aria-expanded") == "true"
    nested = browser.find_elements(By.CSS_SELECTOR, "#task-rows tr.task-row.tree-child")
    assert sorted(r.get_attribute("data-id") or "" for r in nested) == sorted(children)
    assert all(r.get_attribute("data-status") == "queued" for r in nested)
    assert browser.find_elements(By.CSS_SELECTOR, "#task-rows tr.tree-pager") == []
    # A leaf has no toggle to reach: its slot only keeps the names in line.
    assert not tree_toggle(browser, children[0]).is_displayed()

    # when it is closed from the keyboard, and opened again
    browser.execute_script("arguments[0].focus();", tree_toggle(browser, root))
    browser.switch_to.active_element.send_keys(Keys.ARROW_LEFT)
    eventually(lambda: not set(children) & set(table_ids(browser)), timeout=5,
               what="the children hidden")
    browser.switch_to.active_element.send_keys(Keys.ENTER)
    eventually(opened, timeout=10, what="the children shown again")

    # and the arrows walk the tree: right into the first child's row, left back to the root
    def focused_row() -> str | None:
        return browser.execute_script(
            "const tr = document.activeElement.closest('tr'); return tr && tr.dataset.id")

    browser.switch_to.active_element.send_keys(Keys.ARROW_RIGHT)
    eventually(lambda: focused_row() == table_ids(browser)[table_ids(browser).index(root) + 1],
               timeout=5, what="the focus on the first child")
    browser.switch_to.active_element.send_keys(Keys.ARROW_LEFT)
    eventually(lambda: focused_row() == root, timeout=5, what="the focus back on the root")
    assert browser.switch_to.active_element.get_attribute("data-action") == "tree"

    # when the root is cancelled from its row, the whole tree is, and the open rows say so
    row_button(browser, root, "cancel").click()
    assert "3 children" in browser.find_element(By.ID, "confirm-text").text
    confirm(browser)
    eventually(lambda: all(row_status(browser, i) == "cancelled" for i in (root, *children)),
               timeout=10, what="the tree's rows cancelled")
    eventually(lambda: "4 cancelled" in tree_line(browser, root), timeout=10,
               what="the totals cancelled")
    for tid in children:
        assert http("GET", f"{api_url}/api/v1/tasks/{tid}")[1]["status"] == "cancelled"
    assert browser.execute_script("return window.__sameDocument") == "kept"
    assert browser_errors(browser) == []


def test_ten_thousand_children_show_a_page_at_a_time(settings: Settings, api_url: str,
                                                     browser: WebDriver) -> None:
    # given a root with 10,000 queued children (one batch under its id), and the dashboard
    register_actor(settings, distill)
    token = settings.api_token
    task = {"actor": "distill", "kwargs": {"chunks": 3}, "countdown": 3600}
    status, root = http("POST", f"{api_url}/api/v1/tasks", task, token)
    assert status == 202, root
    status, made = http("POST", f"{api_url}/api/v1/tasks:batch",
                        {"parent_id": root["id"], "tasks": [task] * 10_000}, token)
    assert status == 202 and made["count"] == 10_000, made
    browser.get(api_url + "/")
    browser.execute_script("sessionStorage.setItem('taskreaper.token', arguments[0]);", token)
    eventually(lambda: "10k children" in tree_line(browser, root["id"]), timeout=15,
               what="the root's tree row")
    assert not browser.find_elements(By.CSS_SELECTOR, "#task-rows tr.tree-child")
    closed = len(browser.find_elements(By.CSS_SELECTOR, "#task-rows tr"))

    # when it is opened from the keyboard
    browser.execute_script("arguments[0].focus();", tree_toggle(browser, root["id"]))
    browser.switch_to.active_element.send_keys(Keys.ENTER)

    # then one page of children shows, with a pager that says whose they are and where
    heading = f"Children of distill {root['id'][:8]}: "

    def page() -> tuple[str, list[str]]:
        pager = browser.find_element(By.CSS_SELECTOR, f'tr.tree-pager[data-node="{root["id"]}"]')
        rows = browser.find_elements(By.CSS_SELECTOR, "#task-rows tr.tree-child")
        return pager.text.splitlines()[0], [r.get_attribute("data-id") or "" for r in rows]

    eventually(lambda: page()[0] == f"{heading}1–50 of 10,000", timeout=15, what="the first page")
    first = page()[1]
    assert len(first) == len(set(first)) == 50
    # Fifty children and the pager: the table grew by one page, not by 10,000 rows.
    assert len(browser.find_elements(By.CSS_SELECTOR, "#task-rows tr")) == closed + 51

    # when "More" is pressed from the keyboard, the next page replaces it, and keeps the focus
    more = browser.find_element(By.CSS_SELECTOR, '[data-node] [data-action="more"]')
    browser.execute_script("arguments[0].focus();", more)
    browser.switch_to.active_element.send_keys(Keys.ENTER)
    eventually(lambda: page()[0] == f"{heading}51–100 of 10,000", timeout=15,
               what="the second page")
    second = page()[1]
    assert len(second) == 50 and not set(first) & set(second)
    assert browser.switch_to.active_element.get_attribute("data-action") == "more"

    # and "Previous" goes back to the first page
    browser.find_element(By.CSS_SELECTOR, '[data-node] [data-action="back"]').click()
    eventually(lambda: page() == (f"{heading}1–50 of 10,000", first), timeout=15,
               what="the first page again")
    assert browser_errors(browser) == []
