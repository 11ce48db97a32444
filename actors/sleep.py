"""``sleep``: I/O-bound work simulated by an async wait of a payload-set duration.

Payload: ``{"seconds": S}`` (or just S), at most one hour. Runs concurrently:
one agent holds up to 100 sleeping tasks, as an I/O-bound agent would.
"""

from __future__ import annotations

import asyncio
from typing import Any

from hive_ray._agent import Agent
from hive_ray._task import Task


class SleepAgent(Agent):
    agent_type = "sleep"
    capabilities = frozenset({"sleep", "io"})
    concurrent = True
    max_concurrency = 100

    async def handle(self, task: Task) -> dict[str, Any]:
        payload = task.payload
        seconds = payload.get("seconds") if isinstance(payload, dict) else payload
        if not isinstance(seconds, (int, float)) or not 0 <= seconds <= 3600:
            raise ValueError('sleep expects {"seconds": <0..3600>} or a number of seconds')
        steps = max(1, min(10, int(seconds / 0.1)))
        for step in range(steps):
            await asyncio.sleep(seconds / steps)
            self.context.report_progress((step + 1) / steps)
        return {"slept": seconds}
