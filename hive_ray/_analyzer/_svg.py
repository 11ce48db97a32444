"""Inline SVG line and bar charts for the HTML report, drawn without any library.

The report must open from a file, offline, years later, so charts are plain SVG
written here rather than a JavaScript charting library loaded from a CDN. Every
piece of text goes through ``html.escape``: operation names come from request
paths, which an attacker controls.
"""

from __future__ import annotations

import html
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

PALETTE = ("#2563eb", "#dc2626", "#16a34a", "#9333ea", "#ea580c", "#0891b2", "#ca8a04", "#db2777")

_WIDTH = 640
_LEFT = 64
_RIGHT = 16
_BOTTOM = 36
_LEGEND_PER_ROW = 4
_LEGEND_LABEL_CHARACTERS = 22
_PLOT_HEIGHT = 170


@dataclass(frozen=True, slots=True)
class Line:
    """One polyline: its legend label and ``(time, value)`` points."""

    label: str
    points: tuple[tuple[float, float], ...]
    dashed: bool = False


def _escape(text: object) -> str:
    return html.escape(str(text), quote=True)


def _truncate(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _relative_time(seconds: float) -> str:
    if abs(seconds) < 0.05:
        return "now"
    if abs(seconds) >= 3600:
        return f"{seconds / 3600:.1f} h"
    if abs(seconds) >= 60:
        return f"{seconds / 60:.0f} min"
    if abs(seconds) < 10:
        return f"{seconds:.1f} s"
    return f"{seconds:.0f} s"


def _open(kind: str, title: str, height: int, attributes: Mapping[str, str]) -> list[str]:
    extra = "".join(f' {_escape(name)}="{_escape(value)}"' for name, value in attributes.items())
    return [
        f'<svg class="chart" data-chart="{_escape(kind)}"{extra} xmlns="http://www.w3.org/2000/svg" '
        f'viewBox="0 0 {_WIDTH} {height}" width="{_WIDTH}" height="{height}" role="img">',
        f"<title>{_escape(title)}</title>",
        f'<text x="{_LEFT}" y="16" class="chart-title">{_escape(title)}</text>',
    ]


def _no_data(parts: list[str], height: int) -> str:
    parts.append(
        f'<text x="{_WIDTH / 2:.0f}" y="{height / 2:.0f}" text-anchor="middle" '
        f'class="no-data">no data</text>'
    )
    parts.append("</svg>")
    return "\n".join(parts)


def _legend(labels: Sequence[str], top: int) -> list[str]:
    parts = []
    item_width = (_WIDTH - _LEFT - _RIGHT) / _LEGEND_PER_ROW
    for index, label in enumerate(labels):
        row, column = divmod(index, _LEGEND_PER_ROW)
        x = _LEFT + column * item_width
        y = top + row * 14
        color = PALETTE[index % len(PALETTE)]
        parts.append(f'<rect x="{x:.1f}" y="{y - 8}" width="10" height="10" fill="{color}"/>')
        parts.append(
            f'<text x="{x + 14:.1f}" y="{y + 1}" class="legend">'
            f"{_escape(_truncate(label, _LEGEND_LABEL_CHARACTERS))}</text>"
        )
    return parts


def line_chart(
    kind: str,
    title: str,
    lines: Sequence[Line],
    *,
    format_value: Callable[[float], str],
    attributes: Mapping[str, str] | None = None,
) -> str:
    """Return an SVG line chart; the x axis shows time relative to the newest point."""
    legend_rows = max(1, math.ceil(len(lines) / _LEGEND_PER_ROW))
    top = 34 + legend_rows * 14
    height = top + _PLOT_HEIGHT + _BOTTOM
    parts = _open(kind, title, height, attributes or {})
    everything = [point for line in lines for point in line.points]
    if not everything:
        return _no_data(parts, height)
    parts += _legend([line.label for line in lines], 34)
    first_time = min(time for time, _ in everything)
    last_time = max(time for time, _ in everything)
    # Everything at one moment (a lone point): it sits mid-chart under a single "now" tick,
    # rather than at the left edge of an invented one-second axis.
    single_moment = last_time == first_time
    time_span = (last_time - first_time) or 1.0
    lowest = min(0.0, min(value for _, value in everything))
    highest = max(value for _, value in everything) * 1.1
    if highest <= lowest:
        highest = lowest + 1.0
    plot_width = _WIDTH - _LEFT - _RIGHT
    bottom = top + _PLOT_HEIGHT

    def x_of(time: float) -> float:
        if single_moment:
            return _LEFT + plot_width / 2
        return _LEFT + (time - first_time) / time_span * plot_width

    def y_of(value: float) -> float:
        return bottom - (value - lowest) / (highest - lowest) * _PLOT_HEIGHT

    for step in range(5):
        value = lowest + (highest - lowest) * step / 4
        y = y_of(value)
        parts.append(
            f'<line x1="{_LEFT}" y1="{y:.1f}" x2="{_WIDTH - _RIGHT}" y2="{y:.1f}" class="grid"/>'
        )
        parts.append(
            f'<text x="{_LEFT - 6}" y="{y + 4:.1f}" text-anchor="end" class="axis">'
            f"{_escape(format_value(value))}</text>"
        )
    for step in (2,) if single_moment else range(3):
        time = last_time if single_moment else first_time + time_span * step / 2
        parts.append(
            f'<text x="{x_of(time):.1f}" y="{bottom + 18}" text-anchor="middle" class="axis">'
            f"{_escape(_relative_time(time - last_time))}</text>"
        )
    for index, line in enumerate(lines):
        color = PALETTE[index % len(PALETTE)]
        dash = ' stroke-dasharray="6 4"' if line.dashed else ""
        ordered = sorted(line.points)
        if len(ordered) == 1:
            time, value = ordered[0]
            parts.append(
                f'<circle cx="{x_of(time):.1f}" cy="{y_of(value):.1f}" r="3" fill="{color}"/>'
            )
            continue
        coordinates = " ".join(f"{x_of(time):.1f},{y_of(value):.1f}" for time, value in ordered)
        parts.append(
            f'<polyline fill="none" stroke="{color}" stroke-width="2"{dash} '
            f'points="{coordinates}"/>'
        )
    parts.append("</svg>")
    return "\n".join(parts)


def bar_chart(
    kind: str,
    title: str,
    groups: Sequence[tuple[str, Sequence[float]]],
    bar_labels: Sequence[str],
    *,
    format_value: Callable[[float], str],
) -> str:
    """Return an SVG chart of horizontal bars: one group per row, one bar per label."""
    left = 200
    bar_height = 9
    row_height = bar_height * len(bar_labels) + 10
    top = 48
    height = top + max(1, len(groups)) * row_height + 16
    parts = _open(kind, title, height, {})
    if not groups:
        return _no_data(parts, height)
    parts += _legend(bar_labels, 34)
    highest = max((value for _, values in groups for value in values), default=0.0) or 1.0
    plot_width = _WIDTH - left - _RIGHT - 60  # room for the value printed after each bar
    for row, (name, values) in enumerate(groups):
        y = top + row * row_height
        parts.append(
            f'<text x="{left - 8}" y="{y + row_height / 2:.1f}" text-anchor="end" class="axis">'
            f"{_escape(_truncate(name, 30))}</text>"
        )
        for index, value in enumerate(values):
            width = max(0.0, value / highest * plot_width)
            bar_y = y + index * bar_height
            parts.append(
                f'<rect x="{left}" y="{bar_y}" width="{width:.1f}" height="{bar_height - 1}" '
                f'fill="{PALETTE[index % len(PALETTE)]}"/>'
            )
            parts.append(
                f'<text x="{left + width + 4:.1f}" y="{bar_y + bar_height - 1}" class="value">'
                f"{_escape(format_value(value))}</text>"
            )
    parts.append("</svg>")
    return "\n".join(parts)
