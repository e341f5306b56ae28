"""Property-based run of the served OpenAPI document: valid and invalid requests alike
must never produce a 5xx, and every error must use the JSON error envelope."""

from __future__ import annotations

import asyncio
import json
import threading
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest
import schemathesis
from aiohttp import web
from schemathesis import Case, CheckContext, GenerationMode, Response
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    response_schema_conformance,
    status_code_conformance,
)

from services.api.app import create_app
from services.api.openapi import document
from services.api.state import CANCELLER, CELERY, DB
from shared.settings import Settings
from shared.submit import submit
from tests.fixtures_api import ACTORS, register_actor

MAX_EXAMPLES = 30


class ThreadedServer:
    """The API on a free port, on its own loop and thread, so blocking clients can call it."""

    def __init__(self, app: web.Application) -> None:
        self.app = app
        self.loop = asyncio.new_event_loop()
        self.runner = web.AppRunner(app)
        self.url = ""
        self._thread = threading.Thread(target=self._run, name="api-under-test", daemon=True)
        self._ready = threading.Event()

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_until_complete(self.runner.setup())
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        self.loop.run_until_complete(site.start())
        host, port = self.runner.addresses[0][:2]
        self.url = f"http://{host}:{port}"
        self._ready.set()
        self.loop.run_forever()
        self.loop.run_until_complete(self.runner.cleanup())
        self.loop.close()

    def start(self) -> ThreadedServer:
        self._thread.start()
        if not self._ready.wait(15):
            raise RuntimeError("the API did not start")
        return self

    def run(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(15)

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(30)


@pytest.fixture(scope="module")
def served(settings: Settings) -> Iterator[ThreadedServer]:
    server = ThreadedServer(create_app(settings)).start()
    app = server.app
    for name, (fn, queue) in ACTORS.items():
        server.run(register_actor(app[DB], name, fn, queue))
    # Real rows, so listing answers carry tasks (one cancelled) for the conformance checks.
    rows = [server.run(submit(app[DB], app[CELERY], actor="echo", kwargs={"text": str(i)}))
            for i in range(3)]
    server.run(app[CANCELLER].cancel(rows[0]["id"], by="seed", reason="seed"))
    yield server
    server.stop()


def error_envelope(ctx: CheckContext, response: Response, case: Case) -> bool | None:
    """Every 4xx or 5xx answers `{"error": {"code": str, "message": str}}`."""
    if response.status_code < 400:
        return None
    body = response.json()
    assert isinstance(body, dict) and set(body) == {"error"}, body
    assert isinstance(body["error"].get("code"), str), body
    assert isinstance(body["error"].get("message"), str), body
    return None


CHECKS = [not_a_server_error, error_envelope, negative_data_rejection, status_code_conformance,
          content_type_conformance, response_schema_conformance]

# The document the app serves is built by this same function: the served copy is
# compared with it below, so the cases generated here are the served schema's.
schema = schemathesis.openapi.from_dict(document())
schema.config.generation.update(modes=[GenerationMode.POSITIVE, GenerationMode.NEGATIVE],
                                max_examples=MAX_EXAMPLES, database="none")
# An event stream never ends by itself; its behaviour is covered in test_api_ops.py.
schema = schema.exclude(path="/api/v1/events")


def test_the_served_document_is_the_one_tested(served: ThreadedServer) -> None:
    with urllib.request.urlopen(f"{served.url}/api/v1/openapi.json", timeout=5) as resp:
        assert json.load(resp) == json.loads(json.dumps(document()))


@schema.parametrize()
def test_no_request_produces_a_server_error(case: Case, served: ThreadedServer,
                                            settings: Settings) -> None:
    case.call_and_validate(base_url=served.url, checks=CHECKS, timeout=10,
                           headers={"Authorization": f"Bearer {settings.api_token}"})
