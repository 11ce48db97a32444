import pytest

from hive_ray._autoscale import AutoscalePolicy, PoolAutoscaler


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_grows_only_after_the_upscale_delay():
    clock = Clock()
    scaler = PoolAutoscaler(AutoscalePolicy(min_agents=1, max_agents=8, upscale_delay_seconds=5), clock=clock)
    assert scaler.observe(queued=20, running=2, agents=2) is None
    clock.now = 4.9
    assert scaler.observe(queued=20, running=2, agents=2) is None
    clock.now = 5.0
    assert scaler.observe(queued=20, running=2, agents=2) == 8  # ceil(22 / 2) capped at max


def test_a_burst_shorter_than_the_delay_changes_nothing():
    clock = Clock()
    scaler = PoolAutoscaler(AutoscalePolicy(upscale_delay_seconds=5, downscale_delay_seconds=5), clock=clock)
    assert scaler.observe(queued=30, running=0, agents=1) is None
    clock.now = 3
    assert scaler.observe(queued=0, running=2, agents=1) is None  # back to normal: timer resets
    clock.now = 6
    assert scaler.observe(queued=30, running=0, agents=1) is None  # a new wish starts a new timer


def test_shrinks_after_the_downscale_delay_but_not_below_min():
    clock = Clock()
    scaler = PoolAutoscaler(AutoscalePolicy(min_agents=2, max_agents=10, downscale_delay_seconds=30), clock=clock)
    assert scaler.observe(queued=0, running=0, agents=6) is None
    clock.now = 29
    assert scaler.observe(queued=0, running=0, agents=6) is None
    clock.now = 30
    assert scaler.observe(queued=0, running=0, agents=6) == 2


def test_queue_wait_target_adds_agents_even_when_the_queue_is_short():
    scaler = PoolAutoscaler(AutoscalePolicy(queue_wait_target_seconds=0.5, upscale_delay_seconds=0,
                                            target_queue_per_agent=100))
    assert scaler.observe(queued=3, running=2, agents=2, queue_wait_p95=2.0) == 3


def test_steps_are_bounded():
    scaler = PoolAutoscaler(AutoscalePolicy(max_agents=1000, max_step=10, upscale_delay_seconds=0))
    assert scaler.observe(queued=10_000, running=0, agents=5) == 15


def test_invalid_bounds_say_what_is_wrong():
    with pytest.raises(ValueError, match="0 <= min_agents <= max_agents, got 5 and 2"):
        AutoscalePolicy(min_agents=5, max_agents=2)
