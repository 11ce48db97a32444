"""The dashboard in a real headless browser (Debian's chromium, driven by playwright).

CI installs chromium with ``apt-get install -y chromium``; playwright's own
browser download is never used (``executable_path`` points at the system one).
"""

# ruff: noqa: F811 - the shared fixtures are imported, and pytest passes them as arguments
from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from hive_ray import Agent, VirtualAgent
from tests.integration.test_api_support import ApiServer, admin_client, api  # noqa: F401

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]

pytestmark = [
    pytest.mark.ray,
    pytest.mark.skipif(not Path(CHROMIUM).exists(),
                       reason="no chromium: install it with `apt-get install -y chromium` to run the browser test"),
]


def test_dashboard_shows_agents_and_charts_in_a_browser(
        api: ApiServer, admin_client: object, unique_name: str, artifacts_dir: Path) -> None:
    sync_api = pytest.importorskip("playwright.sync_api")
    admin_client.post("/v1/pools", json={"name": unique_name, "agent_type": "echo", "count": 2})  # type: ignore[attr-defined]
    admin_client.get("/v1/overview")  # type: ignore[attr-defined]  # starts the event follower
    for n in range(20):
        admin_client.post("/v1/tasks", params={"wait": 5}, json={"pool": unique_name, "payload": n})  # type: ignore[attr-defined]
    admin_client.post("/v1/tasks", params={"wait": 5}, json={"pool": unique_name, "payload": "last"})  # type: ignore[attr-defined]

    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            errors: list[str] = []
            page.on("pageerror", lambda error: errors.append(str(error)))
            _log_in(page, api)
            page.wait_for_selector(f'tr[data-pool="{unique_name}"]', timeout=15_000)
            agents = page.locator(f'tr[data-pool="{unique_name}"] .agent')
            assert agents.count() == 2
            assert all("ready" in text for text in agents.all_inner_texts())
            # The throughput chart has drawn at least one point of the tasks above.
            page.wait_for_function(
                "() => Number(document.getElementById('throughput').dataset.points || 0) > 0", timeout=15_000)
            drawn = page.evaluate(
                "() => { const c = document.getElementById('throughput');"
                " const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;"
                " let n = 0; for (let i = 3; i < d.length; i += 4) if (d[i]) n++; return n; }")
            assert drawn > 1000, "the chart canvas is (nearly) empty"
            # The key survives a reload (sessionStorage), so the page refreshes on its own.
            page.reload()
            page.wait_for_selector(f'tr[data-pool="{unique_name}"]', timeout=15_000)
            page.screenshot(path=str(artifacts_dir / "dashboard.png"), full_page=True)
            assert errors == []
        finally:
            browser.close()
    admin_client.delete(f"/v1/pools/{unique_name}")  # type: ignore[attr-defined]


class Metered(Agent):
    """Reports a model call per task, as an agent calling a model endpoint itself would."""

    agent_type = "metered-dashboard"

    def handle(self, task):  # type: ignore[no-untyped-def]
        self.context.record_usage(model="fake", endpoint="https://key:secret@models.example/v1",
                                  prompt_tokens=10, completion_tokens=20)
        return task.payload


def test_the_dashboard_shows_tokens_and_cost_per_pool_and_model(api: ApiServer, hive: object) -> None:
    sync_api = pytest.importorskip("playwright.sync_api")
    hive.spawn(Metered, 1)  # type: ignore[attr-defined]
    try:
        assert [hive.run("metered-dashboard", n) for n in range(3)] == [0, 1, 2]  # type: ignore[attr-defined]
        with sync_api.sync_playwright() as playwright:
            browser = _browser(playwright)
            try:
                page = browser.new_page(viewport={"width": 1280, "height": 900})  # type: ignore[attr-defined]
                _log_in(page, api)
                row = page.locator('tr[data-usage="metered-dashboard fake"]')
                row.wait_for(timeout=15_000)
                cells = row.locator("td").all_inner_texts()
                # pool, endpoint (credentials dropped), model, requests, prompt, completion, cost
                assert cells == ["metered-dashboard", "https://models.example/v1", "fake", "3", "30", "60",
                                 "0.0002"]  # 3 x (10 x $1 + 20 x $2) per million: the session's llm_prices
            finally:
                browser.close()  # type: ignore[attr-defined]
    finally:
        hive.stop("metered-dashboard")  # type: ignore[attr-defined]


def _log_in(page: object, api: ApiServer) -> None:
    """Open the dashboard and log in with the read key, as a user does."""
    page.goto(api.base_url + "/dashboard")  # type: ignore[attr-defined]
    page.fill("#key", api.read_key)  # type: ignore[attr-defined]
    page.click("#login-form button")  # type: ignore[attr-defined]


def _browser(playwright: object) -> object:
    return playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)  # type: ignore[attr-defined]


def _painted(page: object, canvas: str, color: tuple[int, int, int]) -> int:
    """Pixels of the canvas painted in (nearly) ``color``."""
    return page.evaluate(  # type: ignore[attr-defined]
        "([id, r, g, b]) => { const c = document.getElementById(id);"
        " const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data; let n = 0;"
        " for (let i = 0; i < d.length; i += 4) if (d[i + 3] > 200 && Math.abs(d[i] - r) < 30"
        " && Math.abs(d[i + 1] - g) < 30 && Math.abs(d[i + 2] - b) < 30) n++; return n; }",
        [canvas, *color])


def test_a_lone_point_is_drawn_on_the_dashboard_charts(api: ApiServer) -> None:
    """One time slice of data (a first burst of tasks) shows as a dot, not an empty chart."""
    import json
    import time

    sync_api = pytest.importorskip("playwright.sync_api")
    point = {"time": time.time() - 5, "succeeded_per_second": 4.2, "failed_per_second": None,
             "latency_p50_seconds": 0.004, "latency_p95_seconds": 0.009}
    overview = {"counters": {"submitted": 21, "succeeded": 21}, "pools": [], "recent_failures": [],
                "series": [point]}
    with sync_api.sync_playwright() as playwright:
        browser = _browser(playwright)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})  # type: ignore[attr-defined]
            # The page's own data call answers one slice, whatever else the session's API has seen.
            page.route("**/v1/overview", lambda route: route.fulfill(
                status=200, content_type="application/json", body=json.dumps(overview)))
            _log_in(page, api)
            page.wait_for_function("() => document.getElementById('latency').dataset.drawn === '2'",
                                   timeout=15_000)
            assert page.evaluate("() => document.getElementById('throughput').dataset.drawn") == "1"
            assert _painted(page, "throughput", (0x3F, 0xB9, 0x50)) > 10, "the lone throughput point is not drawn"
            assert _painted(page, "latency", (0x58, 0xA6, 0xFF)) > 10, "the lone p50 point is not drawn"
            assert _painted(page, "latency", (0xD2, 0x99, 0x22)) > 10, "the lone p95 point is not drawn"
        finally:
            browser.close()  # type: ignore[attr-defined]


def test_the_pages_fetch_nothing_without_a_key_and_the_docs_use_it(api: ApiServer) -> None:
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as playwright:
        browser = _browser(playwright)
        try:
            page = browser.new_page()  # type: ignore[attr-defined]
            requests: list[tuple[str, str | None]] = []
            page.on("request", lambda request: requests.append(
                (request.url, request.headers.get("authorization"))))
            for path in ("/dashboard", "/docs"):
                page.goto(api.base_url + path)
                page.wait_for_selector("#login-form", state="visible", timeout=15_000)
            assert [url for url, _ in requests if "/v1/" in url or "openapi" in url] == []
            page.fill("#key", api.read_key)
            page.click("#login-form button")
            page.wait_for_selector('[data-operation="POST /v1/tasks"]', timeout=15_000)
            fetched = [(url, key) for url, key in requests if url.endswith("/openapi.json")]
            assert fetched == [(api.base_url + "/openapi.json", f"Bearer {api.read_key}")]
            assert page.locator(".operation").count() >= 15
            # Self-contained: nothing but this API was asked for.
            assert all(url.startswith(api.base_url) for url, _ in requests), requests
            # A wrong key is refused and the page asks again, keeping nothing.
            page.click("#logout")
            page.wait_for_selector("#login-form", state="visible")
            page.fill("#key", "not-a-key")
            page.click("#login-form button")
            page.wait_for_function("() => document.getElementById('login-error').textContent.length > 0")
            assert page.evaluate("() => sessionStorage.getItem('hive-api-key')") is None
        finally:
            browser.close()  # type: ignore[attr-defined]


class Visitor(VirtualAgent):
    """A virtual agent per key that counts its visits."""

    agent_type = "visitor-dashboard"

    def handle(self, task):  # type: ignore[no-untyped-def]
        self.state["visits"] = self.state.get("visits", 0) + 1
        return self.state["visits"]


def test_virtual_agents_show_on_the_dashboard_and_in_metrics(api: ApiServer, hive: object, admin_client: object,
                                                             wait_until: object) -> None:
    sync_api = pytest.importorskip("playwright.sync_api")
    hive.spawn(Visitor, 2)  # type: ignore[attr-defined]
    try:
        hive.ask_many("visitor-dashboard", [(f"v{n}", None) for n in range(30)], progress=False)  # type: ignore[attr-defined]
        line = 'hive_virtual_agents_active{agent_type="visitor-dashboard",pool="visitor-dashboard"} 30.0'
        # The counts come with the hosts' health answers (every health_check_interval_seconds).
        assert wait_until(lambda: line in admin_client.get("/metrics").text, 60)  # type: ignore[attr-defined,operator]
        metrics = admin_client.get("/metrics").text  # type: ignore[attr-defined]
        assert 'hive_virtual_activations_total{agent_type="visitor-dashboard",pool="visitor-dashboard"} 30.0' \
            in metrics
        with sync_api.sync_playwright() as playwright:
            browser = _browser(playwright)
            try:
                page = browser.new_page(viewport={"width": 1280, "height": 900})  # type: ignore[attr-defined]
                _log_in(page, api)
                row = page.locator('tr[data-virtual="visitor-dashboard"]')
                row.wait_for(timeout=15_000)
                cells = row.locator("td").all_inner_texts()
                assert cells[:3] == ["visitor-dashboard", "visitor-dashboard", "30"]
                # Rates need two refreshes: then they are numbers, not "-".
                page.wait_for_function(
                    "() => !document.querySelector('tr[data-virtual=\"visitor-dashboard\"] td:nth-child(4)')"
                    ".textContent.includes('-')", timeout=15_000)
            finally:
                browser.close()  # type: ignore[attr-defined]
    finally:
        hive.stop("visitor-dashboard")  # type: ignore[attr-defined]
