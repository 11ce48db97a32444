"""Unit tests for restart intensity, backoff and retry decisions (no Ray, no sleeps)."""

from __future__ import annotations

import random
import re

import pytest

from hive_ray._supervision import (
    RestartCause,
    RestartDecision,
    RestartEvent,
    RestartPolicy,
    RestartTracker,
    RetryDecision,
    RetryPolicy,
    error_type_name,
    jittered_backoff,
)


def make_tracker(**policy_fields: float) -> RestartTracker:
    return RestartTracker(RestartPolicy(**policy_fields), rng=random.Random(7))


# ---------------------------------------------------------------- backoff


def test_restart_delays_grow_by_multiplier_within_jitter_bounds() -> None:
    tracker = make_tracker(
        max_restarts=10,
        window_seconds=1000.0,
        backoff_initial_seconds=0.1,
        backoff_max_seconds=100.0,
        backoff_multiplier=2.0,
        jitter=0.2,
    )
    for attempt in range(1, 8):
        decision = tracker.record_failure("exception", now=float(attempt))
        expected = 0.1 * 2.0 ** (attempt - 1)
        assert decision.restart and not decision.degraded
        assert decision.attempt == attempt
        assert expected * 0.8 <= decision.delay_seconds <= expected * 1.2


def test_restart_delay_without_jitter_is_exact() -> None:
    tracker = make_tracker(
        max_restarts=10, window_seconds=1000.0, backoff_initial_seconds=0.5, jitter=0.0
    )
    delays = [tracker.record_failure("exception", now=float(i)).delay_seconds for i in range(4)]
    assert delays == [0.5, 1.0, 2.0, 4.0]


def test_restart_delay_caps_at_max_even_with_jitter() -> None:
    tracker = make_tracker(
        max_restarts=50,
        window_seconds=10_000.0,
        backoff_initial_seconds=1.0,
        backoff_max_seconds=3.0,
        jitter=0.5,
    )
    delays = [tracker.record_failure("oom_killed", now=float(i)).delay_seconds for i in range(40)]
    assert max(delays) <= 3.0
    assert all(1.5 <= delay <= 3.0 for delay in delays[3:])


def test_backoff_survives_huge_attempt_numbers() -> None:
    delay = jittered_backoff(
        100_000, initial=1.0, maximum=7.0, multiplier=10.0, jitter=0.0, rng=random.Random(1)
    )
    assert delay == 7.0


def test_seeded_rng_makes_delays_reproducible() -> None:
    first = [make_tracker().record_failure("exception", now=0.0).delay_seconds for _ in range(2)]
    assert first[0] == first[1]


# ---------------------------------------------------------------- intensity


def test_degraded_exactly_after_max_restarts_in_window() -> None:
    tracker = make_tracker(max_restarts=3, window_seconds=10.0)
    decisions = [tracker.record_failure("exception", now=float(i)) for i in range(4)]
    assert [decision.restart for decision in decisions] == [True, True, True, False]
    assert [decision.degraded for decision in decisions] == [False, False, False, True]
    assert "exceed max_restarts=3" in decisions[-1].reason
    assert tracker.degraded
    again = tracker.record_failure("exception", now=100.0)
    assert again.degraded and not again.restart
    assert "reset()" in again.reason


def test_zero_max_restarts_degrades_on_first_failure() -> None:
    decision = make_tracker(max_restarts=0).record_failure("node_lost", now=0.0)
    assert decision == RestartDecision(
        restart=False,
        delay_seconds=0.0,
        attempt=1,
        degraded=True,
        reason=decision.reason,
    )


def test_failures_outside_window_do_not_count() -> None:
    tracker = make_tracker(max_restarts=2, window_seconds=10.0)
    assert tracker.record_failure("exception", now=0.0).restart
    assert tracker.record_failure("exception", now=5.0).restart
    # The failure at t=0 has left the window by t=10 (window is half-open).
    third = tracker.record_failure("exception", now=10.0)
    assert third.restart and not third.degraded
    assert tracker.failures_in_window(10.0) == 2
    fourth = tracker.record_failure("exception", now=11.0)
    assert fourth.degraded


def test_backoff_streak_resets_after_quiet_period() -> None:
    tracker = make_tracker(max_restarts=10, window_seconds=30.0, jitter=0.0)
    assert tracker.record_failure("exception", now=0.0).attempt == 1
    assert tracker.record_failure("exception", now=1.0).attempt == 2
    tracker.record_success(now=2.0)
    assert tracker.record_failure("exception", now=3.0).attempt == 3
    decision = tracker.record_failure("exception", now=33.0)
    assert decision.attempt == 1
    assert decision.delay_seconds == pytest.approx(0.1)


def test_record_success_alone_ends_streak_after_quiet_period() -> None:
    tracker = make_tracker(max_restarts=10, window_seconds=5.0)
    tracker.record_failure("exception", now=0.0)
    tracker.record_success(now=6.0)
    assert tracker.failures_in_window(6.0) == 0
    assert tracker.record_failure("exception", now=6.5).attempt == 1


def test_reset_clears_degraded_state() -> None:
    tracker = make_tracker(max_restarts=1)
    tracker.record_failure("exception", now=0.0)
    assert tracker.record_failure("exception", now=0.1).degraded
    tracker.reset()
    assert not tracker.degraded
    assert tracker.record_failure("exception", now=0.2).restart


def test_memory_is_bounded_by_max_restarts() -> None:
    tracker = make_tracker(max_restarts=1_000_000, window_seconds=1.0)
    for i in range(10_000):
        tracker.record_failure("exception", now=i * 0.5)
    assert tracker.failures_in_window(10_000 * 0.5) <= 2


def test_restart_causes_accept_strings_and_reject_unknown() -> None:
    assert RestartCause.parse("oom_killed") is RestartCause.OOM_KILLED
    assert RestartCause.TIMEOUT_UNRESPONSIVE == "timeout_unresponsive"
    assert {cause.value for cause in RestartCause} == {
        "exception",
        "process_killed",
        "oom_killed",
        "node_lost",
        "health_check_failed",
        "timeout_unresponsive",
    }
    with pytest.raises(ValueError, match="unknown restart cause 'segfault'; known causes: exc"):
        make_tracker().record_failure("segfault", now=0.0)


def test_restart_event_is_a_frozen_record() -> None:
    event = RestartEvent(
        pool="coder",
        agent="coder-3",
        cause=RestartCause.OOM_KILLED.value,
        detail="exit code 137",
        at=1700000000.0,
        attempt=2,
        delay_seconds=0.2,
    )
    assert event.to_dict()["agent"] == "coder-3"
    with pytest.raises(AttributeError):
        event.attempt = 3  # type: ignore[misc]
    with pytest.raises(TypeError):
        RestartEvent("coder", "coder-3", "exception", "", 0.0, 1, 0.1)  # type: ignore[misc]


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"max_restarts": -1}, "RestartPolicy.max_restarts must be an integer >= 0, got -1"),
        ({"window_seconds": 0.0}, "RestartPolicy.window_seconds must be a finite number > 0"),
        (
            {"backoff_initial_seconds": -0.5},
            "RestartPolicy.backoff_initial_seconds must be a finite number >= 0, got -0.5",
        ),
        (
            {"backoff_initial_seconds": 2.0, "backoff_max_seconds": 1.0},
            "RestartPolicy.backoff_max_seconds must be finite and >= backoff_initial_seconds",
        ),
        ({"backoff_multiplier": 0.5}, "RestartPolicy backoff multiplier must be a finite"),
        ({"jitter": 1.5}, "RestartPolicy.jitter must be a fraction between 0 and 1 inclusive"),
    ],
)
def test_restart_policy_validation_messages(fields: dict, message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        RestartPolicy(**fields)


# ---------------------------------------------------------------- retry


def test_retry_until_max_attempts_with_growing_delays() -> None:
    policy = RetryPolicy(max_attempts=4, backoff_initial_seconds=0.05, jitter=0.2)
    rng = random.Random(3)
    decisions = [policy.decide(attempt, "TimeoutError", rng) for attempt in range(1, 5)]
    assert [decision.retry for decision in decisions] == [True, True, True, False]
    for attempt, decision in enumerate(decisions[:3], start=1):
        expected = 0.05 * 2 ** (attempt - 1)
        assert expected * 0.8 <= decision.delay_seconds <= expected * 1.2
    assert decisions[-1] == RetryDecision(
        retry=False,
        delay_seconds=0.0,
        reason="attempt 4 failed with TimeoutError; max_attempts=4 reached",
    )


def test_retry_delay_caps_at_max() -> None:
    policy = RetryPolicy(max_attempts=100, backoff_max_seconds=0.3, jitter=0.1)
    rng = random.Random(5)
    delays = [policy.decide(attempt, "OSError", rng).delay_seconds for attempt in range(1, 60)]
    assert max(delays) <= 0.3
    assert min(delays[10:]) >= 0.27


def test_never_retry_matches_plain_and_dotted_names() -> None:
    policy = RetryPolicy(never_retry=("ValueError", "mypkg.errors.QuotaError"))
    rng = random.Random(0)
    assert not policy.decide(1, "ValueError", rng).retry
    assert not policy.decide(1, "somewhere.ValueError", rng).retry
    assert not policy.decide(1, "mypkg.errors.QuotaError", rng).retry
    assert policy.decide(1, "otherpkg.QuotaError", rng).retry
    assert policy.decide(1, "QuotaError", rng).retry
    assert policy.decide(1, "KeyError", rng).retry
    assert policy.decide(1, "ValueError", rng).reason == "ValueError is listed in never_retry"


def test_error_type_name_feeds_never_retry() -> None:
    class QuotaError(Exception):
        pass

    assert error_type_name(ValueError("x")) == "ValueError"
    assert error_type_name(QuotaError()) == (
        f"{__name__}.test_error_type_name_feeds_never_retry.<locals>.QuotaError"
    )
    policy = RetryPolicy(never_retry=("ValueError",))
    assert not policy.decide(1, error_type_name(ValueError()), random.Random()).retry


def test_retry_policy_round_trips_through_dict() -> None:
    policy = RetryPolicy(max_attempts=5, jitter=0.0, never_retry=("ValueError",))
    data = policy.to_dict()
    assert data["never_retry"] == ["ValueError"]
    assert RetryPolicy.from_dict(data) == policy
    assert hash(RetryPolicy.from_dict(data)) == hash(policy)


def test_retry_policy_from_dict_rejects_unknown_fields() -> None:
    with pytest.raises(ValueError, match=r"unknown RetryPolicy field\(s\) attempts; known fields:"):
        RetryPolicy.from_dict({"attempts": 3})


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"max_attempts": 0}, "RetryPolicy.max_attempts must be an integer >= 1"),
        ({"jitter": -0.1}, "RetryPolicy.jitter must be a fraction between 0 and 1"),
        ({"multiplier": 0.0}, "RetryPolicy backoff multiplier must be a finite number >= 1"),
        ({"never_retry": "ValueError"}, "write ('ValueError',)"),
        ({"never_retry": ("",)}, "RetryPolicy.never_retry entries must be non-empty"),
    ],
)
def test_retry_policy_validation_messages(fields: dict, message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        RetryPolicy(**fields)


def test_decide_rejects_attempt_zero() -> None:
    with pytest.raises(ValueError, match="attempt numbers start at 1, got 0"):
        RetryPolicy().decide(0, "ValueError", random.Random())
