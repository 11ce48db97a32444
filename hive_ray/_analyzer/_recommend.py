"""Turning measurements into a short, ranked list of things to do.

Each rule looks at one aspect of a :class:`SystemProfile` and, when it fires,
returns a :class:`Recommendation` whose title carries the numbers that triggered
it, so a reader can check the reasoning without opening a dashboard. Results are
ranked by severity, then by impact: how far past its trigger each finding is
(a dimensionless ratio, so findings from different rules compare fairly).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from hive_ray._analyzer._forecast import fit_trend, forecast_crossing
from hive_ray._analyzer._regression import RegressionResult
from hive_ray._analyzer._window import OperationStatistics, SeriesPoint

SEVERITIES = ("critical", "high", "medium", "low")

# A pool is saturated when tasks wait at least this many times their handling time.
SATURATION_WAIT_RATIO = 2.0
# ... and the finding is critical from this ratio on.
SATURATION_CRITICAL_RATIO = 5.0
# Memory growth below this many MB/hour is not reported as a suspected leak.
LEAK_MIN_MB_PER_HOUR = 10.0
# A leak fit must explain at least this share of the variance (GC sawtooth does not).
LEAK_MIN_R_SQUARED = 0.5
# Fewest points for any trend: fewer cannot tell a trend from noise.
MIN_TREND_POINTS = 6
# p95 at or above this share of the SLO counts as "near" it.
SLO_NEAR_SHARE = 0.8
# Error rates from which a finding has each severity, and the fewest calls to judge.
ERROR_RATE_LEVELS = (("critical", 0.20), ("high", 0.05), ("medium", 0.01))
ERROR_MIN_COUNT = 20
# Restarts per hour of a pool from which a finding has each severity.
RESTART_RATE_LEVELS = (("high", 12.0), ("medium", 3.0), ("low", 1.0))

_MEGABYTE = 1_000_000.0


@dataclass(frozen=True, slots=True, kw_only=True)
class Recommendation:
    """One finding: how bad, what was seen (with numbers) and what to do."""

    severity: str
    title: str
    evidence: dict[str, Any]
    action: str

    def __post_init__(self) -> None:
        if self.severity not in SEVERITIES:
            raise ValueError(
                f"severity must be one of {', '.join(SEVERITIES)}; got {self.severity!r}"
            )


@dataclass(frozen=True, slots=True, kw_only=True)
class PoolLoad:
    """The queue of one agent pool; waits and handling times are p95 seconds."""

    pool: str
    agents: int
    queued: int
    queue_wait_p95: float
    handle_p95: float


@dataclass(frozen=True, slots=True, kw_only=True)
class ProcessMemory:
    """The memory of one process; ``series`` holds ``(time_seconds, rss_bytes)`` points."""

    name: str
    kind: str
    rss_bytes: int
    uss_bytes: int
    series: tuple[tuple[float, float], ...] = ()
    budget_bytes: int | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class Slo:
    """A p95 latency objective for every operation whose name starts with ``operation_prefix``."""

    operation_prefix: str = "HTTP"
    p95_seconds: float = 0.050


@dataclass(frozen=True, slots=True, kw_only=True)
class SystemProfile:
    """Everything :func:`recommend` looks at.

    ``series`` maps an operation to its time slices (for SLO forecasts);
    ``restarts`` maps a pool to how many times its agents restarted during the last
    ``observed_seconds``.
    """

    operations: tuple[OperationStatistics, ...] = ()
    series: Mapping[str, tuple[SeriesPoint, ...]] = field(default_factory=dict)
    pools: tuple[PoolLoad, ...] = ()
    memory: tuple[ProcessMemory, ...] = ()
    restarts: Mapping[str, int] = field(default_factory=dict)
    observed_seconds: float = 300.0
    slos: tuple[Slo, ...] = (Slo(),)
    regressions: tuple[RegressionResult, ...] = ()


_Finding = tuple[float, Recommendation]


def recommend(profile: SystemProfile) -> tuple[Recommendation, ...]:
    """Return the recommendations for ``profile``, most severe and most impactful first."""
    findings: list[_Finding] = []
    findings += _saturated_pools(profile)
    findings += _memory_leaks(profile)
    findings += _slo_pressure(profile)
    findings += _regressions(profile)
    findings += _error_rates(profile)
    findings += _restarts(profile)
    findings.sort(key=lambda item: (SEVERITIES.index(item[1].severity), -item[0], item[1].title))
    return tuple(recommendation for _, recommendation in findings)


def _milliseconds(seconds: float) -> str:
    return f"{seconds * 1000:.1f} ms"


def _hours(seconds: float) -> str:
    return f"{seconds / 3600:.1f} h"


def _level(value: float, levels: tuple[tuple[str, float], ...]) -> tuple[str, float] | None:
    """Return the first ``(severity, level)`` whose level ``value`` reaches, if any."""
    for severity, level in levels:
        if value >= level:
            return severity, level
    return None


def _saturated_pools(profile: SystemProfile) -> list[_Finding]:
    findings = []
    for load in profile.pools:
        if load.handle_p95 <= 0 or load.agents < 1:
            continue
        ratio = load.queue_wait_p95 / load.handle_p95
        if ratio < SATURATION_WAIT_RATIO or load.queued <= load.agents:
            continue
        # Waiting scales roughly as 1/agents, so agents * ratio brings the wait down
        # to one handling time; draining the backlog at once needs one agent per
        # queued task. The smaller estimate avoids overreacting to a burst.
        target = max(load.agents + 1, min(load.queued, math.ceil(load.agents * ratio)))
        findings.append(
            (
                ratio / SATURATION_WAIT_RATIO,
                Recommendation(
                    severity="critical" if ratio >= SATURATION_CRITICAL_RATIO else "high",
                    title=(
                        f"pool `{load.pool}` is saturated: queue wait p95 is {ratio:.1f}x its handling "
                        f"time; scale to {target} agents"
                    ),
                    evidence={
                        "pool": load.pool,
                        "agents": load.agents,
                        "queued": load.queued,
                        "queue_wait_p95_seconds": load.queue_wait_p95,
                        "handle_p95_seconds": load.handle_p95,
                        "wait_ratio": ratio,
                        "target_agents": target,
                    },
                    action=(
                        f"raise the `{load.pool}` pool to {target} agents (now {load.agents}), or "
                        f"make its handler faster; {load.queued} tasks are queued"
                    ),
                ),
            )
        )
    return findings


def _memory_leaks(profile: SystemProfile) -> list[_Finding]:
    findings = []
    for process in profile.memory:
        if len(process.series) < MIN_TREND_POINTS:
            continue
        try:
            trend = fit_trend(process.series)
        except ValueError:
            continue
        megabytes_per_hour = trend.slope * 3600 / _MEGABYTE
        if (
            megabytes_per_hour < LEAK_MIN_MB_PER_HOUR
            or trend.r_squared < LEAK_MIN_R_SQUARED
            or not trend.rising()
        ):
            continue
        severity, budget_note, eta = "medium", "", None
        if process.budget_bytes:
            eta = forecast_crossing(process.series, process.budget_bytes).eta_seconds
            if eta is not None:
                budget_note = (
                    f"; reaches its {process.budget_bytes / _MEGABYTE:.0f} MB budget in "
                    f"{_hours(eta)}"
                )
                severity = "critical" if eta <= 3600 else "high" if eta <= 86400 else "medium"
        findings.append(
            (
                megabytes_per_hour / LEAK_MIN_MB_PER_HOUR,
                Recommendation(
                    severity=severity,
                    title=(
                        f"{process.kind} `{process.name}` may leak memory: RSS grows "
                        f"{megabytes_per_hour:.1f} MB/hour (r² {trend.r_squared:.2f}){budget_note}"
                    ),
                    evidence={
                        "process": process.name,
                        "kind": process.kind,
                        "rss_bytes": process.rss_bytes,
                        "uss_bytes": process.uss_bytes,
                        "megabytes_per_hour": megabytes_per_hour,
                        "r_squared": trend.r_squared,
                        "budget_bytes": process.budget_bytes,
                        "budget_eta_seconds": eta,
                    },
                    action=(
                        f"compare two tracemalloc snapshots of `{process.name}` taken some minutes "
                        f"apart, or restart it on a schedule until the leak is found"
                    ),
                ),
            )
        )
    return findings


def _slo_for(profile: SystemProfile, operation: str) -> Slo | None:
    for slo in profile.slos:
        if operation.startswith(slo.operation_prefix):
            return slo
    return None


def _slo_pressure(profile: SystemProfile) -> list[_Finding]:
    findings = []
    for statistics in profile.operations:
        slo = _slo_for(profile, statistics.operation)
        if slo is None or statistics.count == 0:
            continue
        if statistics.p95 < SLO_NEAR_SHARE * slo.p95_seconds:
            continue
        points = [
            (point.time, point.p95)
            for point in profile.series.get(statistics.operation, ())
            if point.count
        ]
        eta = None
        if len(points) >= MIN_TREND_POINTS:
            try:
                eta = forecast_crossing(points, slo.p95_seconds).eta_seconds
            except ValueError:
                eta = None
        rising = eta is not None
        if statistics.p95 >= slo.p95_seconds:
            severity = "critical" if rising else "high"
            position, outlook = "above", " and rising" if rising else ""
        elif eta is not None:
            severity = "high" if eta <= 3600 else "medium"
            position, outlook = "near", f" and rising; crosses it in {_hours(eta)}"
        else:
            continue
        findings.append(
            (
                statistics.p95 / slo.p95_seconds,
                Recommendation(
                    severity=severity,
                    title=(
                        f"`{statistics.operation}` p95 {_milliseconds(statistics.p95)} is {position} the "
                        f"{_milliseconds(slo.p95_seconds)} SLO{outlook}"
                    ),
                    evidence={
                        "operation": statistics.operation,
                        "p95_seconds": statistics.p95,
                        "slo_p95_seconds": slo.p95_seconds,
                        "rising": rising,
                        "eta_seconds": eta,
                        "throughput_per_s": statistics.throughput_per_s,
                    },
                    action=(
                        f"find where `{statistics.operation}` spends its time (traces of the slowest "
                        f"calls) and add capacity to the pool behind it"
                    ),
                ),
            )
        )
    return findings


def _regressions(profile: SystemProfile) -> list[_Finding]:
    findings = []
    for result in profile.regressions:
        if not result.regressed:
            continue
        findings.append(
            (
                result.ratio,
                Recommendation(
                    severity="high" if result.ratio >= 1.5 else "medium",
                    title=(
                        f"`{result.operation}` regressed: p95 {_milliseconds(result.current_p95)} vs "
                        f"baseline {_milliseconds(result.baseline_p95)} ({result.ratio:.2f}x, "
                        f"p={result.p_value:.1e})"
                    ),
                    evidence={
                        "operation": result.operation,
                        "p_value": result.p_value,
                        "baseline_p95_seconds": result.baseline_p95,
                        "current_p95_seconds": result.current_p95,
                        "ratio": result.ratio,
                    },
                    action=(
                        f"bisect the changes since the baseline was recorded; if the slowdown is "
                        f"intended, record a new baseline for `{result.operation}`"
                    ),
                ),
            )
        )
    return findings


def _error_rates(profile: SystemProfile) -> list[_Finding]:
    findings = []
    for statistics in profile.operations:
        if statistics.count < ERROR_MIN_COUNT:
            continue
        matched = _level(statistics.error_rate, ERROR_RATE_LEVELS)
        if matched is None:
            continue
        severity, level = matched
        findings.append(
            (
                statistics.error_rate / level,
                Recommendation(
                    severity=severity,
                    title=(
                        f"`{statistics.operation}` fails {statistics.error_rate:.1%} of "
                        f"{statistics.count} calls"
                    ),
                    evidence={
                        "operation": statistics.operation,
                        "error_rate": statistics.error_rate,
                        "count": statistics.count,
                    },
                    action=f"read the errors recorded for `{statistics.operation}` in the traces",
                ),
            )
        )
    return findings


def _restarts(profile: SystemProfile) -> list[_Finding]:
    findings = []
    hours = max(profile.observed_seconds, 1.0) / 3600
    for pool, count in sorted(profile.restarts.items()):
        per_hour = count / hours
        matched = _level(per_hour, RESTART_RATE_LEVELS)
        if matched is None:
            continue
        severity, level = matched
        findings.append(
            (
                per_hour / level,
                Recommendation(
                    severity=severity,
                    title=(
                        f"pool `{pool}` restarted {count} times in {profile.observed_seconds / 60:.0f} "
                        f"min ({per_hour:.1f}/hour)"
                    ),
                    evidence={
                        "pool": pool,
                        "restarts": count,
                        "restarts_per_hour": per_hour,
                        "observed_seconds": profile.observed_seconds,
                    },
                    action=f"read the crash reasons of `{pool}` agents in the supervisor log",
                ),
            )
        )
    return findings
