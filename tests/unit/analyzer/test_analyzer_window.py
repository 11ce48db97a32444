"""SlidingWindow, Reservoir and OperationTable, driven by a fake clock."""

import random

import pytest

from hive_ray._analyzer import OperationTable, Reservoir, SlidingWindow


class FakeClock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def test_snapshot_summarises_the_window():
    clock = FakeClock()
    window = SlidingWindow("HTTP GET /", clock=clock, rng=random.Random(0))
    for index in range(100):
        window.record((index + 1) / 1000, ok=index % 10 != 0)
        clock.advance(0.5)
    statistics = window.snapshot()
    assert statistics.operation == "HTTP GET /"
    assert statistics.count == 100
    assert statistics.error_rate == pytest.approx(0.10)
    assert statistics.p50 == pytest.approx(0.050, rel=0.02)
    assert statistics.p99 == pytest.approx(0.099, rel=0.02)
    assert statistics.max == 0.100
    assert statistics.mean == pytest.approx(0.0505)
    assert statistics.throughput_per_s == pytest.approx(2.0)


def test_old_slices_expire():
    clock = FakeClock()
    window = SlidingWindow("op", slice_seconds=5, slice_count=4, clock=clock)
    window.record(1.0)
    clock.advance(10)
    window.record(0.001)
    assert window.snapshot().count == 2
    clock.advance(10)  # the first record's slice is now 4 slices old
    statistics = window.snapshot()
    assert statistics.count == 1
    assert statistics.max == 0.001
    clock.advance(100)
    assert window.snapshot().count == 0
    assert window.snapshot().throughput_per_s == 0.0
    assert window.series() == ()


def test_a_reused_ring_position_starts_empty():
    clock = FakeClock(0.0)
    window = SlidingWindow("op", slice_seconds=1, slice_count=3, clock=clock)
    window.record(5.0, ok=False)
    clock.advance(3)  # same ring position, three slices later
    window.record(0.5)
    statistics = window.snapshot()
    assert (statistics.count, statistics.max, statistics.error_rate) == (1, 0.5, 0.0)


def test_series_has_one_point_per_slice_oldest_first():
    clock = FakeClock(0.0)
    window = SlidingWindow("op", slice_seconds=5, slice_count=10, clock=clock)
    for slice_number in range(3):
        for _ in range(slice_number + 1):
            window.record(0.01 * (slice_number + 1), ok=slice_number != 2)
        clock.advance(5)
    points = window.series()
    assert [point.time for point in points] == [0.0, 5.0, 10.0]
    assert [point.count for point in points] == [1, 2, 3]
    assert [point.errors for point in points] == [0, 0, 3]
    assert points[2].p95 == pytest.approx(0.03, rel=0.01)


def test_reservoir_is_bounded_and_uniform():
    reservoir = Reservoir(100, rng=random.Random(3))
    for value in range(10_000):
        reservoir.add(float(value))
    assert len(reservoir) == 100
    assert reservoir.seen == 10_000
    sample = reservoir.values()
    # A uniform sample of 0..9999 has a mean near 5000, not skewed to either end.
    assert 4000 < sum(sample) / len(sample) < 6000


def test_window_keeps_a_bounded_sample():
    clock = FakeClock()
    window = SlidingWindow("op", reservoir_size=50, clock=clock, rng=random.Random(1))
    for index in range(1000):
        window.record(index / 1000)
    assert len(window.samples()) == 50


def test_operation_table_caps_operations_and_counts_drops():
    clock = FakeClock()
    table = OperationTable(max_operations=2, clock=clock, rng=random.Random(0))
    assert table.record("b", 0.1)
    assert table.record("a", 0.2)
    assert not table.record("c", 0.3)
    assert not table.record("d", 0.3)
    assert table.record("a", 0.2)
    assert table.operations() == ("a", "b")
    assert table.dropped_records == 2
    assert "c" not in table and len(table) == 2
    assert [each.count for each in table.snapshot()] == [2, 1]
    assert set(table.series()) == {"a", "b"}
    assert table.samples()["a"] == (0.2, 0.2)
    assert table.window("zzz") is None


def test_configuration_errors_say_how_to_fix():
    with pytest.raises(ValueError, match="the defaults are 5.0 and 60"):
        SlidingWindow("op", slice_seconds=0)
