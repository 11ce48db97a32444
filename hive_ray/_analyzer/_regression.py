"""Latency baselines, and deciding whether a new run regressed against one.

A regression must be both *real* and *worth acting on*. Real: a one-sided
Mann-Whitney U test says the current latencies are stochastically larger than the
baseline's (it assumes nothing about the distribution, and latency is never
normal). Worth acting on: the p95 grew by at least ``material_ratio`` and by at
least ``min_absolute_seconds``, because with thousands of samples the test flags
shifts of a fraction of a percent that nobody should be paged for.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hive_ray._errors import HiveError

_FORMAT_VERSION = 1


class BaselineError(HiveError):
    """A baseline file is missing, unreadable or not a baseline; ``details["path"]`` names it.

    It derives from :class:`HiveError`, whose ``__reduce__`` keeps it intact across
    process boundaries.
    """


def percentile(values: Sequence[float], q: float) -> float:
    """Return the exact ``q`` quantile of ``values`` by linear interpolation (0.0 if empty)."""
    if not values:
        return 0.0
    ordered = sorted(values)
    position = q * (len(ordered) - 1)
    lower = math.floor(position)
    upper = min(lower + 1, len(ordered) - 1)
    fraction = position - lower
    return ordered[lower] + (ordered[upper] - ordered[lower]) * fraction


@dataclass(frozen=True, slots=True, kw_only=True)
class OperationBaseline:
    """The reference latencies of one operation; percentiles are in seconds.

    ``count`` is how many calls were observed, which may exceed ``len(samples)``
    because samples come from a bounded reservoir.
    """

    operation: str
    samples: tuple[float, ...]
    p50: float
    p95: float
    p99: float
    count: int

    @classmethod
    def from_samples(
        cls, operation: str, samples: Sequence[float], *, count: int | None = None
    ) -> OperationBaseline:
        """Build a baseline from raw latencies, computing its percentiles exactly."""
        return cls(
            operation=operation,
            samples=tuple(float(value) for value in samples),
            p50=percentile(samples, 0.50),
            p95=percentile(samples, 0.95),
            p99=percentile(samples, 0.99),
            count=len(samples) if count is None else count,
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class Baseline:
    """The reference latencies of every operation, taken at ``created_at`` (epoch seconds)."""

    created_at: float
    operations: tuple[OperationBaseline, ...]

    def get(self, operation: str) -> OperationBaseline | None:
        """Return the baseline of ``operation``, or None if it has none."""
        for each in self.operations:
            if each.operation == operation:
                return each
        return None

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-ready description that :meth:`from_dict` restores."""
        return {
            "format_version": _FORMAT_VERSION,
            "created_at": self.created_at,
            "operations": [
                {
                    "operation": each.operation,
                    "count": each.count,
                    "p50": each.p50,
                    "p95": each.p95,
                    "p99": each.p99,
                    "samples": list(each.samples),
                }
                for each in self.operations
            ],
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Baseline:
        """Rebuild a baseline from :meth:`to_dict` output.

        Raises:
            ValueError: if a field is missing or malformed.
        """
        try:
            return cls(
                created_at=float(data["created_at"]),
                operations=tuple(
                    OperationBaseline(
                        operation=str(each["operation"]),
                        samples=tuple(float(value) for value in each["samples"]),
                        p50=float(each["p50"]),
                        p95=float(each["p95"]),
                        p99=float(each["p99"]),
                        count=int(each["count"]),
                    )
                    for each in data["operations"]
                ),
            )
        except (KeyError, TypeError, ValueError) as error:
            raise ValueError(f"not a baseline description: {error!r}") from error


def build_baseline(
    samples_by_operation: Mapping[str, Sequence[float]],
    *,
    counts: Mapping[str, int] | None = None,
    clock: Callable[[], float] = time.time,
) -> Baseline:
    """Build a baseline from each operation's latency sample (e.g. ``OperationTable.samples()``)."""
    counts = counts or {}
    return Baseline(
        created_at=clock(),
        operations=tuple(
            OperationBaseline.from_samples(name, samples, count=counts.get(name))
            for name, samples in sorted(samples_by_operation.items())
        ),
    )


def save_baseline(path: str | os.PathLike[str], baseline: Baseline) -> None:
    """Write ``baseline`` to ``path`` as JSON, atomically (a reader never sees half a file)."""
    target = Path(path)
    temporary = target.with_name(target.name + ".tmp")
    temporary.write_text(json.dumps(baseline.to_dict()), encoding="utf-8")
    os.replace(temporary, target)


def load_baseline(path: str | os.PathLike[str]) -> Baseline:
    """Read a baseline written by :func:`save_baseline`.

    Raises:
        BaselineError: naming the path, if the file is missing, unreadable or corrupt.
    """
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise BaselineError(
            f"no baseline file at {os.fspath(path)!r}; record one first with save_baseline() "
            f"or check the path",
            path=os.fspath(path),
        ) from None
    except OSError as error:
        raise BaselineError(
            f"cannot read baseline file {os.fspath(path)!r}: {error}", path=os.fspath(path)
        ) from error
    try:
        return Baseline.from_dict(json.loads(text))
    except (ValueError, TypeError) as error:
        raise BaselineError(
            f"baseline file {os.fspath(path)!r} is corrupt ({error}); delete it and record "
            f"a new baseline",
            path=os.fspath(path),
        ) from error


@dataclass(frozen=True, slots=True, kw_only=True)
class RegressionResult:
    """The verdict on one operation; ``regressed`` is ``significant and material``."""

    operation: str
    p_value: float
    baseline_p95: float
    current_p95: float
    ratio: float
    significant: bool
    material: bool
    regressed: bool


def mann_whitney_greater(baseline: Sequence[float], current: Sequence[float]) -> float:
    """Return the one-sided p-value that ``current`` tends to exceed ``baseline``.

    Mann-Whitney U with the normal approximation, a tie correction in the variance
    and a continuity correction; accurate for samples of more than about 20 each.
    """
    first, second = len(baseline), len(current)
    combined = sorted([(value, 0) for value in baseline] + [(value, 1) for value in current])
    total = first + second
    rank_sum_current = 0.0
    tie_term = 0.0
    start = 0
    while start < total:
        end = start
        while end + 1 < total and combined[end + 1][0] == combined[start][0]:
            end += 1
        average_rank = (start + end) / 2.0 + 1.0
        tied = end - start + 1
        tie_term += tied**3 - tied
        rank_sum_current += average_rank * sum(1 for _, group in combined[start : end + 1] if group)
        start = end + 1
    u_current = rank_sum_current - second * (second + 1) / 2.0
    mean = first * second / 2.0
    variance = first * second / 12.0 * ((total + 1) - tie_term / (total * (total - 1)))
    if variance <= 0.0:
        return 0.5  # every value is equal: no evidence either way
    z = (u_current - mean - 0.5) / math.sqrt(variance)
    return 0.5 * math.erfc(z / math.sqrt(2.0))


def compare(
    baseline_samples: Sequence[float],
    current_samples: Sequence[float],
    *,
    operation: str = "",
    alpha: float = 0.01,
    material_ratio: float = 1.10,
    min_absolute_seconds: float = 0.001,
) -> RegressionResult:
    """Decide whether ``current_samples`` regressed against ``baseline_samples``.

    Args:
        baseline_samples: Reference latencies in seconds.
        current_samples: Latencies of the run under test, in seconds.
        operation: The operation's name, copied into the result.
        alpha: The significance level of the one-sided rank test.
        material_ratio: How much the p95 must grow (1.10 is +10%) to matter.
        min_absolute_seconds: How many seconds the p95 must grow to matter.

    Raises:
        ValueError: if either sample has fewer than two values.
    """
    if len(baseline_samples) < 2 or len(current_samples) < 2:
        raise ValueError(
            f"comparing {operation or 'an operation'} needs at least 2 samples on each side, "
            f"got {len(baseline_samples)} baseline and {len(current_samples)} current; "
            f"run the workload longer"
        )
    p_value = mann_whitney_greater(baseline_samples, current_samples)
    baseline_p95 = percentile(baseline_samples, 0.95)
    current_p95 = percentile(current_samples, 0.95)
    # A tiny floor keeps the ratio finite (and JSON-ready) when the baseline is zero.
    ratio = current_p95 / max(baseline_p95, 1e-12)
    significant = p_value < alpha
    material = ratio >= material_ratio and current_p95 - baseline_p95 >= min_absolute_seconds
    return RegressionResult(
        operation=operation,
        p_value=p_value,
        baseline_p95=baseline_p95,
        current_p95=current_p95,
        ratio=ratio,
        significant=significant,
        material=material,
        regressed=significant and material,
    )


def compare_to_baseline(
    baseline: Baseline,
    current_samples_by_operation: Mapping[str, Sequence[float]],
    *,
    alpha: float = 0.01,
    material_ratio: float = 1.10,
    min_absolute_seconds: float = 0.001,
) -> tuple[RegressionResult, ...]:
    """Compare every operation present in both ``baseline`` and the current samples.

    Operations with fewer than two samples on either side are skipped.
    """
    results = []
    for name, current in sorted(current_samples_by_operation.items()):
        reference = baseline.get(name)
        if reference is None or len(reference.samples) < 2 or len(current) < 2:
            continue
        results.append(
            compare(
                reference.samples,
                current,
                operation=name,
                alpha=alpha,
                material_ratio=material_ratio,
                min_absolute_seconds=min_absolute_seconds,
            )
        )
    return tuple(results)
