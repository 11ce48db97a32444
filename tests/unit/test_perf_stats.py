"""The interval arithmetic of the benchmarks (perf/_stats.py): pure, no Ray."""

from __future__ import annotations

import math
import random

import pytest

from perf._stats import Degradation, degradation, median, quantile, rounds_settled


def test_quantile_takes_the_sample_at_the_rounded_rank() -> None:
    values = list(range(101))  # ranks 0..100
    assert quantile(values, 0.99) == 99
    assert quantile(values, 0.5) == 50
    assert quantile([7.0], 0.99) == 7.0
    assert math.isnan(quantile([], 0.5))


def test_identical_rounds_degrade_by_nothing_with_a_zero_width_interval() -> None:
    rounds = [[0.001 * (i + j) for i in range(200)] for j in range(8)]
    result = degradation(rounds, rounds)
    assert (result.pct, result.low_pct, result.high_pct, result.rounds) == (0.0, 0.0, 0.0, 8)
    assert result.half_width == 0.0


def test_a_uniformly_slower_side_degrades_by_its_factor_in_every_resample() -> None:
    reference = [[0.001 * (1 + i % 50) for i in range(500)] for _ in range(6)]
    slower = [[latency * 1.2 for latency in window] for window in reference]
    result = degradation(slower, reference)
    assert result.pct == pytest.approx(20.0)
    assert result.low_pct == pytest.approx(20.0)
    assert result.high_pct == pytest.approx(20.0)


def test_noisy_rounds_give_an_interval_around_the_point_estimate_the_same_for_a_seed() -> None:
    rng = random.Random(3)
    reference = [[rng.expovariate(1000) for _ in range(400)] for _ in range(10)]
    measured = [[rng.expovariate(900) for _ in range(400)] for _ in range(10)]
    first = degradation(measured, reference, seed=5)
    assert first.low_pct <= first.pct <= first.high_pct
    assert first.half_width > 0
    assert degradation(measured, reference, seed=5) == first


def test_one_slow_round_widens_the_interval() -> None:
    rng = random.Random(1)
    reference = [[rng.uniform(1, 2) for _ in range(300)] for _ in range(10)]
    steady = [[value * 1.05 for value in window] for window in reference]
    stalled = [list(window) for window in steady]
    stalled[4] = [value * 3 for value in stalled[4]]  # a stall on this round only
    assert degradation(stalled, reference).half_width > degradation(steady, reference).half_width


def test_unpaired_or_empty_rounds_are_refused_with_the_fix() -> None:
    with pytest.raises(ValueError, match="paired rounds needed: 2 rounds against 3"):
        degradation([[1.0], [1.0]], [[1.0], [1.0], [1.0]])
    with pytest.raises(ValueError, match="no rounds to compare"):
        degradation([], [])


def test_rounds_settle_when_every_half_width_is_within_the_target() -> None:
    narrow = Degradation(pct=2.0, low_pct=-1.0, high_pct=6.0, rounds=10)  # half-width 3.5
    wide = Degradation(pct=2.0, low_pct=-8.0, high_pct=12.0, rounds=10)  # half-width 10
    assert rounds_settled([narrow], 5.0)
    assert not rounds_settled([narrow, wide], 5.0)
    assert rounds_settled([], 5.0)


def test_median() -> None:
    assert median([3.0, 1.0, 2.0]) == 2.0
    assert median([1.0, 2.0]) == 1.5
    assert math.isnan(median([]))
