"""Recommendation rules fire on crafted profiles, carry their numbers and rank correctly."""

import random

import pytest

from hive_ray._analyzer import (
    OperationStatistics,
    PoolLoad,
    ProcessMemory,
    Recommendation,
    RegressionResult,
    SeriesPoint,
    Slo,
    SystemProfile,
    recommend,
)
from hive_ray._analyzer._recommend import SEVERITIES

_MEGABYTE = 1_000_000


def _statistics(operation, *, p95=0.010, count=1000, error_rate=0.0):
    return OperationStatistics(
        operation=operation,
        count=count,
        throughput_per_s=10.0,
        error_rate=error_rate,
        p50=p95 / 2,
        p95=p95,
        p99=p95 * 1.5,
        max=p95 * 2,
        mean=p95 / 2,
    )


def _rising_series(start, per_slice, slices=30):
    return tuple(
        SeriesPoint(
            time=5.0 * index,
            count=50,
            p50=start / 2,
            p95=start + per_slice * index,
            p99=start * 2,
            errors=0,
        )
        for index in range(slices)
    )


def _memory(name, megabytes_per_hour, *, budget_bytes=None, seed=0):
    rng = random.Random(seed)
    series = tuple(
        (
            60.0 * minute,
            500 * _MEGABYTE
            + megabytes_per_hour * _MEGABYTE * minute / 60
            + rng.gauss(0, 0.2 * _MEGABYTE),
        )
        for minute in range(60)
    )
    return ProcessMemory(
        name=name,
        kind="agent",
        rss_bytes=int(series[-1][1]),
        uss_bytes=int(series[-1][1] * 0.8),
        series=series,
        budget_bytes=budget_bytes,
    )


def test_saturated_pool_suggests_a_target_agent_count():
    profile = SystemProfile(
        pools=(PoolLoad(pool="compute", agents=3, queued=6, queue_wait_p95=0.4, handle_p95=0.1),)
    )
    (finding,) = recommend(profile)
    assert finding.title == (
        "pool `compute` is saturated: queue wait p95 is 4.0x its handling time; scale to 6 agents"
    )
    assert finding.severity == "high"
    assert finding.evidence["target_agents"] == 6
    assert finding.evidence["wait_ratio"] == pytest.approx(4.0)


def test_a_pool_with_a_short_queue_is_not_saturated():
    profile = SystemProfile(
        pools=(
            PoolLoad(pool="echo", agents=4, queued=4, queue_wait_p95=1.0, handle_p95=0.1),
            PoolLoad(pool="idle", agents=4, queued=40, queue_wait_p95=0.1, handle_p95=0.1),
        )
    )
    assert recommend(profile) == ()


def test_growing_memory_is_a_suspected_leak_with_a_budget_eta():
    profile = SystemProfile(
        memory=(
            _memory("coder-1", 60.0, budget_bytes=600 * _MEGABYTE),
            _memory("echo-1", 0.0, seed=1),
        )
    )
    (finding,) = recommend(profile)
    assert finding.evidence["process"] == "coder-1"
    assert finding.evidence["megabytes_per_hour"] == pytest.approx(60.0, rel=0.05)
    assert "RSS grows 60." in finding.title and "MB/hour" in finding.title
    assert "600 MB budget in" in finding.title
    # 559 MB after an hour, 41 MB left at 60 MB/hour: about 41 minutes.
    assert finding.evidence["budget_eta_seconds"] == pytest.approx(41 / 60 * 3600, rel=0.1)
    assert finding.severity == "critical"


def test_slow_memory_growth_is_not_reported():
    assert recommend(SystemProfile(memory=(_memory("p", 2.0),))) == ()


def test_p95_above_the_slo_and_rising_is_critical():
    profile = SystemProfile(
        operations=(_statistics("HTTP POST /tasks", p95=0.060),),
        series={"HTTP POST /tasks": _rising_series(0.040, 0.001)},
    )
    (finding,) = recommend(profile)
    assert finding.severity == "critical"
    assert finding.title == "`HTTP POST /tasks` p95 60.0 ms is above the 50.0 ms SLO and rising"


def test_p95_near_the_slo_and_rising_gives_an_eta():
    # p95 climbs 0.1 ms every 5 s slice and sits at 42.9 ms: 7.1 ms to go, about 6 minutes.
    profile = SystemProfile(
        operations=(_statistics("HTTP GET /status", p95=0.0429),),
        series={"HTTP GET /status": _rising_series(0.040, 0.0001)},
    )
    (finding,) = recommend(profile)
    assert finding.severity == "high"
    assert finding.evidence["eta_seconds"] == pytest.approx(355, rel=0.05)
    assert finding.title == (
        "`HTTP GET /status` p95 42.9 ms is near the 50.0 ms SLO and rising; crosses it in 0.1 h"
    )


def test_slo_applies_only_to_matching_operations():
    profile = SystemProfile(
        operations=(_statistics("HTTP GET /", p95=0.010), _statistics("compute.handle", p95=2.0)),
        slos=(Slo(operation_prefix="HTTP", p95_seconds=0.050),),
    )
    assert recommend(profile) == ()
    flat_above = SystemProfile(operations=(_statistics("HTTP GET /", p95=0.070),))
    assert [each.severity for each in recommend(flat_above)] == ["high"]


def test_regressions_errors_and_restarts_fire():
    regression = RegressionResult(
        operation="HTTP GET /",
        p_value=1e-9,
        baseline_p95=0.010,
        current_p95=0.016,
        ratio=1.6,
        significant=True,
        material=True,
        regressed=True,
    )
    profile = SystemProfile(
        operations=(_statistics("compute.handle", error_rate=0.08),),
        regressions=(regression,),
        restarts={"coder": 7, "echo": 0},
        observed_seconds=1800,
    )
    titles = {each.title: each.severity for each in recommend(profile)}
    assert titles == {
        "`HTTP GET /` regressed: p95 16.0 ms vs baseline 10.0 ms (1.60x, p=1.0e-09)": "high",
        "`compute.handle` fails 8.0% of 1000 calls": "high",
        "pool `coder` restarted 7 times in 30 min (14.0/hour)": "high",
    }


def test_ranking_is_by_severity_then_impact():
    profile = SystemProfile(
        pools=(
            PoolLoad(pool="mild", agents=2, queued=10, queue_wait_p95=0.25, handle_p95=0.1),
            PoolLoad(pool="worse", agents=2, queued=10, queue_wait_p95=0.45, handle_p95=0.1),
            PoolLoad(pool="awful", agents=2, queued=10, queue_wait_p95=2.0, handle_p95=0.1),
        ),
        operations=(_statistics("compute.handle", error_rate=0.02),),
        restarts={"echo": 1},
        observed_seconds=3600,
    )
    findings = recommend(profile)
    assert [each.severity for each in findings] == ["critical", "high", "high", "medium", "low"]
    assert [each.evidence.get("pool") for each in findings[:3]] == ["awful", "worse", "mild"]
    ranks = [SEVERITIES.index(each.severity) for each in findings]
    assert ranks == sorted(ranks)


def test_empty_profile_gives_nothing():
    assert recommend(SystemProfile()) == ()


def test_severity_is_validated():
    with pytest.raises(ValueError, match="severity must be one of critical, high, medium, low"):
        Recommendation(severity="urgent", title="t", evidence={}, action="a")
