"""Self-tuning pool sizes: how many agents a pool wants, with hysteresis.

Pure logic with an injected clock. The orchestrator feeds each autoscaled pool
its queue depth, running tasks and recent queue-wait p95 about once a second;
:meth:`PoolAutoscaler.observe` answers with a new size only after the wish to
grow (or shrink) has held for the upscale (or downscale) delay, so a pool does
not oscillate on bursts.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True, slots=True, kw_only=True)
class AutoscalePolicy:
    min_agents: int = 1
    max_agents: int = 10
    target_queue_per_agent: float = 2.0  # queued + running tasks per agent the pool aims for
    queue_wait_target_seconds: float | None = None  # grow while queue-wait p95 is above this
    upscale_delay_seconds: float = 2.0
    downscale_delay_seconds: float = 30.0
    max_step: int = 1000  # most agents added or removed in one decision

    def __post_init__(self) -> None:
        if not 0 <= self.min_agents <= self.max_agents:
            raise ValueError(
                f"autoscale needs 0 <= min_agents <= max_agents, got {self.min_agents} and {self.max_agents}"
            )
        if self.target_queue_per_agent <= 0:
            raise ValueError("autoscale target_queue_per_agent must be above 0")


class PoolAutoscaler:
    """Turns load observations into size decisions for one pool."""

    def __init__(self, policy: AutoscalePolicy, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.policy = policy
        self._clock = clock
        self._grow_since: float | None = None
        self._shrink_since: float | None = None

    def wanted(self, *, queued: int, running: int, agents: int, queue_wait_p95: float | None = None) -> int:
        """The size the load asks for right now, within the policy's bounds."""
        policy = self.policy
        wanted = math.ceil((queued + running) / policy.target_queue_per_agent)
        target = policy.queue_wait_target_seconds
        if target is not None and queue_wait_p95 is not None and queue_wait_p95 > target and queued:
            wanted = max(wanted, agents + 1)
        wanted = max(policy.min_agents, min(policy.max_agents, wanted))
        step = policy.max_step
        return max(agents - step, min(agents + step, wanted))

    def observe(self, *, queued: int, running: int, agents: int,
                queue_wait_p95: float | None = None) -> int | None:
        """A new size once the wish to change has lasted its delay; otherwise None."""
        wanted = self.wanted(queued=queued, running=running, agents=agents, queue_wait_p95=queue_wait_p95)
        now = self._clock()
        if wanted > agents:
            self._shrink_since = None
            self._grow_since = self._grow_since if self._grow_since is not None else now
            if now - self._grow_since >= self.policy.upscale_delay_seconds:
                self._grow_since = None
                return wanted
        elif wanted < agents:
            self._grow_since = None
            self._shrink_since = self._shrink_since if self._shrink_since is not None else now
            if now - self._shrink_since >= self.policy.downscale_delay_seconds:
                self._shrink_since = None
                return wanted
        else:
            self._grow_since = self._shrink_since = None
        return None
