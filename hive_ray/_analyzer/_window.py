"""Per-operation latency over a sliding time window, plus a sample for statistical tests.

A :class:`SlidingWindow` keeps a ring of time slices, each a :class:`LogHistogram`
and an error count. Recording touches one slice; a slice older than the window is
reset the next time its ring position comes round, so memory is fixed
(``slice_count`` histograms) and expiry costs nothing. Merging the live slices gives
the window's percentiles; reading them one by one gives the time series for charts.

Percentiles from histograms are enough for dashboards, but a regression test needs
raw values, so each window also keeps a :class:`Reservoir`: a uniform sample of
everything recorded, bounded in size.
"""

from __future__ import annotations

import functools
import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass

from hive_ray._analyzer._histogram import LogHistogram


@dataclass(frozen=True, slots=True, kw_only=True)
class OperationStatistics:
    """A snapshot of one operation over the window; latencies are in seconds."""

    operation: str
    count: int
    throughput_per_s: float
    error_rate: float
    p50: float
    p95: float
    p99: float
    max: float
    mean: float


@dataclass(frozen=True, slots=True, kw_only=True)
class SeriesPoint:
    """One time slice of an operation: when it started, its volume and its percentiles."""

    time: float
    count: int
    p50: float
    p95: float
    p99: float
    errors: int


class Reservoir:
    """A uniform random sample of at most ``size`` values from a stream (Algorithm R).

    Every value seen so far has the same chance, ``size / seen``, of being in the
    sample, whatever the stream's length, which is what a rank test needs.

    Args:
        size: The most values kept.
        rng: The random source; inject a seeded ``random.Random`` for reproducible tests.
    """

    __slots__ = ("_size", "_rng", "_values", "_seen")

    def __init__(self, size: int = 2000, *, rng: random.Random | None = None) -> None:
        if size < 1:
            raise ValueError(f"a reservoir needs a size of at least 1, got {size!r}")
        self._size = size
        self._rng = rng if rng is not None else random.Random()
        self._values: list[float] = []
        self._seen = 0

    @property
    def size(self) -> int:
        """The most values kept."""
        return self._size

    @property
    def seen(self) -> int:
        """How many values were offered in total."""
        return self._seen

    def add(self, value: float) -> None:
        """Offer ``value`` to the sample."""
        self._seen += 1
        if len(self._values) < self._size:
            self._values.append(value)
            return
        slot = self._rng.randrange(self._seen)
        if slot < self._size:
            self._values[slot] = value

    def values(self) -> tuple[float, ...]:
        """Return the current sample, in no particular order."""
        return tuple(self._values)

    def __len__(self) -> int:
        return len(self._values)


class _Slice:
    __slots__ = ("epoch", "histogram", "errors")

    def __init__(self, epoch: int, relative_accuracy: float) -> None:
        self.epoch = epoch
        self.histogram = LogHistogram(relative_accuracy)
        self.errors = 0


class SlidingWindow:
    """Latency, throughput and errors of one operation over the last ``slice_count`` slices.

    Args:
        operation: The operation's name, copied into snapshots.
        slice_seconds: The width of one slice; also the resolution of :meth:`series`.
        slice_count: How many slices make the window (60 x 5 s is five minutes).
        reservoir_size: The size of the sample kept for regression tests.
        relative_accuracy: The accuracy of each slice's histogram.
        clock: Returns the current time in seconds; inject a fake one in tests.
        rng: The reservoir's random source.
    """

    def __init__(
        self,
        operation: str,
        *,
        slice_seconds: float = 5.0,
        slice_count: int = 60,
        reservoir_size: int = 2000,
        relative_accuracy: float = 0.01,
        clock: Callable[[], float] = time.monotonic,
        rng: random.Random | None = None,
    ) -> None:
        if slice_seconds <= 0 or slice_count < 1:
            raise ValueError(
                f"a window needs slice_seconds > 0 and slice_count >= 1, got "
                f"{slice_seconds!r} and {slice_count!r}; the defaults are 5.0 and 60"
            )
        self._operation = operation
        self._slice_seconds = float(slice_seconds)
        self._slice_count = slice_count
        self._relative_accuracy = relative_accuracy
        self._clock = clock
        self._slices: list[_Slice | None] = [None] * slice_count
        self._reservoir = Reservoir(reservoir_size, rng=rng)
        self._first_recorded_at: float | None = None

    @property
    def operation(self) -> str:
        """The operation's name."""
        return self._operation

    @property
    def window_seconds(self) -> float:
        """The span the window covers, ``slice_seconds * slice_count``."""
        return self._slice_seconds * self._slice_count

    def record(self, latency_seconds: float, ok: bool = True) -> None:
        """Record one call that took ``latency_seconds``; ``ok=False`` counts it as an error."""
        now = self._clock()
        epoch = math.floor(now / self._slice_seconds)
        position = epoch % self._slice_count
        current = self._slices[position]
        if current is None or current.epoch < epoch:
            current = _Slice(epoch, self._relative_accuracy)
            self._slices[position] = current
        elif current.epoch > epoch:
            return  # the clock went back past a whole window; the slice is long gone
        current.histogram.record(latency_seconds)
        if not ok:
            current.errors += 1
        self._reservoir.add(latency_seconds)
        if self._first_recorded_at is None:
            self._first_recorded_at = now

    def snapshot(self) -> OperationStatistics:
        """Return the operation's statistics over the live slices of the window."""
        now = self._clock()
        live = self._live_slices(now)
        merged = LogHistogram(self._relative_accuracy)
        errors = 0
        for each in live:
            merged.merge(each.histogram)
            errors += each.errors
        if merged.count == 0:
            return OperationStatistics(
                operation=self._operation,
                count=0,
                throughput_per_s=0.0,
                error_rate=0.0,
                p50=0.0,
                p95=0.0,
                p99=0.0,
                max=0.0,
                mean=0.0,
            )
        # Divide by the time actually observed, so a window that started a minute
        # ago does not report a fifth of its throughput; at least one slice, so a
        # burst at start-up does not read as infinite.
        observed = now - (self._first_recorded_at if self._first_recorded_at is not None else now)
        span = max(self._slice_seconds, min(observed, self.window_seconds))
        return OperationStatistics(
            operation=self._operation,
            count=merged.count,
            throughput_per_s=merged.count / span,
            error_rate=errors / merged.count,
            p50=merged.quantile(0.50),
            p95=merged.quantile(0.95),
            p99=merged.quantile(0.99),
            max=merged.max,
            mean=merged.mean,
        )

    def series(self) -> tuple[SeriesPoint, ...]:
        """Return one point per live slice holding data, oldest first."""
        return tuple(
            SeriesPoint(
                time=each.epoch * self._slice_seconds,
                count=each.histogram.count,
                p50=each.histogram.quantile(0.50),
                p95=each.histogram.quantile(0.95),
                p99=each.histogram.quantile(0.99),
                errors=each.errors,
            )
            for each in self._live_slices(self._clock())
            if each.histogram.count
        )

    def samples(self) -> tuple[float, ...]:
        """Return the reservoir sample of recorded latencies."""
        return self._reservoir.values()

    def _live_slices(self, now: float) -> list[_Slice]:
        newest = math.floor(now / self._slice_seconds)
        oldest = newest - self._slice_count + 1
        live = [
            each for each in self._slices if each is not None and oldest <= each.epoch <= newest
        ]
        live.sort(key=lambda each: each.epoch)
        return live


class OperationTable:
    """A :class:`SlidingWindow` per operation name, with a cap on how many names exist.

    Operation names often come from request paths, so a client probing random URLs
    could otherwise grow the table without bound; records for names beyond
    ``max_operations`` are counted in :attr:`dropped_records` and otherwise ignored.

    The remaining keyword arguments are passed to every window.
    """

    def __init__(
        self,
        *,
        max_operations: int = 500,
        slice_seconds: float = 5.0,
        slice_count: int = 60,
        reservoir_size: int = 2000,
        relative_accuracy: float = 0.01,
        clock: Callable[[], float] = time.monotonic,
        rng: random.Random | None = None,
    ) -> None:
        if max_operations < 1:
            raise ValueError(f"max_operations must be at least 1, got {max_operations!r}")
        self._max_operations = max_operations
        self._new_window = functools.partial(
            SlidingWindow,
            slice_seconds=slice_seconds,
            slice_count=slice_count,
            reservoir_size=reservoir_size,
            relative_accuracy=relative_accuracy,
            clock=clock,
            rng=rng if rng is not None else random.Random(),
        )
        self._windows: dict[str, SlidingWindow] = {}
        self._dropped_records = 0

    @property
    def dropped_records(self) -> int:
        """How many records were ignored because the table was full."""
        return self._dropped_records

    def record(self, operation: str, latency_seconds: float, ok: bool = True) -> bool:
        """Record one call of ``operation``; return False if it was dropped."""
        window = self._windows.get(operation)
        if window is None:
            if len(self._windows) >= self._max_operations:
                self._dropped_records += 1
                return False
            window = self._new_window(operation)
            self._windows[operation] = window
        window.record(latency_seconds, ok)
        return True

    def window(self, operation: str) -> SlidingWindow | None:
        """Return the window of ``operation``, or None if it was never recorded."""
        return self._windows.get(operation)

    def operations(self) -> tuple[str, ...]:
        """Return the recorded operation names, sorted."""
        return tuple(sorted(self._windows))

    def snapshot(self) -> tuple[OperationStatistics, ...]:
        """Return every operation's statistics, sorted by name."""
        return tuple(self._windows[name].snapshot() for name in self.operations())

    def series(self) -> dict[str, tuple[SeriesPoint, ...]]:
        """Return every operation's time series, keyed by name."""
        return {name: self._windows[name].series() for name in self.operations()}

    def samples(self) -> dict[str, tuple[float, ...]]:
        """Return every operation's reservoir sample, keyed by name."""
        return {name: self._windows[name].samples() for name in self.operations()}

    def __len__(self) -> int:
        return len(self._windows)

    def __contains__(self, operation: object) -> bool:
        return operation in self._windows
