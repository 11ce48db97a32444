"""The interval arithmetic of the benchmarks (perf/_stats.py): pure, no Ray."""

from __future__ import annotations

import math
import random

import pytest

from perf._stats import Degradation, degradation, median, median_interval, quantile, rounds_settled


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


def test_the_pooled_quantile_of_a_resample_is_that_of_its_rounds_concatenated() -> None:
    from collections import Counter

    from perf._stats import _pooled

    rng = random.Random(11)
    rounds = [[rng.lognormvariate(0, 1) for _ in range(rng.randrange(50, 300))] for _ in range(7)]
    descending = [sorted(window, reverse=True) for window in rounds]
    for _ in range(50):
        chosen = Counter(rng.randrange(len(rounds)) for _ in range(len(rounds)))
        pooled = [value for index, times in chosen.items() for _ in range(times) for value in rounds[index]]
        for fraction in (0.5, 0.9, 0.99, 1.0, 0.0):
            assert _pooled(descending, chosen, fraction) == quantile(pooled, fraction)


def test_an_empty_round_is_refused() -> None:
    with pytest.raises(ValueError, match="a round without latencies"):
        degradation([[1.0], []], [[1.0], [1.0]])


def test_rounds_needed_follows_the_square_root_law_and_always_moves_on() -> None:
    from perf._stats import rounds_needed

    assert rounds_needed(10, 10.0, 5.0) == 40  # half as wide takes four times the rounds
    assert rounds_needed(10, 5.5, 5.0) == 13
    assert rounds_needed(10, 5.01, 5.0) == 12  # at least two more
    assert rounds_needed(10, 4.0, 5.0) == 10  # already there


def test_the_median_interval_holds_the_median_and_widens_with_noise() -> None:
    steady = [1.0] * 12
    assert median_interval(steady, rng=random.Random(1)) == (1.0, 1.0)
    noisy = [0.63, 1.03, 0.75, 0.70, 1.26, 1.23, 0.70, 1.19, 1.14, 0.98, 0.98, 1.12]
    low, high = median_interval(noisy, rng=random.Random(1))
    assert low <= median(noisy) <= high and high - low > 0.1
    assert (low, high) == median_interval(noisy, rng=random.Random(1))  # a seed reproduces it
    assert all(math.isnan(bound) for bound in median_interval([], rng=random.Random(1)))
