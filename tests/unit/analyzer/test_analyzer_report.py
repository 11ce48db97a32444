"""PerformanceReport: JSON round trip, the terminal table and the self-contained HTML page."""

import json
import random
import re
from xml.etree import ElementTree

from hive_ray._analyzer import (
    OperationTable,
    PerformanceReport,
    PoolLoad,
    ProcessMemory,
    RegressionResult,
    SystemProfile,
    recommend,
    render_html,
    render_text,
)

_MALICIOUS = '<script>alert("x")</script>'


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def _report(*, operation_names=("HTTP GET /tasks", "compute.handle")) -> PerformanceReport:
    clock = FakeClock()
    rng = random.Random(4)
    table = OperationTable(clock=clock, rng=random.Random(5))
    for step in range(200):
        clock.now = step * 0.5
        for name in operation_names:
            table.record(name, rng.lognormvariate(-4, 0.5), ok=rng.random() > 0.02)
    memory = (
        ProcessMemory(
            name="worker-1",
            kind="agent",
            rss_bytes=210_000_000,
            uss_bytes=180_000_000,
            series=tuple((60.0 * minute, 200e6 + 1e6 * minute) for minute in range(12)),
            budget_bytes=500_000_000,
        ),
    )
    regressions = (
        RegressionResult(
            operation=operation_names[0],
            p_value=1e-6,
            baseline_p95=0.01,
            current_p95=0.02,
            ratio=2.0,
            significant=True,
            material=True,
            regressed=True,
        ),
    )
    profile = SystemProfile(
        operations=table.snapshot(),
        series=table.series(),
        memory=memory,
        pools=(PoolLoad(pool="compute", agents=3, queued=6, queue_wait_p95=0.4, handle_p95=0.1),),
        regressions=regressions,
    )
    return PerformanceReport(
        generated_at=1_700_000_000.0,
        operations=table.snapshot(),
        series=table.series(),
        memory=memory,
        recommendations=recommend(profile),
        regressions=regressions,
        import_seconds=0.42,
        queue_depths={"compute": 6},
    )


def test_json_round_trip():
    report = _report()
    text = json.dumps(report.to_dict())
    assert PerformanceReport.from_dict(json.loads(text)) == report


def test_empty_report_round_trips_and_renders():
    report = PerformanceReport(generated_at=0.0)
    assert PerformanceReport.from_dict(json.loads(json.dumps(report.to_dict()))) == report
    assert "no operations recorded" in render_text(report)
    page = render_html(report)
    for kind in ("latency", "percentiles", "memory", "throughput"):
        assert f'data-chart="{kind}"' in page


def test_text_lists_operations_then_recommendations():
    text = render_text(_report())
    header = next(line for line in text.splitlines() if line.startswith("operation"))
    assert header.split() == [
        "operation",
        "count",
        "p50",
        "ms",
        "p95",
        "ms",
        "p99",
        "ms",
        "max",
        "ms",
        "req/s",
        "errors",
    ]
    assert "HTTP GET /tasks" in text and "compute.handle" in text
    assert "import hive_ray: 0.42 s" in text
    assert text.index("HTTP GET /tasks") < text.index("recommendations:")
    assert "[HIGH] pool `compute` is saturated" in text


def test_html_is_self_contained_with_the_four_chart_kinds():
    page = render_html(_report())
    assert page.startswith("<!DOCTYPE html>")
    for kind in ("latency", "percentiles", "memory", "throughput"):
        charts = re.findall(
            rf'<svg class="chart" data-chart="{kind}"[^>]*>\s*<title>[^<]+</title>', page
        )
        assert charts, kind
    assert page.count('data-chart="latency"') == 2  # one per operation
    assert "<polyline" in page
    assert "<script" not in page
    assert not re.search(r'(src|href)="(https?:)?//', page)
    assert "pool `compute` is saturated" in page


def test_html_escapes_a_malicious_operation_name():
    page = render_html(_report(operation_names=(_MALICIOUS, 'a"b&c')))
    assert "<script" not in page
    assert "&lt;script&gt;" in page
    assert 'data-operation="a&quot;b&amp;c"' in page


def test_text_strips_control_characters():
    text = render_text(_report(operation_names=("evil\x1b[2Jname",)))
    assert "\x1b" not in text
    assert "evil?[2Jname" in text


def test_every_chart_is_well_formed_svg_drawn_inside_its_view_box():
    page = render_html(_report(operation_names=(_MALICIOUS, "compute.handle")))
    charts = re.findall(r"<svg .*?</svg>", page, re.S)
    assert len(charts) == 5
    for chart in charts:
        root = ElementTree.fromstring(chart)
        _, _, width, height = (float(part) for part in root.get("viewBox").split())
        for element in root.iter():
            for name in ("x", "y", "cx", "cy", "x1", "x2", "y1", "y2"):
                if element.get(name) is not None:
                    assert -1 <= float(element.get(name)) <= max(width, height) + 1
            for pair in (element.get("points") or "").split():
                x, y = (float(part) for part in pair.split(","))
                assert 0 <= x <= width and 0 <= y <= height
