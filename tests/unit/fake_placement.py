"""A placement that runs batches in-process, for the orchestrator's unit tests (no Ray).

Agents answer with their payload; a payload of ``"boom"`` or ``"bad"`` makes the handler
raise ``ValueError``. A test can make an agent die once (``doomed``) or on every batch
(``crashing``), and hold batches back with a gate for one agent or for all.
"""

from __future__ import annotations

import asyncio
from typing import Any

from hive_ray._runtime._contracts import AgentLost
from hive_ray._task import Outcome

FAILING_PAYLOADS = ("boom", "bad")


class FakePlacement:
    def __init__(self) -> None:
        self.active: set[str] = set()
        self.activations = 0
        self.doomed: set[str] = set()
        self.crashing: set[str] = set()
        self.gate: asyncio.Event | None = None
        self.gates: dict[str, asyncio.Event] = {}
        self.cancelled: list[str] = []
        self.batches: list[tuple[str, list[str]]] = []
        self.requested: list[dict[str, float]] | None = None
        self.report_hosts = False  # health_targets lists one host per agent when set
        self.pool_of: dict[str, str] = {}
        self.health_pings: list[tuple[float, str]] = []  # (loop time, host key)
        self.memory_bytes: float | None = None  # what the cluster reports; None: unknown
        self.activate_calls: list[list[str]] = []

    async def activate(self, spec: Any, agent_ids: list[str]) -> dict[str, dict[str, Any]]:
        self.activate_calls.append(list(agent_ids))
        self.active.update(agent_ids)
        self.activations += len(agent_ids)
        self.pool_of.update((agent_id, spec.pool) for agent_id in agent_ids)
        return {agent_id: {"node_id": "node-1", "pid": 1000 + len(self.active)} for agent_id in agent_ids}

    async def run_batch(self, agent_id: str, envelopes: list[Any]) -> list[Outcome]:
        self.batches.append((agent_id, [e.task_id for e in envelopes]))
        for gate in (self.gate, self.gates.get(agent_id)):
            if gate is not None:
                await gate.wait()
        if agent_id in self.crashing:
            raise AgentLost(agent_id, "process_killed", "crash loop")
        if agent_id in self.doomed:
            self.doomed.discard(agent_id)
            raise AgentLost(agent_id, "process_killed", "SIGKILL")
        return [self._outcome(envelope) for envelope in envelopes]

    @staticmethod
    def _outcome(envelope: Any) -> Outcome:
        if envelope.payload in FAILING_PAYLOADS:
            return Outcome(task_id=envelope.task_id, status="error", started_at=1.0, finished_at=1.01,
                           error={"type": "ValueError", "message": envelope.payload})
        return Outcome(task_id=envelope.task_id, status="ok", value=envelope.payload,
                       started_at=1.0, finished_at=1.0001)

    def cancel(self, agent_id: str, task_id: str) -> None:
        self.cancelled.append(task_id)

    async def host_health(self, host_key: str, timeout: float) -> dict[str, Any]:
        self.health_pings.append((asyncio.get_running_loop().time(), host_key))
        return {}

    def health_targets(self) -> list[tuple[str, str, list[str]]]:
        if not self.report_hosts:
            return []
        return [(self.pool_of[agent_id], f"host-{agent_id}", [agent_id]) for agent_id in sorted(self.active)]

    def siblings(self, agent_id: str) -> list[str]:
        return [agent_id]

    async def request_resources(self, bundles: list[dict[str, float]]) -> None:
        self.requested = bundles

    async def cluster_memory_bytes(self) -> float | None:
        return self.memory_bytes

    async def deactivate(self, agent_ids: list[str], *, kill: bool = False) -> None:
        self.active.difference_update(agent_ids)
