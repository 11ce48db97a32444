"""The performance report: one record, rendered as a terminal table or a single HTML page.

The HTML page is self-contained (inline CSS and SVG, no scripts, no external
assets) so it can be attached to a ticket or archived next to a benchmark run and
still open unchanged later. All text that reaches the page is escaped.
"""

from __future__ import annotations

import dataclasses
import html
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from hive_ray._analyzer._recommend import ProcessMemory, Recommendation
from hive_ray._analyzer._regression import RegressionResult
from hive_ray._analyzer._svg import Line, bar_chart, line_chart
from hive_ray._analyzer._window import OperationStatistics, SeriesPoint

_MEGABYTE = 1_000_000.0


@dataclass(frozen=True, slots=True, kw_only=True)
class PerformanceReport:
    """Everything the analyzer found, ready to render or to store as JSON.

    ``generated_at`` is epoch seconds; ``series`` maps an operation to its time
    slices, each ``slice_seconds`` wide; ``queue_depths`` maps a pool to its queued
    tasks; ``import_seconds`` is how long ``import hive_ray`` took, if measured.
    """

    generated_at: float
    operations: tuple[OperationStatistics, ...] = ()
    series: Mapping[str, tuple[SeriesPoint, ...]] = field(default_factory=dict)
    memory: tuple[ProcessMemory, ...] = ()
    recommendations: tuple[Recommendation, ...] = ()
    regressions: tuple[RegressionResult, ...] = ()
    import_seconds: float | None = None
    queue_depths: Mapping[str, int] = field(default_factory=dict)
    slice_seconds: float = 5.0
    usage: tuple[Mapping[str, Any], ...] = ()  # tokens per pool, endpoint and model (hive_ray._usage)

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-ready description that :meth:`from_dict` restores."""
        return {
            "generated_at": self.generated_at,
            "operations": [dataclasses.asdict(each) for each in self.operations],
            "series": {
                name: [dataclasses.asdict(point) for point in points]
                for name, points in self.series.items()
            },
            "memory": [
                {**dataclasses.asdict(each), "series": [list(point) for point in each.series]}
                for each in self.memory
            ],
            "recommendations": [dataclasses.asdict(each) for each in self.recommendations],
            "regressions": [dataclasses.asdict(each) for each in self.regressions],
            "import_seconds": self.import_seconds,
            "queue_depths": dict(self.queue_depths),
            "slice_seconds": self.slice_seconds,
            "usage": [dict(row) for row in self.usage],
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> PerformanceReport:
        """Rebuild a report from :meth:`to_dict` output.

        Raises:
            ValueError: if a field is missing or malformed.
        """
        try:
            return cls(
                generated_at=float(data["generated_at"]),
                operations=tuple(OperationStatistics(**each) for each in data["operations"]),
                series={
                    name: tuple(SeriesPoint(**point) for point in points)
                    for name, points in data["series"].items()
                },
                memory=tuple(
                    ProcessMemory(
                        **{**each, "series": tuple(tuple(point) for point in each["series"])}
                    )
                    for each in data["memory"]
                ),
                recommendations=tuple(Recommendation(**each) for each in data["recommendations"]),
                regressions=tuple(RegressionResult(**each) for each in data["regressions"]),
                import_seconds=data["import_seconds"],
                queue_depths={
                    str(pool): int(depth) for pool, depth in data["queue_depths"].items()
                },
                slice_seconds=float(data.get("slice_seconds", 5.0)),
                usage=tuple(_usage_row(row) for row in data.get("usage", ())),
            )
        except (KeyError, TypeError, ValueError) as error:
            raise ValueError(
                f"not a performance report ({error!r}); pass the output of "
                f"PerformanceReport.to_dict()"
            ) from error


_USAGE_FIELDS = ("pool", "endpoint", "model", "requests", "prompt_tokens", "completion_tokens", "cost_usd")
_USAGE_HEADERS = ["pool", "endpoint", "model", "requests", "prompt tokens", "completion tokens", "cost USD"]


def _usage_row(row: Mapping[str, Any]) -> dict[str, Any]:
    cost = row["cost_usd"]
    return {"pool": str(row["pool"]), "endpoint": str(row["endpoint"]), "model": str(row["model"]),
            "requests": int(row["requests"]), "prompt_tokens": int(row["prompt_tokens"]),
            "completion_tokens": int(row["completion_tokens"]), "cost_usd": None if cost is None else float(cost)}


def _usage_cells(report: PerformanceReport) -> list[list[str]]:
    return [[str(row["pool"]), str(row["endpoint"]), str(row["model"]), str(row["requests"]),
             str(row["prompt_tokens"]), str(row["completion_tokens"]),
             "-" if row["cost_usd"] is None else f"{row['cost_usd']:.4f}"] for row in report.usage]


def _milliseconds(seconds: float) -> str:
    return f"{seconds * 1000:.1f}"


def _timestamp(epoch_seconds: float) -> str:
    return datetime.fromtimestamp(epoch_seconds, tz=timezone.utc).isoformat(timespec="seconds")


def _printable(text: str) -> str:
    # Operation names come from requests; keep terminal control sequences out.
    return "".join(character if character.isprintable() else "?" for character in text)


def _table(headers: list[str], rows: list[list[str]]) -> list[str]:
    widths = [max(len(cell) for cell in column) for column in zip(headers, *rows, strict=True)]
    lines = [
        "  ".join(
            headers[0].ljust(widths[0]) if index == 0 else header.rjust(widths[index])
            for index, header in enumerate(headers)
        )
    ]
    for row in rows:
        lines.append(
            "  ".join(
                cell.ljust(widths[0]) if index == 0 else cell.rjust(widths[index])
                for index, cell in enumerate(row)
            )
        )
    return lines


def _operation_rows(report: PerformanceReport) -> tuple[list[str], list[list[str]]]:
    headers = ["operation", "count", "p50 ms", "p95 ms", "p99 ms", "max ms", "req/s", "errors"]
    rows = [
        [
            each.operation,
            str(each.count),
            _milliseconds(each.p50),
            _milliseconds(each.p95),
            _milliseconds(each.p99),
            _milliseconds(each.max),
            f"{each.throughput_per_s:.1f}",
            f"{each.error_rate:.1%}",
        ]
        for each in report.operations
    ]
    return headers, rows


def _memory_rows(report: PerformanceReport) -> tuple[list[str], list[list[str]]]:
    headers = ["process", "kind", "RSS MB", "USS MB", "budget MB"]
    rows = [
        [
            _printable(each.name),
            _printable(each.kind),
            f"{each.rss_bytes / _MEGABYTE:.1f}",
            f"{each.uss_bytes / _MEGABYTE:.1f}",
            f"{each.budget_bytes / _MEGABYTE:.0f}" if each.budget_bytes else "-",
        ]
        for each in sorted(report.memory, key=lambda each: (each.kind, each.name))
    ]
    return headers, rows


def explain_empty(statistics: Mapping[str, Any], tasks_submitted: int | None) -> str:
    """Why a report has no operations, and the command that fixes it.

    Args:
        statistics: the analyzer's ``statistics()``; its ``sampling`` says whether
            the cluster traces and at which ratio (see ``effective_sampling``).
        tasks_submitted: tasks the orchestrator accepted since it started (None: unknown).
    """
    sampling = statistics.get("sampling") or {}
    ratio = float(sampling.get("ratio", 0.0))
    turn_on = ("`hive down`, then `HIVE_TRACING=1 HIVE_TRACING_SAMPLE_RATIO=1.0 hive up`; to trace "
               "the calls of the process that submits work as well, set the same two variables there "
               "(in a notebook, `%env HIVE_TRACING=1` and `%env HIVE_TRACING_SAMPLE_RATIO=1.0` before "
               "`Hive.connect()`)")
    if not sampling.get("tracing"):
        return f"no operations recorded: tracing is off for this cluster. Turn it on: {turn_on}."
    note = f" Note: {sampling['note']}." if sampling.get("note") else ""
    if not tasks_submitted:
        return (f"no operations recorded: tracing is on (the cluster samples {ratio:.0%} of tasks), "
                "but no task has run yet. Run some work, then `hive perf report` again."
                + note)
    share = (f"1 in {round(1 / ratio):,} tasks is traced: about {tasks_submitted * ratio:,.0f} of these"
             if ratio > 0 else "no task is traced")
    return (f"no operations recorded, although {tasks_submitted:,} tasks ran: tracing is on, but the "
            f"sampling ratio is {ratio:g} ({share}), too low for the "
            "traffic seen, or the tasks ran inside traces their caller decided not to sample. Raise "
            "the cluster's ratio: `HIVE_TRACING=1 HIVE_TRACING_SAMPLE_RATIO=1.0` (or the "
            "OpenTelemetry pair `OTEL_TRACES_SAMPLER=parentbased_traceidratio "
            "OTEL_TRACES_SAMPLER_ARG=1.0`), restart with `hive down` and `hive up`, and run the work "
            "again." + note)


def render_text(report: PerformanceReport) -> str:
    """Return the report as plain text for a terminal: operations, queues, then advice."""
    lines = [f"hive-ray performance report, {_timestamp(report.generated_at)}"]
    if report.import_seconds is not None:
        lines.append(f"import hive_ray: {report.import_seconds:.2f} s")
    lines.append("")
    headers, rows = _operation_rows(report)
    if rows:
        lines += _table(headers, [[_printable(row[0]), *row[1:]] for row in rows])
    else:
        lines.append("no operations recorded")
    lines.append("")
    if report.memory:
        lines.append("memory per process:")
        lines += _table(*_memory_rows(report))
    else:
        lines.append("memory per process: not measured yet (the analyzer samples every "
                     "analyzer_sample_seconds; run the report again in a moment)")
    if report.queue_depths:
        lines.append("")
        lines += _table(
            ["pool", "queued"],
            [[_printable(pool), str(depth)] for pool, depth in sorted(report.queue_depths.items())],
        )
    if report.usage:
        lines.append("")
        lines.append("model usage since the orchestrator started:")
        lines += _table(_USAGE_HEADERS, [[_printable(cell) for cell in row] for row in _usage_cells(report)])
    lines.append("")
    if report.recommendations:
        lines.append("recommendations:")
        for number, each in enumerate(report.recommendations, start=1):
            lines.append(f"{number:>3}. [{each.severity.upper()}] {_printable(each.title)}")
            lines.append(f"     -> {_printable(each.action)}")
    else:
        lines.append("recommendations: none, nothing stands out")
    return "\n".join(lines) + "\n"


_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2rem auto; max-width: 1400px; color: #111827; }
table { border-collapse: collapse; margin: 0.5rem 0 1rem; }
th, td { padding: 0.25rem 0.75rem; border-bottom: 1px solid #e5e7eb; text-align: right; }
th:first-child, td:first-child { text-align: left; }
.charts { display: flex; flex-wrap: wrap; gap: 1rem; }
svg.chart { border: 1px solid #e5e7eb; background: #fff; font-size: 11px; }
.chart-title { font-weight: 600; font-size: 13px; }
.grid { stroke: #e5e7eb; } .axis, .legend, .value { fill: #374151; } .no-data { fill: #9ca3af; }
.severity { display: inline-block; min-width: 5rem; font-weight: 600; text-transform: uppercase; }
.severity-critical .severity { color: #b91c1c; } .severity-high .severity { color: #c2410c; }
.severity-medium .severity { color: #a16207; } .severity-low .severity { color: #4b5563; }
.action { margin: 0.2rem 0 0.6rem 5rem; color: #374151; }
"""


def _html_table(headers: list[str], rows: list[list[str]]) -> str:
    head = "".join(f"<th>{html.escape(header)}</th>" for header in headers)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(cell)}</td>" for cell in row) + "</tr>" for row in rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _charts(report: PerformanceReport) -> dict[str, list[str]]:
    def milliseconds(value: float) -> str:
        return f"{value * 1000:.1f} ms"

    latency = [
        line_chart(
            "latency",
            f"{name}: latency over time",
            [
                Line("p50", tuple((point.time, point.p50) for point in points)),
                Line("p95", tuple((point.time, point.p95) for point in points)),
            ],
            format_value=milliseconds,
            attributes={"data-operation": name},
        )
        for name, points in sorted(report.series.items())
    ] or [line_chart("latency", "latency over time", [], format_value=milliseconds)]
    percentiles = bar_chart(
        "percentiles",
        "latency percentiles per operation",
        [(each.operation, (each.p50, each.p95, each.p99)) for each in report.operations],
        ("p50", "p95", "p99"),
        format_value=milliseconds,
    )
    memory_lines = [
        Line(f"{each.name} ({each.kind})", tuple((time, rss) for time, rss in each.series))
        for each in report.memory
    ]
    memory = line_chart(
        "memory",
        "resident memory over time",
        memory_lines,
        format_value=lambda value: f"{value / _MEGABYTE:.0f} MB",
    )
    width = report.slice_seconds or 1.0
    throughput = line_chart(
        "throughput",
        "throughput over time",
        [
            Line(name, tuple((point.time, point.count / width) for point in points))
            for name, points in sorted(report.series.items())
        ],
        format_value=lambda value: f"{value:.1f}/s",
    )
    return {
        "latency": latency,
        "percentiles": [percentiles],
        "memory": [memory],
        "throughput": [throughput],
    }


def render_html(report: PerformanceReport) -> str:
    """Return the report as one self-contained HTML page with inline SVG charts."""
    escape = html.escape
    charts = _charts(report)
    sections = [
        f"<h1>hive-ray performance report</h1><p>Generated {escape(_timestamp(report.generated_at))}"
        + (
            f"; <code>import hive_ray</code> took {report.import_seconds:.2f} s"
            if report.import_seconds is not None
            else ""
        )
        + ".</p>",
        "<section><h2>Recommendations</h2>",
    ]
    if report.recommendations:
        items = "".join(
            f'<li class="severity-{escape(each.severity)}"><span class="severity">'
            f"{escape(each.severity)}</span> {escape(each.title)}"
            f'<p class="action">{escape(each.action)}</p></li>'
            for each in report.recommendations
        )
        sections.append(f'<ol class="recommendations">{items}</ol>')
    else:
        sections.append("<p>Nothing stands out.</p>")
    headers, rows = _operation_rows(report)
    sections += [
        "</section><section><h2>Operations</h2>",
        _html_table(headers, rows),
        f'<div class="charts">{"".join(charts["percentiles"])}{"".join(charts["throughput"])}</div>',
        "</section><section><h2>Latency over time</h2>",
        f'<div class="charts">{"".join(charts["latency"])}</div>',
        "</section><section><h2>Memory</h2>",
        _html_table(*_memory_rows(report)),
        f'<div class="charts">{"".join(charts["memory"])}</div>',
        "</section>",
    ]
    if report.regressions:
        sections += [
            "<section><h2>Regressions against the baseline</h2>",
            _html_table(
                ["operation", "baseline p95 ms", "current p95 ms", "ratio", "p-value", "regressed"],
                [
                    [
                        each.operation,
                        _milliseconds(each.baseline_p95),
                        _milliseconds(each.current_p95),
                        f"{each.ratio:.2f}",
                        f"{each.p_value:.1e}",
                        "yes" if each.regressed else "no",
                    ]
                    for each in report.regressions
                ],
            ),
            "</section>",
        ]
    if report.queue_depths:
        sections += [
            "<section><h2>Queues</h2>",
            _html_table(
                ["pool", "queued"],
                [[pool, str(depth)] for pool, depth in sorted(report.queue_depths.items())],
            ),
            "</section>",
        ]
    if report.usage:
        sections += [
            "<section><h2>Model usage</h2><p>Tokens and cost per pool, endpoint and model since the "
            "orchestrator started (cost from the <code>llm_prices</code> setting).</p>",
            _html_table(_USAGE_HEADERS, _usage_cells(report)),
            "</section>",
        ]
    body = "\n".join(sections)
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        "<title>hive-ray performance report</title>"
        f"<style>{_STYLE}</style></head>\n<body>\n{body}\n</body></html>\n"
    )
