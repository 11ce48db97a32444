"""perf/run.py's own logic: result file names and the deadline that stops a hung benchmark (no Ray)."""

from __future__ import annotations

import datetime
import threading

import pytest

from perf import run


def test_result_files_are_named_by_benchmark_date_and_mode() -> None:
    started = datetime.datetime(2026, 12, 1, 9, 5, tzinfo=datetime.timezone.utc)
    assert run.result_file_name("scale", started, quick=True) == "scale-2026-12-01-0905-quick.json"
    assert run.result_file_name("overhead", started, quick=False) == "overhead-2026-12-01-0905.json"


def test_a_benchmark_past_its_deadline_is_stopped_with_an_error_that_says_so() -> None:
    never = threading.Event()
    guard = run._deadline("demo", 0.2)
    with pytest.raises(run.BenchmarkDeadline, match="'demo' ran past its deadline of 0 s"), guard:
        never.wait(30)  # a wait that would not end by itself
    assert guard.expired


def test_a_benchmark_within_its_deadline_leaves_no_alarm_behind() -> None:
    import signal

    before = signal.getsignal(signal.SIGALRM)
    guard = run._deadline("demo", 30)
    with guard:
        pass
    assert not guard.expired
    assert signal.getitimer(signal.ITIMER_REAL) == (0.0, 0.0)
    assert signal.getsignal(signal.SIGALRM) is before
