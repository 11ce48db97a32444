"""The dashboard in a real headless browser (Debian's chromium, driven by playwright).

CI installs chromium with ``apt-get install -y chromium``; playwright's own
browser download is never used (``executable_path`` points at the system one).
"""

# ruff: noqa: F811 - the shared fixtures are imported, and pytest passes them as arguments
from __future__ import annotations

import shutil
from pathlib import Path

import pytest

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
            page.goto(api.base_url + "/dashboard")
            page.fill("#key", api.read_key)
            page.click("#login-form button")
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
