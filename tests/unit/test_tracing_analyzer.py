"""The analyzer actor's logic without Ray: ingest, profile, report, baselines, alerts; and `hive perf`."""

from __future__ import annotations

import random
from typing import Any

import pytest

from hive_ray._analyzer import PerformanceReport
from hive_ray._perf_cli import comparison_exit_code, format_comparison
from hive_ray._runtime._analyzer_actor import Analyzer


class Clock:
    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def analyzer(clock: Clock, **settings: Any) -> Analyzer:
    return Analyzer({"analyzer_slice_seconds": 5.0, "analyzer_window_seconds": 600.0, **settings},
                    clock=clock)


def lognormal(rng: random.Random, median: float, count: int) -> list[float]:
    return [median * rng.lognormvariate(0.0, 0.3) for _ in range(count)]


def test_ingested_durations_give_known_percentiles_and_error_rates() -> None:
    clock, rng = Clock(), random.Random(1)
    subject = analyzer(clock)
    durations = [0.001 * (i + 1) for i in range(1000)]  # 1..1000 ms, uniform
    rng.shuffle(durations)
    assert subject.ingest("agent-host:1", {"hive.handle echo": (durations[:900], durations[900:])}, 3) == 1000
    clock.now += 10
    report = PerformanceReport.from_dict(subject.report())
    [statistics] = report.operations
    assert statistics.operation == "hive.handle echo" and statistics.count == 1000
    assert statistics.p50 == pytest.approx(0.500, rel=0.02)
    assert statistics.p95 == pytest.approx(0.950, rel=0.02)
    assert statistics.error_rate == pytest.approx(0.1)
    assert subject.statistics()["spans_dropped"] == 3


def test_a_saturated_pool_and_a_leaking_host_are_recommended_with_evidence() -> None:
    clock, rng = Clock(), random.Random(2)
    subject = analyzer(clock)
    subject.ingest("orchestrator:1", {"hive.queue compute": (lognormal(rng, 0.400, 500), [])}, 0)
    subject.ingest("agent-host:2", {"hive.handle compute": (lognormal(rng, 0.050, 500), [])}, 0)
    subject.record_pools({"pools": {"compute": {"queued": 40, "restarts": 0}}},
                         [{"name": "compute", "size": 2}])
    for minute in range(30):  # a host that grows 1 MB a minute: 60 MB/hour
        subject.record_memory("host compute-0", "agent host", 4242, 200_000_000 + minute * 1_000_000,
                              150_000_000, at=clock.now + minute * 60)
    for second in range(0, 60, 5):  # a young process warming up is no leak
        subject.record_memory("orchestrator", "orchestrator", 1, 100_000_000 + second * 1_000_000,
                              80_000_000, at=clock.now + second)
    report = PerformanceReport.from_dict(subject.report())
    titles = [each.title for each in report.recommendations]
    assert any(title.startswith("pool `compute` is saturated") for title in titles), titles
    assert any("host compute-0" in title and "leak" in title for title in titles), titles
    assert not any("orchestrator" in title for title in titles), titles
    assert report.queue_depths == {"compute": 40}
    assert report.memory[0].series[-1][1] == 229_000_000


def test_restarts_count_from_the_first_observation() -> None:
    clock = Clock()
    subject = analyzer(clock)
    subject.record_pools({"pools": {"echo": {"queued": 0, "restarts": 5}}}, [])
    subject.record_pools({"pools": {"echo": {"queued": 0, "restarts": 9}}}, [])
    clock.now += 600
    report = PerformanceReport.from_dict(subject.report())
    assert any("restarted 4 times" in each.title for each in report.recommendations)


def test_a_baseline_of_the_same_distribution_does_not_alert_but_a_slower_one_does() -> None:
    clock, rng = Clock(), random.Random(3)
    subject = analyzer(clock)
    subject.ingest("agent-host:1", {"hive.handle echo": (lognormal(rng, 0.010, 1500), [])}, 0)
    baseline = subject.baseline()
    assert [each["operation"] for each in baseline["operations"]] == ["hive.handle echo"]

    same = analyzer(clock)
    same.ingest("agent-host:1", {"hive.handle echo": (lognormal(rng, 0.010, 1500), [])}, 0)
    [result] = same.compare(baseline)
    assert not result["regressed"]
    same.set_baseline(baseline)
    same._check_regressions()
    assert same.alerts() == []

    slower = analyzer(clock)
    slower.ingest("agent-host:1", {"hive.handle echo": (lognormal(rng, 0.013, 1500), [])}, 0)
    [result] = slower.compare(baseline)
    assert result["regressed"] and result["ratio"] > 1.2
    slower.set_baseline(baseline)
    slower._check_regressions()
    assert [alert["operation"] for alert in slower.alerts()] == ["hive.handle echo"]
    report = PerformanceReport.from_dict(slower.report())
    assert report.regressions and report.regressions[0].regressed
    assert any("regressed" in each.title for each in report.recommendations)


def test_reset_forgets_latencies() -> None:
    subject = analyzer(Clock())
    subject.ingest("x:1", {"hive.handle echo": ([0.001] * 10, [])}, 0)
    subject.reset()
    assert PerformanceReport.from_dict(subject.report()).operations == ()


def test_comparison_exit_codes_and_table() -> None:
    ok = {"operation": "hive.handle echo", "baseline_p95": 0.010, "current_p95": 0.0101, "ratio": 1.01,
          "p_value": 0.4, "significant": False, "material": False, "regressed": False}
    bad = {**ok, "operation": "POST /v1/tasks", "current_p95": 0.020, "ratio": 2.0, "p_value": 1e-9,
           "significant": True, "material": True, "regressed": True}
    assert comparison_exit_code([]) == 2
    assert comparison_exit_code([ok]) == 0
    assert comparison_exit_code([ok, bad]) == 1
    table = format_comparison([ok, bad])
    assert "REGRESSED" in table and "1 regression(s): POST /v1/tasks" in table
    assert "nothing compared" in format_comparison([])


def test_the_report_carries_the_orchestrators_token_totals() -> None:
    from hive_ray._analyzer import render_html, render_text

    subject = analyzer(Clock())
    row = {"pool": "writers", "endpoint": "http://vllm:8000/v1", "model": "<qwen>", "requests": 3,
           "prompt_tokens": 120, "completion_tokens": 300, "cost_usd": 0.0125}
    subject.record_pools({"pools": {}, "usage": [row]}, [])
    report = PerformanceReport.from_dict(subject.report())
    assert [dict(each) for each in report.usage] == [row]
    text = render_text(report)
    assert "model usage since the orchestrator started:" in text
    assert "writers" in text and "0.0125" in text and "300" in text
    page = render_html(report)
    assert "<h2>Model usage</h2>" in page and "&lt;qwen&gt;" in page and "<qwen>" not in page
    # A report saved before usage existed still reads.
    older = subject.report()
    del older["usage"]
    assert PerformanceReport.from_dict(older).usage == ()
