"""`hive perf` on a real traced run: the HTML report and its charts, in a real browser; baselines as a CI gate.

A private traced orchestrator runs echo and compute work for a few seconds
while its analyzer samples memory; then the ``hive perf`` commands run in this
process (they attach to the session's Ray) exactly as a user would type them.
The report page is screenshotted with Debian's chromium (driven by playwright,
never its own browser download) into the test artifacts.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]

pytestmark = pytest.mark.ray


@pytest.fixture(scope="module")
def traced_run(ray_session: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[SimpleNamespace]:
    import ray

    from hive_ray import Hive

    root = tmp_path_factory.mktemp("perf-report")
    environment = {
        "HIVE_ORCHESTRATOR_NAME": "orchestrator-perf-report", "HIVE_ANALYZER_NAME": "analyzer-perf-report",
        "HIVE_STATE_DIR": str(root / "state"), "HIVE_JOURNAL": "false", "HIVE_TRACING": "true",
        "HIVE_TRACING_SAMPLE_RATIO": "1.0", "HIVE_TRACING_FLUSH_SECONDS": "0.2",
        "HIVE_ANALYZER_SLICE_SECONDS": "1.0", "HIVE_ANALYZER_SAMPLE_SECONDS": "0.5",
    }
    patch = pytest.MonkeyPatch()
    for key, value in environment.items():
        patch.setenv(key, value)
    hive = Hive.connect()  # settings from the HIVE_* variables, as the CLI reads them
    try:
        hive.spawn("echo", count=2, pool="echo")
        hive.spawn("compute", count=1, pool="compute")
        analyzer = hive._call("analyzer")
        until = time.monotonic() + 6.0  # several one-second slices of traffic
        while time.monotonic() < until:
            hive.map("echo", list(range(200)), progress=False)
            hive.map("compute", [{"rounds": 4000}] * 8, progress=False)
            hive.run("echo", "ping")
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            memory = ray.get(analyzer.report.remote())["memory"]
            if memory and min(len(process["series"]) for process in memory) >= 3:
                break
            time.sleep(0.3)
        yield SimpleNamespace(root=root, hive=hive)
    finally:
        try:
            stop_orchestrator(hive)
        finally:
            patch.undo()


def stop_orchestrator(hive: object) -> None:
    """Stop a test's own orchestrator (and its agents), then the client."""
    import ray

    try:
        hive._call("shutdown", timeout=60)  # type: ignore[attr-defined]
        ray.kill(hive._orchestrator, no_restart=True)  # type: ignore[attr-defined]
    finally:
        hive.close()  # type: ignore[attr-defined]


def hive_cli(*arguments: str) -> int:
    from hive_ray._cli import main

    return main(list(arguments))


def test_html_report_has_its_charts_with_data(traced_run: SimpleNamespace, artifacts_dir: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    page = traced_run.root / "perf-report.html"
    assert hive_cli("perf", "report", "--html", str(page)) == 0
    text = capsys.readouterr().out
    assert "hive.handle echo" in text and "hive.map echo" in text and f"written to {page}" in text
    html = page.read_text()
    shutil.copy(page, artifacts_dir / "perf-report.html")
    for chart in ("latency", "percentiles", "memory", "throughput"):
        assert f'data-chart="{chart}"' in html, chart
    assert 'data-operation="hive.handle echo"' in html and 'data-operation="hive.queue compute"' in html
    assert html.count("<polyline") >= 6  # latency lines per operation, memory and throughput lines
    memory_chart = html[html.index('data-chart="memory"'):]
    memory_chart = memory_chart[:memory_chart.index("</svg>")]
    for process in ("orchestrator (orchest", "analyzer (analyzer)", "host echo-0 (agent", "host compute-0"):
        assert process in memory_chart, process  # long legends are cut short with an ellipsis
    assert memory_chart.count("<polyline") >= 4
    assert "<script" not in html and "http://" not in html.replace('xmlns="http://www.w3.org/2000/svg"', "")


def test_text_report_shows_memory_per_process(traced_run: SimpleNamespace,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    assert hive_cli("perf", "report") == 0
    text = capsys.readouterr().out
    lines = text.splitlines()
    start = lines.index("memory per process:")
    table = lines[start + 1: lines.index("", start)]
    assert table[0].split()[:3] == ["process", "kind", "RSS"]
    kind_end = table[0].index("kind") + len("kind")  # names and kinds may hold spaces: by column
    kinds = {line[:kind_end].split("  ")[-1].strip() for line in table[1:]}
    assert {"orchestrator", "analyzer", "agent host"} <= kinds, table
    assert "tracing on, sampling 1 of tasks" in text and "no operations recorded" not in text


def test_an_empty_report_says_sampling_was_the_cause(ray_session: None, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    """Tracing on, traffic seen, nothing sampled: the report names the ratio and the fix."""

    from hive_ray import Hive

    for key, value in {"HIVE_ORCHESTRATOR_NAME": "orchestrator-perf-unsampled",
                       "HIVE_ANALYZER_NAME": "analyzer-perf-unsampled", "HIVE_STATE_DIR": str(tmp_path),
                       "HIVE_JOURNAL": "false", "HIVE_TRACING": "true",
                       "HIVE_TRACING_SAMPLE_RATIO": "0.0"}.items():
        monkeypatch.setenv(key, value)
    hive = Hive.connect()
    try:
        hive.spawn("echo", count=1, pool="echo", placement="packed", agents_per_host=1)
        hive.map("echo", range(300), progress=False)
        assert hive_cli("perf", "report") == 0
        text = capsys.readouterr().out
        assert "no operations recorded, although 300 tasks ran" in text
        assert "the sampling ratio is 0" in text and "HIVE_TRACING_SAMPLE_RATIO=1.0" in text
    finally:
        stop_orchestrator(hive)


def test_json_report_is_machine_readable(traced_run: SimpleNamespace, capsys: pytest.CaptureFixture[str]) -> None:
    from hive_ray._analyzer import PerformanceReport

    assert hive_cli("perf", "report", "--json") == 0
    data = json.loads(capsys.readouterr().out)
    report = PerformanceReport.from_dict(data)
    operations = {each.operation: each for each in report.operations}
    assert operations["hive.handle compute"].count >= 8
    assert operations["hive.handle compute"].p95 > operations["hive.handle echo"].p95
    assert report.import_seconds is not None and report.import_seconds > 0
    assert data["analyzer"]["spans_dropped"] == 0


def test_baseline_save_and_compare_gate_a_regression(traced_run: SimpleNamespace,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    saved = traced_run.root / "baseline.json"
    assert hive_cli("perf", "baseline", "save", str(saved)) == 0
    assert hive_cli("perf", "baseline", "compare", str(saved)) == 0
    assert "no regression" in capsys.readouterr().out
    # A baseline five times faster than now: the current window must read as a regression.
    document = json.loads(saved.read_text())
    slow = max((each for each in document["operations"] if len(each["samples"]) >= 8),
               key=lambda each: each["p95"])
    assert slow["p95"] >= 0.002, "the workload needs an operation slow enough to be material"
    for key in ("p50", "p95", "p99"):
        slow[key] *= 0.2
    slow["samples"] = [value * 0.2 for value in slow["samples"]]
    faster = traced_run.root / "faster-baseline.json"
    faster.write_text(json.dumps(document))
    assert hive_cli("perf", "baseline", "compare", str(faster)) == 1
    assert "REGRESSED" in capsys.readouterr().out
    assert hive_cli("perf", "baseline", "compare", str(traced_run.root / "missing.json")) == 2


@pytest.mark.skipif(not Path(CHROMIUM).exists(),
                    reason="no chromium: install it with `apt-get install -y chromium` to run the browser test")
def test_report_renders_in_a_browser(traced_run: SimpleNamespace, artifacts_dir: Path) -> None:
    sync_api = pytest.importorskip("playwright.sync_api")
    page_file = traced_run.root / "browser-report.html"
    assert hive_cli("perf", "report", "--html", str(page_file)) == 0
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.goto(page_file.as_uri())
            assert page.title() == "hive-ray performance report"
            for chart in ("latency", "percentiles", "memory", "throughput"):
                box = page.locator(f'svg[data-chart="{chart}"]').first.bounding_box()
                assert box is not None and box["width"] > 100 and box["height"] > 50, chart
            page.screenshot(path=str(artifacts_dir / "perf-report.png"), full_page=True)
        finally:
            browser.close()
    assert (artifacts_dir / "perf-report.png").stat().st_size > 10_000
