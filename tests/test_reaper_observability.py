"""What operators see of the reaper: Prometheus metrics and the system status."""

from __future__ import annotations

import asyncio
import urllib.request

from shared.settings import Settings
from tests.support import ServiceProcess, free_port, wait_for


async def test_metrics_are_scrapeable_and_status_shows_leader_and_last_pass(
        settings: Settings, api, tmp_path) -> None:
    # given a reaper serving its metrics on a port of its own
    port = free_port()
    reaper = ServiceProcess("services.reaper", settings.with_(reaper_metrics_port=port),
                            log_path=tmp_path / "reaper.log").start()
    try:
        def scrape() -> str:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=1) as r:
                    return r.read().decode()
            except OSError:
                return ""

        def passes(text: str) -> float:
            for line in text.splitlines():
                if line.startswith("taskreaper_reconcile_passes_total "):
                    return float(line.split()[1])
            return 0.0

        # when a scraper reads it, twice
        first = await wait_for(lambda: asyncio.to_thread(scrape), timeout=15, what="metrics")
        await asyncio.sleep(settings.reconcile_interval * 3)
        second = await asyncio.to_thread(scrape)
        # then passes are counted and moving, and the leader gauge is set
        assert passes(second) > passes(first) >= 0
        assert "taskreaper_reconcile_pass_seconds_bucket" in second
        assert "taskreaper_is_leader 1.0" in second
        # and the API's system status names the leader and the last pass
        resp = await api.get("/api/v1/system/status")
        body = await resp.json()
        assert resp.status == 200
        assert body["reaper"]["leader"] == f"{settings.hostname}:{reaper.pid}"
        status = body["reaper"]["status"]
        assert status["last_pass_ms"] >= 0 and status["last_pass_at"] > 0
        assert "found:zombies" in status
    finally:
        reaper.stop()
