"""An endpoint's shared limits: concurrency, requests and tokens per minute, in turn. Pure logic."""

from __future__ import annotations

import pytest

from hive_ray._rate_limits import EndpointLimits, Limits


def test_concurrency_is_bounded_and_a_release_lets_the_next_in():
    limits = EndpointLimits(Limits(max_concurrent=2))
    first, second, third = (limits.enqueue() for _ in range(3))
    lease_one, _ = limits.try_grant(first, 10, now=0.0)
    lease_two, _ = limits.try_grant(second, 10, now=0.0)
    assert lease_one and lease_two
    assert limits.try_grant(third, 10, now=0.0) == (None, None)  # until one ends
    limits.release(lease_one, 12, now=1.0)
    assert limits.try_grant(third, 10, now=1.0)[0] is not None


def test_callers_are_served_first_come_first_served():
    limits = EndpointLimits(Limits(max_concurrent=1))
    early, late = limits.enqueue(), limits.enqueue()
    assert limits.try_grant(late, 1, now=0.0) == (None, None)  # not its turn, though there is room
    assert limits.try_grant(early, 1, now=0.0)[0] is not None


def test_requests_per_minute_say_how_long_to_wait():
    limits = EndpointLimits(Limits(requests_per_minute=2))
    for now in (0.0, 10.0):
        assert limits.try_grant(limits.enqueue(), 1, now)[0] is not None
    waiting = limits.enqueue()
    assert limits.try_grant(waiting, 1, now=20.0) == (None, 40.0)  # the first start leaves the window at 60
    assert limits.try_grant(waiting, 1, now=60.0)[0] is not None


def test_tokens_per_minute_count_what_requests_used():
    limits = EndpointLimits(Limits(tokens_per_minute=100))
    lease, _ = limits.try_grant(limits.enqueue(), 80, now=0.0)  # an estimate
    waiting = limits.enqueue()
    assert limits.try_grant(waiting, 50, now=1.0) == (None, 59.0)
    limits.release(lease, 30, now=2.0)  # it used fewer than estimated
    assert limits.try_grant(waiting, 50, now=2.0)[0] is not None
    assert limits.window(now=2.0) == (2, 80)


def test_a_request_larger_than_the_token_limit_still_runs_alone():
    limits = EndpointLimits(Limits(tokens_per_minute=100))
    assert limits.try_grant(limits.enqueue(), 500, now=0.0)[0] is not None


def test_a_lease_whose_holder_died_is_reclaimed():
    limits = EndpointLimits(Limits(max_concurrent=1), lease_seconds=30.0)
    assert limits.try_grant(limits.enqueue(), 1, now=0.0)[0] is not None  # never released
    waiting = limits.enqueue()
    assert limits.try_grant(waiting, 1, now=29.0)[0] is None
    assert limits.try_grant(waiting, 1, now=30.0)[0] is not None and limits.reclaimed == 1


def test_a_caller_that_gives_up_leaves_the_queue():
    limits = EndpointLimits(Limits(max_concurrent=1))
    quitter, patient = limits.enqueue(), limits.enqueue()
    limits.leave(quitter)
    assert limits.try_grant(patient, 1, now=0.0)[0] is not None and limits.waiting() == 0


@pytest.mark.parametrize("bad", [0, -1, 1.5, True, "2"])
def test_limits_are_whole_numbers(bad):
    with pytest.raises(ValueError, match="whole number"):
        Limits(max_concurrent=bad)
