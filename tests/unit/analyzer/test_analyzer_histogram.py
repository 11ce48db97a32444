"""LogHistogram: quantile accuracy against exact quantiles, merging, the bucket cap, JSON."""

import json
import math
import random

import pytest

from hive_ray._analyzer import LogHistogram


def _exact(sorted_values: list[float], q: float) -> float:
    # The histogram approximates the value at index floor(q * (n - 1)).
    return sorted_values[math.floor(q * (len(sorted_values) - 1))]


def _lognormal(seed: int, count: int) -> list[float]:
    rng = random.Random(seed)
    return [rng.lognormvariate(math.log(0.02), 1.0) for _ in range(count)]


def _uniform(seed: int, count: int) -> list[float]:
    rng = random.Random(seed)
    return [rng.uniform(0.0005, 2.0) for _ in range(count)]


@pytest.mark.parametrize("accuracy", [0.01, 0.02, 0.05])
@pytest.mark.parametrize("make_values", [_lognormal, _uniform])
def test_quantiles_are_within_the_relative_accuracy(accuracy, make_values):
    values = make_values(7, 20_000)
    histogram = LogHistogram(accuracy)
    for value in values:
        histogram.record(value)
    ordered = sorted(values)
    for q in (0.0, 0.01, 0.1, 0.25, 0.5, 0.75, 0.9, 0.95, 0.99, 0.999, 1.0):
        exact = _exact(ordered, q)
        assert abs(histogram.quantile(q) - exact) <= accuracy * exact * (1 + 1e-9), q


def test_count_total_min_max_mean_are_exact():
    values = _lognormal(1, 1000)
    histogram = LogHistogram()
    for value in values:
        histogram.record(value)
    assert histogram.count == 1000
    assert histogram.total == pytest.approx(math.fsum(values))
    assert histogram.min == min(values)
    assert histogram.max == max(values)
    assert histogram.mean == pytest.approx(sum(values) / 1000)


def test_zero_latency_goes_to_the_zero_bucket():
    histogram = LogHistogram()
    histogram.record(0.0, count=9)
    histogram.record(1.0)
    assert histogram.quantile(0.5) == 0.0
    assert histogram.quantile(1.0) == 1.0


def test_merge_equals_recording_both():
    first_values, second_values = _lognormal(2, 3000), _uniform(3, 3000)
    first, second, both = LogHistogram(), LogHistogram(), LogHistogram()
    for value in first_values:
        first.record(value)
        both.record(value)
    for value in second_values:
        second.record(value)
        both.record(value)
    first.merge(second)
    assert first.to_dict()["buckets"] == both.to_dict()["buckets"]
    assert first.count == both.count
    assert first.total == pytest.approx(both.total)
    assert (first.min, first.max) == (both.min, both.max)
    for q in (0.5, 0.95, 0.99):
        assert first.quantile(q) == both.quantile(q)


def test_merge_rejects_a_different_accuracy():
    with pytest.raises(ValueError, match="create both with the same accuracy"):
        LogHistogram(0.01).merge(LogHistogram(0.02))


def test_the_bucket_cap_holds_and_keeps_the_tail_accurate():
    histogram = LogHistogram(0.01, max_buckets=64)
    values = [10.0 ** (exponent / 50) for exponent in range(-400, 101)]  # 1e-8 .. 100 s
    for value in values:
        histogram.record(value)
    assert histogram.bucket_count <= 64
    exact_p99 = _exact(sorted(values), 0.99)
    assert abs(histogram.quantile(0.99) - exact_p99) <= 0.01 * exact_p99
    assert histogram.count == len(values)


def test_json_round_trip():
    histogram = LogHistogram(0.02, max_buckets=500)
    for value in _lognormal(4, 500):
        histogram.record(value)
    restored = LogHistogram.from_dict(json.loads(json.dumps(histogram.to_dict())))
    assert restored.to_dict() == histogram.to_dict()
    assert restored.quantile(0.95) == histogram.quantile(0.95)
    empty = LogHistogram.from_dict(json.loads(json.dumps(LogHistogram().to_dict())))
    assert empty.count == 0 and empty.max == 0.0


@pytest.mark.parametrize("bad", [-0.001, math.nan, math.inf])
def test_record_rejects_impossible_latencies(bad):
    with pytest.raises(ValueError, match="a latency must be a finite number of seconds >= 0"):
        LogHistogram().record(bad)


def test_errors_say_how_to_fix():
    with pytest.raises(ValueError, match="pass 0.01 for quantiles within 1%"):
        LogHistogram(1.5)
    with pytest.raises(ValueError, match="record a value before asking a quantile"):
        LogHistogram().quantile(0.5)
    with pytest.raises(ValueError, match="pass the output of LogHistogram.to_dict"):
        LogHistogram.from_dict({"relative_accuracy": 0.01})
