"""``echo``: returns its payload; the reference for overhead measurements."""

from __future__ import annotations

from typing import Any

from hive_ray._agent import Agent
from hive_ray._task import Task


class EchoAgent(Agent):
    agent_type = "echo"
    capabilities = frozenset({"echo"})

    def handle(self, task: Task) -> Any:
        return task.payload
