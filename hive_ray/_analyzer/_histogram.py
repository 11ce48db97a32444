"""A log-bucketed latency histogram whose quantiles carry a bounded relative error.

Latencies span many orders of magnitude (a cache hit in microseconds, a model call
in seconds), so fixed-width buckets either waste memory or lose the tail. Following
DDSketch (Masson, Rim and Lee, VLDB 2019), a value ``v`` goes to bucket
``ceil(log_gamma(v))`` with ``gamma = (1 + a) / (1 - a)``; reporting the bucket's
midpoint then keeps every quantile within relative error ``a`` of the true value.
Two histograms with the same accuracy merge by adding bucket counts, which is what
lets the sliding window combine its time slices and lets workers ship histograms
to an aggregator instead of raw samples.
"""

from __future__ import annotations

import math
from typing import Any

# Values below a nanosecond are counted in a separate zero bucket: log() of zero is
# undefined, and no latency we measure is meaningfully shorter than that.
_MIN_INDEXABLE_SECONDS = 1e-9

_DEFAULT_MAX_BUCKETS = 2048


class LogHistogram:
    """A mergeable latency histogram with bounded memory and relative-error quantiles.

    Args:
        relative_accuracy: The relative error bound ``a`` of every quantile, between
            0 and 1 exclusive; 0.01 means a reported p99 is within 1% of the exact one.
        max_buckets: The most buckets kept. When a new bucket would exceed it, the
            lowest buckets are collapsed into one, so only the low quantiles (never
            the tail that latency analysis cares about) lose accuracy. At 1% accuracy
            2,048 buckets cover a range of 10^17, so the cap only bites on pathological
            input; it exists so memory stays bounded no matter what is recorded.
    """

    __slots__ = (
        "_relative_accuracy",
        "_max_buckets",
        "_gamma",
        "_log_gamma",
        "_buckets",
        "_zero_count",
        "_count",
        "_total",
        "_min",
        "_max",
    )

    def __init__(
        self, relative_accuracy: float = 0.01, *, max_buckets: int = _DEFAULT_MAX_BUCKETS
    ) -> None:
        if not 0.0 < relative_accuracy < 1.0:
            raise ValueError(
                f"relative_accuracy must be between 0 and 1 (exclusive), got "
                f"{relative_accuracy!r}; pass 0.01 for quantiles within 1%"
            )
        if max_buckets < 2:
            raise ValueError(
                f"max_buckets must be at least 2, got {max_buckets!r}; the default is "
                f"{_DEFAULT_MAX_BUCKETS}"
            )
        self._relative_accuracy = relative_accuracy
        self._max_buckets = max_buckets
        self._gamma = (1.0 + relative_accuracy) / (1.0 - relative_accuracy)
        self._log_gamma = math.log(self._gamma)
        self._buckets: dict[int, int] = {}
        self._zero_count = 0
        self._count = 0
        self._total = 0.0
        self._min = math.inf
        self._max = -math.inf

    @property
    def relative_accuracy(self) -> float:
        """The relative error bound of quantiles."""
        return self._relative_accuracy

    @property
    def max_buckets(self) -> int:
        """The most buckets this histogram keeps."""
        return self._max_buckets

    @property
    def bucket_count(self) -> int:
        """How many non-empty buckets are held now (the zero bucket excluded)."""
        return len(self._buckets)

    @property
    def count(self) -> int:
        """How many values were recorded."""
        return self._count

    @property
    def total(self) -> float:
        """The exact sum of the recorded values, in seconds."""
        return self._total

    @property
    def min(self) -> float:
        """The exact smallest value recorded, or 0.0 when empty."""
        return self._min if self._count else 0.0

    @property
    def max(self) -> float:
        """The exact largest value recorded, or 0.0 when empty."""
        return self._max if self._count else 0.0

    @property
    def mean(self) -> float:
        """The exact mean of the recorded values, or 0.0 when empty."""
        return self._total / self._count if self._count else 0.0

    def record(self, value_seconds: float, count: int = 1) -> None:
        """Record ``value_seconds`` (a non-negative duration) ``count`` times.

        Raises:
            ValueError: if the value is negative, infinite or NaN, or count < 1.
        """
        if not math.isfinite(value_seconds) or value_seconds < 0.0:
            raise ValueError(
                f"a latency must be a finite number of seconds >= 0, got {value_seconds!r}; "
                f"measure it with a monotonic clock (end - start)"
            )
        if count < 1:
            raise ValueError(f"count must be at least 1, got {count!r}")
        if value_seconds < _MIN_INDEXABLE_SECONDS:
            self._zero_count += count
        else:
            index = math.ceil(math.log(value_seconds) / self._log_gamma)
            self._buckets[index] = self._buckets.get(index, 0) + count
            if len(self._buckets) > self._max_buckets:
                self._collapse_lowest()
        self._count += count
        self._total += value_seconds * count
        self._min = min(self._min, value_seconds)
        self._max = max(self._max, value_seconds)

    def quantile(self, q: float) -> float:
        """Return the value at quantile ``q`` (0 <= q <= 1), within the relative accuracy.

        The estimate approximates the sorted value at index ``floor(q * (count - 1))``
        and is clamped to the exact minimum and maximum; quantiles 0 and 1 are exact.

        Raises:
            ValueError: if q is outside [0, 1] or nothing was recorded yet.
        """
        if not 0.0 <= q <= 1.0:
            raise ValueError(f"quantile must be between 0 and 1, got {q!r}; p95 is 0.95")
        if self._count == 0:
            raise ValueError("the histogram is empty; record a value before asking a quantile")
        if q == 0.0:
            return self._min
        if q == 1.0:
            return self._max
        rank = q * (self._count - 1)
        cumulative = self._zero_count
        if cumulative > rank:
            return self.min
        for index in sorted(self._buckets):
            cumulative += self._buckets[index]
            if cumulative > rank:
                estimate = 2.0 * self._gamma**index / (self._gamma + 1.0)
                return min(max(estimate, self._min), self._max)
        return self._max

    def merge(self, other: LogHistogram) -> None:
        """Add every value recorded in ``other`` to this histogram.

        Raises:
            ValueError: if the two histograms have different relative accuracies,
                because their buckets would not line up.
        """
        if not math.isclose(self._relative_accuracy, other._relative_accuracy):
            raise ValueError(
                f"cannot merge a histogram with relative_accuracy "
                f"{other._relative_accuracy} into one with {self._relative_accuracy}; "
                f"create both with the same accuracy"
            )
        for index, bucket_count in other._buckets.items():
            self._buckets[index] = self._buckets.get(index, 0) + bucket_count
        if len(self._buckets) > self._max_buckets:
            self._collapse_lowest()
        self._zero_count += other._zero_count
        self._count += other._count
        self._total += other._total
        self._min = min(self._min, other._min)
        self._max = max(self._max, other._max)

    def copy(self) -> LogHistogram:
        """Return an independent histogram holding the same values."""
        duplicate = LogHistogram(self._relative_accuracy, max_buckets=self._max_buckets)
        duplicate.merge(self)
        return duplicate

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-ready description that :meth:`from_dict` restores exactly."""
        return {
            "relative_accuracy": self._relative_accuracy,
            "max_buckets": self._max_buckets,
            "count": self._count,
            "total": self._total,
            "min": self._min if self._count else None,
            "max": self._max if self._count else None,
            "zero_count": self._zero_count,
            "buckets": [[index, self._buckets[index]] for index in sorted(self._buckets)],
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LogHistogram:
        """Rebuild a histogram from :meth:`to_dict` output.

        Raises:
            ValueError: if ``data`` is missing a field or holds a malformed one.
        """
        try:
            histogram = cls(float(data["relative_accuracy"]), max_buckets=int(data["max_buckets"]))
            histogram._buckets = {int(index): int(count) for index, count in data["buckets"]}
            histogram._zero_count = int(data["zero_count"])
            histogram._count = int(data["count"])
            histogram._total = float(data["total"])
            if histogram._count:
                histogram._min = float(data["min"])
                histogram._max = float(data["max"])
        except (KeyError, TypeError, ValueError) as error:
            raise ValueError(
                f"not a histogram description ({error!r}); pass the output of "
                f"LogHistogram.to_dict()"
            ) from error
        return histogram

    def _collapse_lowest(self) -> None:
        # Fold the lowest buckets into the lowest one kept: the tail stays exact to
        # the accuracy bound and only the smallest values are reported too high.
        indexes = sorted(self._buckets)
        excess = len(indexes) - self._max_buckets
        target = indexes[excess]
        for index in indexes[:excess]:
            self._buckets[target] += self._buckets.pop(index)

    def __repr__(self) -> str:
        return (
            f"LogHistogram(relative_accuracy={self._relative_accuracy}, count={self._count}, "
            f"buckets={len(self._buckets)})"
        )
