"""``coordinator``: a map-reduce across agents that proves agent-to-agent delegation.

Payload: ``{"items": [...], "agent_type": "compute", "reduce": "list" | "sum" | "count"}``.
Each item becomes a sub-task for ``agent_type`` (default ``echo``); the results
are combined by ``reduce`` (``sum`` adds numbers, or the ``rounds`` of compute results).
"""

from __future__ import annotations

from typing import Any

from hive_ray._agent import Agent
from hive_ray._task import Task

REDUCERS = ("list", "sum", "count")


class CoordinatorAgent(Agent):
    agent_type = "coordinator"
    capabilities = frozenset({"map-reduce"})
    concurrent = True
    max_concurrency = 16

    async def handle(self, task: Task) -> dict[str, Any]:
        job = task.payload
        if not isinstance(job, dict) or not isinstance(job.get("items"), list):
            raise ValueError('coordinator expects {"items": [...], "agent_type": ..., "reduce": ...}')
        reducer = job.get("reduce", "list")
        if reducer not in REDUCERS:
            raise ValueError(f"unknown reduce {reducer!r}; choose one of {', '.join(REDUCERS)}")
        target = job.get("agent_type", "echo")
        results = await self.context.delegate_many(job["items"], agent_type=target)
        self.context.report_progress(1.0, f"{len(results)} sub-tasks done")
        if reducer == "sum":
            combined: Any = sum(r["rounds"] if isinstance(r, dict) and "rounds" in r else r for r in results)
        elif reducer == "count":
            combined = len(results)
        else:
            combined = results
        return {"sub_tasks": len(results), "agent_type": target, "result": combined}
