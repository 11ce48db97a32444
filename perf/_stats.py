"""Interval arithmetic for the benchmarks: percentiles, round-resampled intervals, stopping rules.

Pure functions (numpy, no Ray), unit-tested in ``tests/unit/test_perf_stats.py``.

The latency curve of ``bench_scale`` compares the p99 of one configuration with
the p99 of a reference measured side by side in the same rounds. A stall on a
shared machine delays many neighbouring tasks together, so single tasks are not
independent samples; whole rounds are. The interval therefore resamples rounds
(the same rounds for both sides, which ran together: a paired bootstrap).
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


def quantile(values: Sequence[float] | np.ndarray, fraction: float) -> float:
    """The sample at rank ``round(fraction * (n - 1))`` (no interpolation); NaN when empty."""
    data = np.asarray(values, dtype=float)
    if data.size == 0:
        return float("nan")
    index = min(data.size - 1, max(0, int(round(fraction * (data.size - 1)))))
    return float(np.partition(data, index)[index])


@dataclass(frozen=True, slots=True)
class Degradation:
    """How much worse a tail is than its reference's, in percent, with a 95% interval."""

    pct: float  # (p(sample) / p(reference) - 1) * 100 over every round pooled
    low_pct: float  # the interval's bounds, from resampling rounds
    high_pct: float
    rounds: int

    @property
    def half_width(self) -> float:
        """Half the interval's width, in percentage points."""
        return (self.high_pct - self.low_pct) / 2


def degradation(rounds: Sequence[Sequence[float]], reference_rounds: Sequence[Sequence[float]],
                fraction: float = 0.99, resamples: int = 400, seed: int = 0) -> Degradation:
    """``fraction``-quantile of ``rounds`` against that of ``reference_rounds``, paired by round.

    Args:
        rounds: the latencies of each round (one list per round) of the measured side.
        reference_rounds: the same rounds of the reference; ``rounds[i]`` and
            ``reference_rounds[i]`` ran side by side.
        fraction: which quantile (0.99: p99).
        resamples: bootstrap resamples; the interval is their 2.5th to 97.5th percentile.
        seed: the resampling is deterministic for a given seed.

    Raises:
        ValueError: the two sides have different numbers of rounds, or none.
    """
    if len(rounds) != len(reference_rounds):
        raise ValueError(f"paired rounds needed: {len(rounds)} rounds against {len(reference_rounds)} "
                         "reference rounds; measure both sides in every round")
    if not rounds:
        raise ValueError("no rounds to compare; measure at least one round of both sides")
    measured = [np.asarray(window, dtype=float) for window in rounds]
    reference = [np.asarray(window, dtype=float) for window in reference_rounds]
    point = _ratio(measured, reference, range(len(measured)), fraction)
    rng = random.Random(seed)
    count = len(measured)
    ratios = np.sort([_ratio(measured, reference, [rng.randrange(count) for _ in range(count)], fraction)
                      for _ in range(resamples)])
    low = float(ratios[int(0.025 * resamples)])
    high = float(ratios[max(0, int(np.ceil(0.975 * resamples)) - 1)])
    return Degradation(pct=(point - 1) * 100, low_pct=(low - 1) * 100, high_pct=(high - 1) * 100,
                       rounds=count)


def _ratio(measured: list[np.ndarray], reference: list[np.ndarray], chosen: Sequence[int] | range,
           fraction: float) -> float:
    sample = np.concatenate([measured[index] for index in chosen])
    base = np.concatenate([reference[index] for index in chosen])
    return quantile(sample, fraction) / quantile(base, fraction)


def rounds_settled(intervals: Sequence[Degradation], max_half_width: float) -> bool:
    """True when every interval is at most ``max_half_width`` points either side."""
    return all(interval.half_width <= max_half_width for interval in intervals)


def median(values: Sequence[float]) -> float:
    """The median (the mean of the middle two for an even count); NaN when empty."""
    if not values:
        return float("nan")
    return float(np.median(np.asarray(values, dtype=float)))
