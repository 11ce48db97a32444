"""Helpers shared by the benchmarks: percentiles, rows, fresh-process timings."""

from __future__ import annotations

import statistics
import subprocess
import sys
from typing import Any


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    index = min(len(ordered) - 1, max(0, round(fraction * (len(ordered) - 1))))
    return ordered[index]


def row(metric: str, value: float, unit: str, baseline_name: str | None = None,
        baseline_value: float | None = None, goal: str = "", **extra: Any) -> dict[str, Any]:
    result: dict[str, Any] = {"metric": metric, "value": round(value, 6), "unit": unit}
    if baseline_name is not None and baseline_value is not None:
        result["baseline"] = {"name": baseline_name, "value": round(baseline_value, 6)}
        result["ratio"] = round(value / baseline_value, 4) if baseline_value else None
    if goal:
        result["goal"] = goal
    result.update(extra)
    return result


def fresh_process_seconds(statement: str, repeats: int = 5) -> float:
    """Median wall time of ``statement`` in fresh interpreters (import timing)."""
    code = f"import time; t = time.perf_counter(); {statement}; print(time.perf_counter() - t)"
    samples = []
    for _ in range(repeats):
        output = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
        samples.append(float(output.stdout.strip().splitlines()[-1]))
    return statistics.median(samples)
