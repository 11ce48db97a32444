"""Straight-line trends, and when a rising metric will cross a threshold.

Used for "memory grows 40 MB/hour" and "p95 will cross the SLO in about two
hours". Ordinary least squares is deliberately simple: the answer has to be
explainable in one sentence, and an interval on the slope says how much to trust it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

# Two-sided 95% critical values of Student's t by degrees of freedom; beyond the
# table the value approaches the normal 1.96.
_T_95 = {
    1: 12.706,
    2: 4.303,
    3: 3.182,
    4: 2.776,
    5: 2.571,
    6: 2.447,
    7: 2.365,
    8: 2.306,
    9: 2.262,
    10: 2.228,
    11: 2.201,
    12: 2.179,
    13: 2.160,
    14: 2.145,
    15: 2.131,
    16: 2.120,
    17: 2.110,
    18: 2.101,
    19: 2.093,
    20: 2.086,
    21: 2.080,
    22: 2.074,
    23: 2.069,
    24: 2.064,
    25: 2.060,
    26: 2.056,
    27: 2.052,
    28: 2.048,
    29: 2.045,
    30: 2.042,
    40: 2.021,
    60: 2.000,
    120: 1.980,
}

CONFIDENCE = 0.95


def t_critical_95(degrees_of_freedom: int) -> float:
    """Return the two-sided 95% Student t critical value (conservative between table rows)."""
    if degrees_of_freedom < 1:
        raise ValueError(f"degrees of freedom must be at least 1, got {degrees_of_freedom!r}")
    if degrees_of_freedom > 120:
        return 1.960
    # Use the next smaller tabulated row: a larger t, so a wider, safer interval.
    return _T_95[max(row for row in _T_95 if row <= degrees_of_freedom)]


@dataclass(frozen=True, slots=True, kw_only=True)
class Trend:
    """A least-squares line ``value = intercept + slope * time`` and how well it fits."""

    slope: float
    intercept: float
    residual_standard_error: float
    slope_standard_error: float
    r_squared: float
    count: int
    last_time: float

    def value_at(self, time: float) -> float:
        """Return the line's value at ``time``."""
        return self.intercept + self.slope * time

    def rising(self) -> bool:
        """Whether the slope is positive with 95% confidence."""
        return self.slope > t_critical_95(self.count - 2) * self.slope_standard_error


def fit_trend(points: Sequence[tuple[float, float]]) -> Trend:
    """Fit a straight line to ``(time, value)`` points by ordinary least squares.

    Raises:
        ValueError: with fewer than three points (no error estimate is possible) or
            when all points share one time.
    """
    count = len(points)
    if count < 3:
        raise ValueError(f"fitting a trend needs at least 3 points, got {count}; observe longer")
    mean_time = math.fsum(point[0] for point in points) / count
    mean_value = math.fsum(point[1] for point in points) / count
    spread_time = math.fsum((time - mean_time) ** 2 for time, _ in points)
    if spread_time == 0.0:
        raise ValueError("all points share one time; a trend needs at least two distinct times")
    spread_value = math.fsum((value - mean_value) ** 2 for _, value in points)
    covariance = math.fsum((time - mean_time) * (value - mean_value) for time, value in points)
    slope = covariance / spread_time
    intercept = mean_value - slope * mean_time
    residual_sum = math.fsum((value - (intercept + slope * time)) ** 2 for time, value in points)
    residual_standard_error = math.sqrt(residual_sum / (count - 2))
    # A constant series is fitted perfectly by a flat line.
    r_squared = 1.0 - residual_sum / spread_value if spread_value > 0.0 else 1.0
    return Trend(
        slope=slope,
        intercept=intercept,
        residual_standard_error=residual_standard_error,
        slope_standard_error=residual_standard_error / math.sqrt(spread_time),
        r_squared=max(0.0, r_squared),
        count=count,
        last_time=max(point[0] for point in points),
    )


@dataclass(frozen=True, slots=True, kw_only=True)
class Forecast:
    """When a fitted trend crosses ``threshold``, counted from the last point.

    ``current`` is the fitted value at the last point (less noisy than the last
    observation). The ETA fields are None when the trend is flat, falling or not
    significantly rising; otherwise ``eta_low_seconds``/``eta_high_seconds`` bound
    ``eta_seconds`` using the slope's ``confidence`` interval, and all three are 0.0
    when the line is already at or past the threshold.
    """

    threshold: float
    current: float
    slope_per_hour: float
    eta_seconds: float | None
    eta_low_seconds: float | None
    eta_high_seconds: float | None
    confidence: float


def forecast_crossing(points: Sequence[tuple[float, float]], threshold: float) -> Forecast:
    """Fit ``(time_seconds, value)`` points and say when the line reaches ``threshold``.

    Raises:
        ValueError: as :func:`fit_trend` does.
    """
    trend = fit_trend(points)
    current = trend.value_at(trend.last_time)
    margin = t_critical_95(trend.count - 2) * trend.slope_standard_error
    eta = low = high = None
    if trend.rising():
        gap = threshold - current
        if gap <= 0.0:
            eta = low = high = 0.0
        else:
            eta = gap / trend.slope
            low = gap / (trend.slope + margin)
            high = gap / (trend.slope - margin)
    return Forecast(
        threshold=threshold,
        current=current,
        slope_per_hour=trend.slope * 3600.0,
        eta_seconds=eta,
        eta_low_seconds=low,
        eta_high_seconds=high,
        confidence=CONFIDENCE,
    )
