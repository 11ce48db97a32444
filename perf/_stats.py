"""Interval arithmetic for the benchmarks: percentiles, round-resampled intervals, stopping rules.

Pure functions (standard library only, no Ray), unit-tested in ``tests/unit/test_perf_stats.py``.

The latency curve of ``bench_scale`` compares the p99 of one configuration with
the p99 of a reference measured side by side in the same rounds. A stall on a
shared machine delays many neighbouring tasks together, so single tasks are not
independent samples; whole rounds are. The interval therefore resamples rounds
(the same rounds for both sides, which ran together: a paired bootstrap).
"""

from __future__ import annotations

import heapq
import math
import random
import statistics
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass


def quantile(values: Sequence[float], fraction: float) -> float:
    """The sample at rank ``round(fraction * (n - 1))`` (no interpolation); NaN when empty."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[_rank(len(ordered), fraction)]


def _rank(count: int, fraction: float) -> int:
    return min(count - 1, max(0, int(round(fraction * (count - 1)))))


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
        ValueError: the two sides have different numbers of rounds, or none, or an empty round.
    """
    if len(rounds) != len(reference_rounds):
        raise ValueError(f"paired rounds needed: {len(rounds)} rounds against {len(reference_rounds)} "
                         "reference rounds; measure both sides in every round")
    if not rounds:
        raise ValueError("no rounds to compare; measure at least one round of both sides")
    if not all(rounds) or not all(reference_rounds):
        raise ValueError("a round without latencies cannot be resampled; measure every round for longer")
    measured = [sorted(window, reverse=True) for window in rounds]
    reference = [sorted(window, reverse=True) for window in reference_rounds]
    count = len(measured)
    everything = Counter(range(count))
    point = _pooled(measured, everything, fraction) / _pooled(reference, everything, fraction)
    rng = random.Random(seed)
    ratios = []
    for _ in range(resamples):
        chosen = Counter(rng.randrange(count) for _ in range(count))
        ratios.append(_pooled(measured, chosen, fraction) / _pooled(reference, chosen, fraction))
    ratios.sort()
    low = ratios[int(0.025 * resamples)]
    high = ratios[max(0, -(-975 * resamples // 1000) - 1)]  # ceil(0.975 * resamples) - 1
    return Degradation(pct=(point - 1) * 100, low_pct=(low - 1) * 100, high_pct=(high - 1) * 100,
                       rounds=count)


def _pooled(descending: list[list[float]], chosen: Counter[int], fraction: float) -> float:
    """The ``fraction``-quantile of the rounds in ``chosen``, each taken as often as counted.

    A tail quantile lies near the top, so the rounds (each sorted, highest first)
    are merged from the top until the rank is reached, instead of pooling and
    sorting every latency for each of the hundreds of resamples.
    """
    total = sum(len(descending[index]) * times for index, times in chosen.items())
    above = total - 1 - _rank(total, fraction)  # samples ranked above the one wanted
    heap = [(-descending[index][0], index, 0) for index in chosen]
    heapq.heapify(heap)
    seen = 0
    while True:
        negative, index, position = heapq.heappop(heap)
        seen += chosen[index]
        if seen > above:
            return -negative
        if position + 1 < len(descending[index]):
            heapq.heappush(heap, (-descending[index][position + 1], index, position + 1))


def rounds_settled(intervals: Sequence[Degradation], max_half_width: float) -> bool:
    """True when every interval is at most ``max_half_width`` points either side."""
    return all(interval.half_width <= max_half_width for interval in intervals)


def rounds_needed(rounds: int, half_width: float, target: float) -> int:
    """About how many rounds bring ``half_width`` (after ``rounds``) down to ``target``.

    An interval from resampling narrows like one over the square root of the
    rounds; the estimate is never less than two more rounds, so a check costs
    little against the rounds between checks.
    """
    if half_width <= target:
        return rounds
    return max(rounds + 2, math.ceil(rounds * (half_width / target) ** 2))


def median(values: Sequence[float]) -> float:
    """The median (the mean of the middle two for an even count); NaN when empty."""
    if not values:
        return float("nan")
    return float(statistics.median(values))


def median_interval(values: Sequence[float], *, rng: random.Random, resamples: int = 2000,
                    level: float = 0.95) -> tuple[float, float]:
    """A bootstrap interval for the median of ``values`` (per-round ratios: each round is one
    sample): the ``level`` central range of the medians of ``resamples`` resamples drawn with
    replacement. Pass a seeded ``rng`` for a figure that the same rounds reproduce."""
    if not values:
        return float("nan"), float("nan")
    count = len(values)
    medians = sorted(statistics.median(rng.choices(values, k=count)) for _ in range(resamples))
    tail = (1.0 - level) / 2
    return quantile(medians, tail), quantile(medians, 1.0 - tail)
