"""A placement that runs batches in-process, for the orchestrator's unit tests (no Ray).

Agents answer with their payload; a payload of ``"boom"`` or ``"bad"`` makes the handler
raise ``ValueError``. A test can make an agent die once (``doomed``) or on every batch
(``crashing``), and hold batches back with a gate for one agent or for all.

Each agent has its own host (``host-<agent id>``), recorded in the orchestrator's journal.
Hosts outlive an orchestrator: give the same placement to a second orchestrator (a restart)
and it adopts them. Batches the first one left running stay in ``running`` (as a host keeps
running them); ``kept`` holds outcomes a host kept for the next orchestrator;
``unadoptable`` hosts do not answer adoption; ``adopt_gate`` holds adoptions back.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import Any

from hive_ray._runtime._contracts import AdoptedHost, AgentLost, KeptOutcome, RunningBatch
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
        # hosts outliving an orchestrator
        self.book: Any = None
        self.running: dict[str, dict[str, Any]] = {}  # agent id -> {task id: envelope} not finished
        self.kept: dict[str, list[KeptOutcome]] = {}
        self.executions: Counter[str] = Counter()  # task id -> times a handler started it
        self.unadoptable: set[str] = set()
        self.adopt_gate: asyncio.Event | None = None
        self.release: asyncio.Event | None = None  # reclaimed tasks finish once it is set
        self.adopted: list[str] = []
        self.stopped_hosts: list[str] = []

    async def activate(self, spec: Any, agent_ids: list[str]) -> dict[str, dict[str, Any]]:
        self.activate_calls.append(list(agent_ids))
        self.active.update(agent_ids)
        self.activations += len(agent_ids)
        self.pool_of.update((agent_id, spec.pool) for agent_id in agent_ids)
        if self.book is not None:
            for agent_id in agent_ids:
                self.book.record_host(f"host-{agent_id}", {"name": f"host-{agent_id}", "pool": spec.pool,
                                                           "number": 0, "agent": agent_id})
        return {agent_id: {"node_id": "node-1", "pid": 1000 + len(self.active)} for agent_id in agent_ids}

    async def run_batch(self, agent_id: str, envelopes: list[Any]) -> list[Outcome]:
        self.batches.append((agent_id, [e.task_id for e in envelopes]))
        self.executions.update(e.task_id for e in envelopes)
        running = self.running.setdefault(agent_id, {})
        running.update((e.task_id, e) for e in envelopes)
        for gate in (self.gate, self.gates.get(agent_id)):
            if gate is not None:
                await gate.wait()  # an orchestrator that dies here leaves the batch running
        for envelope in envelopes:
            running.pop(envelope.task_id, None)
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
        for agent_id in agent_ids:
            self._forget_host(f"host-{agent_id}")

    def _forget_host(self, key: str) -> None:
        if self.book is not None:
            self.book.forget_host(key)

    # -- outliving an orchestrator -------------------------------------------------------
    def record_hosts_in(self, book: Any, recorded: dict[str, dict[str, Any]]) -> None:
        self.book = book

    async def adopt(self, spec: Any, key: str, info: dict[str, Any], timeout: float) -> AdoptedHost:
        agent_id = info["agent"]
        try:
            if self.adopt_gate is not None:
                await self.adopt_gate.wait()
        except asyncio.CancelledError:
            self._stop(key, agent_id)
            raise
        if key in self.unadoptable:
            self._stop(key, agent_id)
            raise AgentLost(key, "health_check_failed", f"no answer within {timeout} s")
        if agent_id not in self.active:
            self._forget_host(key)
            raise AgentLost(key, "process_killed", "gone")
        self.adopted.append(agent_id)
        running = self.running.get(agent_id)
        batches = [RunningBatch(agent_id=agent_id, attempts={t: e.attempt for t, e in running.items()})] \
            if running else []
        return AdoptedHost(key=key, where={agent_id: {"node_id": "node-1", "pid": 2000, "host": key}},
                           running=batches, outcomes=self.kept.pop(agent_id, []))

    def _stop(self, key: str, agent_id: str) -> None:
        self.stopped_hosts.append(key)
        self.active.discard(agent_id)
        self._forget_host(key)

    async def reclaim(self, agent_id: str, task_ids: list[str]) -> list[Outcome]:
        if self.release is not None:
            await self.release.wait()
        running = self.running.get(agent_id, {})
        return [self._outcome(running.pop(task_id)) for task_id in task_ids]

    async def stop_recorded(self, key: str, info: dict[str, Any]) -> None:
        self._stop(key, info["agent"])

    async def stop_strays(self) -> int:
        return 0
