"""A placement that runs batches in-process, for the orchestrator's unit tests (no Ray).

Agents answer with their payload; a payload of ``"boom"`` or ``"bad"`` makes the handler
raise ``ValueError``. A test can make an agent die once (``doomed``) or on every batch
(``crashing``), and hold batches back with a gate for one agent or for all.

Each agent has its own host (``host-<agent id>``), recorded in the orchestrator's journal.
Hosts outlive an orchestrator: give the same placement to a second orchestrator (a restart)
and it adopts them. Batches the first one left running stay in ``running`` (as a host keeps
running them); ``kept`` holds outcomes a host kept for the next orchestrator;
``unadoptable`` hosts do not answer adoption; ``adopt_gate`` holds adoptions back.

With ``agents_per_host`` above one, agents share hosts ``agents_per_host`` at a time (in activation order), and a host dies
with everything on it: a payload in ``poison`` crashes its host, which fails every batch
held there. A payload of ``("big", size)`` comes back as a result kept on the host
(:class:`~hive_ray._results.StoredResult`), which ``take_result`` hands over as
``("ref", key)``. ``log`` records each batch with how many others its host held then.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import Any

from hive_ray._results import StoredResult
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
        self.health_answers: dict[str, dict[str, Any]] = {}  # host key -> what its health says
        self.agents_per_host = 1
        self.host_of: dict[str, str] = {}
        self.poison: set[Any] = set()
        self.log: list[tuple[str, list[str], int]] = []  # (agent, task ids, other batches on its host)
        self.kept_results: dict[str, str] = {}  # key of a result kept on a host -> its agent
        self.lose_results = False  # take_result finds the host gone
        self._busy: dict[int, int] = {}  # host incarnation -> batches in progress
        self._crashed: dict[str, asyncio.Event] = {}  # host -> set when its current incarnation dies

    async def activate(self, spec: Any, agent_ids: list[str]) -> dict[str, dict[str, Any]]:
        self.activate_calls.append(list(agent_ids))
        for agent_id in agent_ids:
            host = self.host_of.setdefault(agent_id, f"host-{agent_id}" if self.agents_per_host == 1
                                           else f"host-{len(self.host_of) // self.agents_per_host}")
            self._crashed.pop(host, None)  # a fresh incarnation
        self.active.update(agent_ids)
        self.activations += len(agent_ids)
        self.pool_of.update((agent_id, spec.pool) for agent_id in agent_ids)
        if self.book is not None:
            for agent_id in agent_ids:
                self.book.record_host(f"host-{agent_id}", {"name": f"host-{agent_id}", "pool": spec.pool,
                                                           "number": 0, "agent": agent_id})
        return {agent_id: {"node_id": "node-1", "pid": 1000 + len(self.active)} for agent_id in agent_ids}

    async def run_batch(self, agent_id: str, envelopes: list[Any]) -> list[Outcome]:
        host = self.host_of.get(agent_id, agent_id)
        crashed = self._crashed.setdefault(host, asyncio.Event())
        self.batches.append((agent_id, [e.task_id for e in envelopes]))
        self.executions.update(e.task_id for e in envelopes)
        running = self.running.setdefault(agent_id, {})
        running.update((e.task_id, e) for e in envelopes)
        incarnation = id(crashed)  # batches of a killed incarnation do not count
        self.log.append((agent_id, [e.task_id for e in envelopes], self._busy.get(incarnation, 0)))
        self._busy[incarnation] = self._busy.get(incarnation, 0) + 1
        try:
            if not crashed.is_set() and any(any(e.payload == p for p in self.poison) for e in envelopes):
                crashed.set()  # everything else on this host dies with it
                for envelope in envelopes:
                    running.pop(envelope.task_id, None)
                raise AgentLost(agent_id, "process_killed", "os._exit(1) in a handler")
            for gate in (self.gate, self.gates.get(agent_id)):
                if gate is not None and not gate.is_set() and not crashed.is_set():
                    waits = {asyncio.ensure_future(gate.wait()), asyncio.ensure_future(crashed.wait())}
                    _, pending = await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
                    for waiting in pending:
                        waiting.cancel()
            # (an orchestrator that dies while a batch waits at a gate leaves it running)
            for envelope in envelopes:
                running.pop(envelope.task_id, None)
            if crashed.is_set():
                raise AgentLost(agent_id, "process_killed", f"{host} crashed")
            if agent_id in self.crashing:
                raise AgentLost(agent_id, "process_killed", "crash loop")
            if agent_id in self.doomed:
                self.doomed.discard(agent_id)
                raise AgentLost(agent_id, "process_killed", "SIGKILL")
            return [self._outcome(agent_id, envelope) for envelope in envelopes]
        finally:
            self._busy[incarnation] -= 1

    def _outcome(self, agent_id: str, envelope: Any) -> Outcome:
        payload = envelope.payload
        if isinstance(payload, tuple) and payload[:1] == ("big",):
            key = f"key-{envelope.task_id}-{envelope.attempt}"
            self.kept_results[key] = agent_id
            return Outcome(task_id=envelope.task_id, status="ok", value=StoredResult(key, payload[1]),
                           started_at=1.0, finished_at=1.0001)
        return self._answer(envelope)

    async def take_result(self, agent_id: str, key: str) -> Any:
        if self.lose_results or self.kept_results.pop(key, None) != agent_id:
            raise AgentLost(agent_id, "process_killed", "its host is gone")
        return ("ref", key)

    @staticmethod
    def _answer(envelope: Any) -> Outcome:
        if envelope.payload in FAILING_PAYLOADS:
            return Outcome(task_id=envelope.task_id, status="error", started_at=1.0, finished_at=1.01,
                           error={"type": "ValueError", "message": envelope.payload})
        return Outcome(task_id=envelope.task_id, status="ok", value=envelope.payload,
                       started_at=1.0, finished_at=1.0001)

    def cancel(self, agent_id: str, task_id: str) -> None:
        self.cancelled.append(task_id)

    async def host_health(self, host_key: str, timeout: float) -> dict[str, Any]:
        self.health_pings.append((asyncio.get_running_loop().time(), host_key))
        return self.health_answers.get(host_key, {})

    def health_targets(self) -> list[tuple[str, str, list[str]]]:
        if not self.report_hosts:
            return []
        return [(self.pool_of[agent_id], f"host-{agent_id}", [agent_id]) for agent_id in sorted(self.active)]

    def siblings(self, agent_id: str) -> list[str]:
        host = self.host_of.get(agent_id)
        return sorted(a for a, h in self.host_of.items() if h == host and a in self.active) or [agent_id]

    async def request_resources(self, bundles: list[dict[str, float]]) -> None:
        self.requested = bundles

    async def cluster_memory_bytes(self) -> float | None:
        return self.memory_bytes

    async def deactivate(self, agent_ids: list[str], *, kill: bool = False) -> None:
        self.active.difference_update(agent_ids)
        if kill:  # what the killed hosts were running never answers
            for agent_id in agent_ids:
                self._crashed.setdefault(self.host_of.get(agent_id, agent_id), asyncio.Event()).set()
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
        return [self._outcome(agent_id, running.pop(task_id)) for task_id in task_ids]

    async def stop_recorded(self, key: str, info: dict[str, Any]) -> None:
        self._stop(key, info["agent"])

    async def stop_strays(self) -> int:
        return 0
