"""Supervision bookkeeping per pool: restart intensity, backoff and the restart log.

In the spirit of an Erlang/OTP supervisor with Akka's backoff: each failure
of an agent asks the pool's :class:`~hive_ray._supervision.RestartTracker`
whether to restart it and after what delay. More than ``max_restarts`` within
``window_seconds`` marks the pool *degraded*: its failed agents stay down and
the pool reports it, instead of restarting forever. The orchestrator performs
the restarts; this class only decides and remembers.
"""

from __future__ import annotations

import random
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from hive_ray._supervision import (
    RestartCause,
    RestartDecision,
    RestartEvent,
    RestartPolicy,
    RestartTracker,
)

#: Restart events kept per pool for `hive status`, the client and the API.
RESTART_LOG_SIZE = 200


class PoolSupervisor:
    """Decides restarts for one pool and keeps its recent restart events."""

    def __init__(self, pool: str, policy: RestartPolicy, *, clock: Callable[[], float] = time.monotonic,
                 rng: random.Random | None = None) -> None:
        self.pool = pool
        self._tracker = RestartTracker(policy, rng=rng or random.Random())
        self._clock = clock
        self.events: deque[RestartEvent] = deque(maxlen=RESTART_LOG_SIZE)
        self.total_restarts = 0

    @property
    def degraded(self) -> bool:
        return self._tracker.degraded

    def on_failure(self, agent_id: str, cause: str, detail: str) -> RestartDecision:
        """Record that ``agent_id`` failed and decide whether (and when) to restart it."""
        decision = self._tracker.record_failure(RestartCause.parse(cause), self._clock())
        self.events.append(RestartEvent(
            pool=self.pool, agent=agent_id, cause=RestartCause.parse(cause).value,
            detail=detail[:500], at=time.time(), attempt=decision.attempt,
            delay_seconds=decision.delay_seconds if decision.restart else 0.0,
        ))
        if decision.restart:
            self.total_restarts += 1
        return decision

    def on_healthy(self) -> None:
        self._tracker.record_success(self._clock())

    def reset(self) -> None:
        """Clear a degraded state (an operator scaled or re-created the pool)."""
        self._tracker.reset()

    def recent(self, limit: int = 50) -> list[dict[str, Any]]:
        return [event.to_dict() for event in list(self.events)[-limit:]]


def restart_policy_from(spec: dict[str, Any]) -> RestartPolicy:
    return RestartPolicy(**spec)
