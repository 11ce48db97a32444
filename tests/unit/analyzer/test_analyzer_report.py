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


# ---------------------------------------------------------------------- a lone point, memory, empty reports
def _only_svg(page: str, kind: str) -> ElementTree.Element:
    match = re.search(rf'<svg class="chart" data-chart="{kind}".*?</svg>', page, re.S)
    assert match, kind
    return ElementTree.fromstring(match.group(0))


def test_a_lone_point_is_drawn_as_a_point_under_a_single_now_tick():
    from hive_ray._analyzer._svg import Line, line_chart

    svg = ElementTree.fromstring(line_chart(
        "throughput", "throughput over time", [Line("echo", ((1_700_000_000.0, 4.2),))],
        format_value=lambda value: f"{value:.1f}/s"))
    ns = "{http://www.w3.org/2000/svg}"
    circles = svg.findall(f"{ns}circle")
    assert len(circles) == 1 and not svg.findall(f"{ns}polyline")
    width = float(svg.get("width"))
    assert abs(float(circles[0].get("cx")) - (64 + (width - 64 - 16) / 2)) < 1  # mid-chart
    time_labels = [text.text for text in svg.findall(f"{ns}text")
                   if text.get("class") == "axis" and text.get("text-anchor") == "middle"]
    assert time_labels == ["now"]
    # The value axis runs from 0 to above the point, so the point sits inside the plot.
    value_labels = [text.text for text in svg.findall(f"{ns}text") if text.get("text-anchor") == "end"]
    assert value_labels[0] == "0.0/s" and float(value_labels[-1].removesuffix("/s")) > 4.2


def test_two_points_a_second_apart_get_readable_time_ticks():
    from hive_ray._analyzer._svg import Line, line_chart

    svg = ElementTree.fromstring(line_chart(
        "latency", "latency", [Line("p50", ((100.0, 0.01), (101.0, 0.02)))],
        format_value=lambda value: f"{value:g}"))
    labels = [text.text for text in svg.iter("{http://www.w3.org/2000/svg}text")
              if text.get("text-anchor") == "middle" and text.get("class") == "axis"]
    assert labels == ["-1.0 s", "-0.5 s", "now"]


def test_a_report_of_one_slice_draws_its_point_in_the_html_page():
    clock = FakeClock()
    clock.now = 1_700_000_000.0
    table = OperationTable(clock=clock, rng=random.Random(1))
    table.record("hive.run echo", 0.004, ok=True)
    report = PerformanceReport(generated_at=clock.now, operations=table.snapshot(), series=table.series())
    page = render_html(report)
    for kind in ("throughput", "latency"):
        svg = _only_svg(page, kind)
        assert svg.findall("{http://www.w3.org/2000/svg}circle"), f"{kind}: the lone point is not drawn"
        assert "0 s" not in ElementTree.tostring(svg, encoding="unicode")


def test_text_report_shows_memory_per_process():
    text = render_text(_report())
    lines = text.splitlines()
    start = lines.index("memory per process:")
    assert lines[start + 1].split() == ["process", "kind", "RSS", "MB", "USS", "MB", "budget", "MB"]
    assert lines[start + 2].split() == ["worker-1", "agent", "210.0", "180.0", "500"]
    assert "memory per process: not measured yet" in render_text(PerformanceReport(generated_at=0.0))


def test_an_empty_report_names_its_cause_and_the_command_that_fixes_it():
    from hive_ray._analyzer import explain_empty

    off = explain_empty({"sampling": {"tracing": False, "ratio": 0.01}}, 5000)
    assert "tracing is off" in off and "HIVE_TRACING=1 HIVE_TRACING_SAMPLE_RATIO=1.0 hive up" in off
    idle = explain_empty({"sampling": {"tracing": True, "ratio": 0.01}}, 0)
    assert "no task has run yet" in idle and "1%" in idle
    sparse = explain_empty({"sampling": {"tracing": True, "ratio": 0.01}}, 5000)
    assert "5,000 tasks ran" in sparse and "1 in 100" in sparse and "too low for the traffic" in sparse
    assert "HIVE_TRACING_SAMPLE_RATIO=1.0" in sparse and "OTEL_TRACES_SAMPLER=parentbased_traceidratio" in sparse
    noted = explain_empty({"sampling": {"tracing": True, "ratio": 0.01, "note": "ARG is ignored"}}, 10)
    assert noted.endswith("Note: ARG is ignored.")
