"""The orchestrator actor: pools, queues, dispatch, supervision and the journal.

One async Ray actor, named ``orchestrator`` in the ``hive`` namespace, so that
every driver (a notebook kernel, the CLI, a Serve replica) finds the same one.
It runs on one event loop, so its state needs no locks; everything slow
(agent calls, journal commits, restarts) is awaited, never blocked on.

Delivery is at-least-once: a task running on an agent that dies is queued
again (up to its pool's ``retry.max_attempts``), and its result is recorded
exactly once (a late duplicate is counted, not recorded). Accepted tasks are
in the journal before ``submit`` answers; a restarted orchestrator re-creates
its pools and re-queues every task that had not ended.

The class runs without Ray in unit tests: give it a fake ``placement``.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import logging
import random
import time
import uuid
from collections import OrderedDict, deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hive_ray._autoscale import AutoscalePolicy, PoolAutoscaler
from hive_ray._errors import (
    ConfigurationError,
    HiveError,
    NoRouteError,
    TaskNotFoundError,
    UnknownPoolError,
)
from hive_ray._gc_pauses import freeze_long_lived, gc_pauses
from hive_ray._registry import AgentTypeInfo, describe
from hive_ray._results import PENDING
from hive_ray._runtime._contracts import AgentLost, PoolPlacementSpec
from hive_ray._runtime._supervisor import PoolSupervisor, restart_policy_from
from hive_ray._runtime._views import TaskViews
from hive_ray._scheduler import PoolScheduler
from hive_ray._settings import Settings
from hive_ray._supervision import RetryPolicy
from hive_ray._task import Envelope, Outcome, TaskEntry, TaskState, check_transition

logger = logging.getLogger("hive_ray.orchestrator")

#: Dead-lettered task ids remembered in memory (the records themselves follow retention).
DEAD_LETTER_LIMIT = 10_000


@dataclass(slots=True, kw_only=True)
class AgentRecord:
    agent_id: str
    pool: str
    state: str = "starting"  # starting | ready | restarting | stopping | failed
    node_id: str | None = None
    pid: int | None = None
    started_at: float | None = None
    host: str | None = None
    tasks_done: int = 0
    restarts: int = 0
    inflight: set[str] = field(default_factory=set)


@dataclass(slots=True, kw_only=True)
class Pool:
    spec: dict[str, Any]
    info: AgentTypeInfo
    scheduler: PoolScheduler
    supervisor: PoolSupervisor
    retry: RetryPolicy
    agents: dict[str, AgentRecord] = field(default_factory=dict)
    counter: itertools.count = field(default_factory=itertools.count)
    succeeded: int = 0
    failed: int = 0
    autoscaler: PoolAutoscaler | None = None
    queue_waits: deque[float] = field(default_factory=lambda: deque(maxlen=256))
    growing: set[asyncio.Task[Any]] = field(default_factory=set)

    def queue_wait_p95(self) -> float | None:
        if not self.queue_waits:
            return None
        ordered = sorted(self.queue_waits)
        return ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))]

    @property
    def name(self) -> str:
        return self.spec["name"]

    @property
    def state(self) -> str:
        return "degraded" if self.supervisor.degraded else "ok"


class Orchestrator(TaskViews):
    """Owns pools of agents and every task's record; see the module docstring."""

    #: What drivers may call over the data plane: the hot paths (and reads).
    CLIENT_CALLS = frozenset({"run", "run_many", "submit", "submit_many", "wait", "wait_many", "task", "tasks",
                              "cancel", "events", "health", "statistics", "pools", "pool",
                              "dead_letters", "resubmit", "hosts", "restart_events"})

    def __init__(self, settings: dict[str, Any] | None = None, placement: Any = None) -> None:
        self.settings = Settings(**(settings or {}))
        self._placement = placement
        self._channels: Any = None
        self._channel_token = ""
        self._journal: Any = None
        self._pools: dict[str, Pool] = {}
        self._tasks: dict[str, TaskEntry] = {}
        self._finished: OrderedDict[str, None] = OrderedDict()
        self._dead_letters: OrderedDict[str, None] = OrderedDict()
        self._idempotency: dict[tuple[str, str], str] = {}
        self._waiters: dict[str, list[asyncio.Future[Any]]] = {}
        self._events: deque[dict[str, Any]] = deque(maxlen=self.settings.event_buffer)
        self._event_sequence = itertools.count(1)
        self._event_signal: asyncio.Event | None = None
        self._deadlines: list[tuple[float, int, str]] = []
        self._deadline_sequence = itertools.count()
        self._wakeup: asyncio.Event | None = None
        self._background: set[asyncio.Task[Any]] = set()
        self._started = False
        self._start_future: asyncio.Future[None] | None = None
        self._rng = random.Random()
        self._counters = {"submitted": 0, "succeeded": 0, "failed": 0, "cancelled": 0,
                          "timed_out": 0, "redelivered": 0, "retried": 0, "late_results": 0,
                          "duplicate_executions": 0, "dead_lettered": 0, "recovered": 0}
        self._created_at = time.time()
        self._recovery_seconds: float | None = None
        self._tracer: Any = None  # hive_ray._tracing.Tracer when settings.tracing is on
        self._analyzer: Any = None
        self._last_demand: list[dict[str, float]] | None = None
        self._gc_pauses = gc_pauses()

    # ------------------------------------------------------------------ start-up
    async def _ensure_started(self) -> None:
        if self._started:
            return
        if self._start_future is None:
            self._start_future = asyncio.ensure_future(self._start())
        await asyncio.shield(self._start_future)

    async def _start(self) -> None:
        began = time.monotonic()
        self._event_signal = asyncio.Event()
        self._wakeup = asyncio.Event()
        self._journal = self._open_journal()  # raises JournalError: start-up stops, clearly
        if self._placement is None:
            self._placement = await self._make_ray_placement()
            self._start_tracing()
        self._started = True
        self._spawn_background(self._timer_loop())
        self._spawn_background(self._health_loop())
        self._spawn_background(self._autoscale_loop())
        if self._journal is not None:
            await self._recover()
            self._spawn_background(self._prune_loop())
        self._recovery_seconds = time.monotonic() - began
        freeze_long_lived()

    def _open_journal(self) -> Any:
        if not self.settings.journal:
            return None
        from hive_ray._runtime._durability import TaskJournal

        directory = self.settings.journal_dir
        if directory is None:
            # One journal per orchestrator: several may share a cluster (namespaces, names).
            directory = _session_journal_dir() / f"{self.settings.namespace}-{self.settings.orchestrator_name}"
        return TaskJournal.open(directory)

    async def _make_ray_placement(self) -> Any:
        import secrets

        import ray

        from hive_ray._runtime._channel import ChannelServer
        from hive_ray._runtime._placement import RayPlacement

        me = ray.get_runtime_context().current_actor
        self._channel_token = secrets.token_hex(16)
        channels: ChannelServer | None = ChannelServer(self._channel_token, self._answer_client_call)
        host = self.settings.data_plane_host or _data_plane_bind_address()
        if host == "off":
            channels = None
        else:
            try:
                await channels.start(host)
            except OSError as error:
                logger.warning("data plane could not listen on %s (%s); using Ray calls", host, error)
                channels = None
        self._channels = channels
        return RayPlacement(me, namespace=self.settings.namespace, channels=channels,
                            channel_token=self._channel_token)

    async def _recover(self) -> None:
        """Re-create journaled pools and re-queue every task that had not ended."""
        declarations = self._journal.pools()
        unfinished = self._journal.unfinished()
        if not declarations and not unfinished:
            return
        logger.warning("recovering %d pool(s) and %d unfinished task(s) from %s",
                       len(declarations), len(unfinished), self._journal.path)
        for declaration in declarations:
            try:
                await self.create_pool(declaration["spec"], declaration["reference"],
                                       declaration["capabilities"], declaration["concurrency"],
                                       _recovering=True)
            except HiveError as error:
                logger.error("could not re-create pool %s: %s", declaration["spec"].get("name"), error)
        for entry in unfinished:
            pool = self._pools.get(entry.pool)
            self._tasks[entry.task_id] = entry
            if entry.idempotency_key is not None:
                self._idempotency[(entry.pool, entry.idempotency_key)] = entry.task_id
            if pool is None:
                self._end(entry, TaskState.FAILED, error={
                    "type": "PoolMissing", "message": f"pool {entry.pool!r} no longer exists after a restart"})
                continue
            # Rebuilt from the journal, not a transition: whatever had not ended waits again.
            entry.state, entry.agent_id = TaskState.QUEUED, None
            pool.scheduler.requeue(entry, front=False)
            if entry.timeout is not None:
                heapq.heappush(self._deadlines, (entry.created_at + entry.timeout,
                                                 next(self._deadline_sequence), entry.task_id))
            self._emit(entry, "queued", message="recovered after an orchestrator restart")
            self._counters["recovered"] += 1
        for pool in self._pools.values():
            self._pump(pool)

    def _spawn_background(self, coroutine: Any) -> asyncio.Task[Any]:
        task = asyncio.ensure_future(coroutine)
        self._background.add(task)
        task.add_done_callback(self._background.discard)
        return task

    async def _answer_client_call(self, method: str, args: tuple[Any, ...]) -> Any:
        if method not in self.CLIENT_CALLS:
            raise ConfigurationError(f"{method!r} cannot be called over the data plane; use a Ray call")
        return await getattr(self, method)(*args)

    async def client_endpoint(self) -> tuple[tuple[str, int], str, str] | None:
        """``(address, token, node address)`` of the data plane for drivers, or None if off."""
        await self._ensure_started()
        if self._channels is None or self._channels.address is None:
            return None
        import ray

        return self._channels.address, self._channel_token, ray.util.get_node_ip_address()

    # ------------------------------------------------------------------ pools
    async def create_pool(self, spec: dict[str, Any], reference: str | bytes | None = None,
                          capabilities: list[str] | None = None, concurrency: int | None = None,
                          _recovering: bool = False) -> dict[str, Any]:
        """Create a pool (or add ``count`` agents to an existing one) and wait until ready."""
        if not _recovering:
            await self._ensure_started()
        from hive_ray._models import PoolSpec

        try:
            validated = PoolSpec(**spec).model_dump()
        except ValueError as error:
            raise ConfigurationError(f"invalid pool spec: {error}") from None
        name = validated["name"]
        pool = self._pools.get(name)
        if pool is not None:
            if pool.spec["agent_type"] != validated["agent_type"]:
                raise ConfigurationError(
                    f"pool {name!r} already runs agent type {pool.spec['agent_type']!r}, not "
                    f"{validated['agent_type']!r}; choose another pool name"
                )
            return await self.scale(name, self._live_count(pool) + validated["count"])
        if reference is None:
            info = describe(validated["agent_type"])  # raises UnknownAgentTypeError
        else:
            info = AgentTypeInfo(name=validated["agent_type"], capabilities=frozenset(capabilities or ()),
                                 concurrency=concurrency or 1, reference=reference)
        retry = validated["retry"]
        pool = Pool(
            spec=validated, info=info,
            scheduler=PoolScheduler(name, policy=validated["policy"], max_queue=validated["max_queue"],
                                    max_batch=self.settings.max_batch,
                                    target_batch_seconds=self.settings.target_batch_seconds),
            supervisor=PoolSupervisor(name, restart_policy_from(validated["restart"]), rng=self._rng),
            retry=RetryPolicy(max_attempts=retry["max_attempts"],
                              backoff_initial_seconds=retry["backoff_initial_seconds"],
                              backoff_max_seconds=retry["backoff_max_seconds"],
                              multiplier=retry["multiplier"], jitter=retry["jitter"],
                              never_retry=tuple(retry["never_retry"])),
        )
        if validated["autoscale"] is not None:
            pool.autoscaler = PoolAutoscaler(AutoscalePolicy(**validated["autoscale"]))
            validated["count"] = max(validated["autoscale"]["min_agents"],
                                     min(validated["autoscale"]["max_agents"], validated["count"]))
        self._pools[name] = pool
        self._journal_pool(pool)
        try:
            await self._grow(pool, validated["count"])
        except BaseException:
            if not pool.agents:
                self._pools.pop(name, None)
                if self._journal is not None:
                    self._journal.forget_pool(name)
            raise
        return self._pool_info(pool)

    def _journal_pool(self, pool: Pool) -> None:
        if self._journal is not None:
            self._journal.record_pool(pool.name, {
                "spec": dict(pool.spec), "reference": pool.info.reference,
                "capabilities": sorted(pool.info.capabilities), "concurrency": pool.info.concurrency})

    @staticmethod
    def _live_count(pool: Pool) -> int:
        return sum(1 for a in pool.agents.values() if a.state != "stopping")

    async def scale(self, name: str, count: int) -> dict[str, Any]:
        """Grow or shrink a pool to ``count`` agents. Busy agents finish their tasks first."""
        await self._ensure_started()
        pool = self._pool(name)
        if count < 0:
            raise ConfigurationError(f"cannot scale pool {name!r} to {count} agents; use 0 or more")
        pool.spec["count"] = count
        self._journal_pool(pool)
        pool.supervisor.reset()  # an operator's decision clears a degraded state
        for record in [a for a in pool.agents.values() if a.state == "failed"]:
            pool.agents.pop(record.agent_id)
        current = [a for a in pool.agents.values() if a.state != "stopping"]
        if count > len(current):
            await self._grow(pool, count)
        elif count < len(current):
            leaving = sorted(current, key=lambda a: len(a.inflight))[: len(current) - count]
            await self._stop_agents(pool, [a.agent_id for a in leaving])
            await self._request_resources()
        return self._pool_info(pool)

    async def stop_pool(self, name: str) -> dict[str, Any]:
        """Stop every agent of a pool and remove it; its unfinished tasks are cancelled."""
        await self._ensure_started()
        pool = self._pool(name)
        for starting in list(pool.growing):
            starting.cancel()  # agents the cluster could not place yet: give up on them
        for entry in [e for e in self._tasks.values() if e.pool == name and not e.state.terminal]:
            pool.scheduler.discard(entry)
            self._end(entry, TaskState.CANCELLED, error={
                "type": "PoolStopped", "message": f"pool {name!r} was stopped before the task ended"})
        await self._stop_agents(pool, list(pool.agents), wait_seconds=0)
        info = self._pool_info(pool)
        del self._pools[name]
        if self._journal is not None:
            self._journal.forget_pool(name)
        await self._request_resources()
        self._signal_events()
        return info

    async def pools(self) -> list[dict[str, Any]]:
        await self._ensure_started()
        return [self._pool_info(pool) for pool in self._pools.values()]

    async def pool(self, name: str) -> dict[str, Any]:
        await self._ensure_started()
        return self._pool_info(self._pool(name))

    def _pool(self, name: str) -> Pool:
        pool = self._pools.get(name)
        if pool is None:
            raise UnknownPoolError(pool=name, known=self._pools)
        return pool

    async def _grow(self, pool: Pool, target: int, *, wait: bool = True) -> None:
        """Start agents up to ``target``. Waits for them up to ``spawn_wait_seconds``.

        Agents the cluster cannot place yet stay ``starting`` (their demand goes
        to the autoscaler) and become ready in the background once placed.
        """
        missing = target - self._live_count(pool)
        if missing <= 0:
            return
        agent_ids = [f"{pool.name}-{next(pool.counter)}" for _ in range(missing)]
        for agent_id in agent_ids:
            pool.agents[agent_id] = AgentRecord(agent_id=agent_id, pool=pool.name)
        self._spawn_background(self._request_resources())
        starting = asyncio.ensure_future(self._activate(pool, agent_ids))
        pool.growing.add(starting)
        starting.add_done_callback(pool.growing.discard)
        if not wait:
            return
        done, _ = await asyncio.wait({starting}, timeout=self.settings.spawn_wait_seconds)
        if done:
            starting.result()  # raises the activation's error, if any

    async def _activate(self, pool: Pool, agent_ids: list[str]) -> None:
        try:
            where = await self._placement.activate(self._placement_spec(pool), agent_ids)
        except asyncio.CancelledError:
            for agent_id in agent_ids:
                pool.agents.pop(agent_id, None)
            raise
        except Exception as error:
            for agent_id in agent_ids:
                pool.agents.pop(agent_id, None)
            logger.error("could not start agents for pool %s: %s", pool.name, error)
            if isinstance(error, HiveError):
                raise
            raise ConfigurationError(
                f"could not start agents for pool {pool.name!r}: {type(error).__name__}: {error}"
            ) from None
        for agent_id in agent_ids:
            self._mark_ready(pool, agent_id, where.get(agent_id, {}))
        freeze_long_lived()
        self._pump(pool)

    def _demand(self) -> list[dict[str, float]]:
        """Resource bundles for every pool at its desired size (for the autoscaler)."""
        bundles = []
        for pool in self._pools.values():
            spec = pool.spec
            per_host = spec["agents_per_host"] if spec["placement"] == "packed" else 1
            bundle = {"CPU": spec["num_cpus"] * per_host, "GPU": spec["num_gpus"] * per_host,
                      **{name: amount * per_host for name, amount in spec["resources"].items()}}
            bundle = {name: amount for name, amount in bundle.items() if amount > 0}
            if bundle:
                bundles.extend([bundle] * -(-spec["count"] // per_host))
        return bundles

    async def _request_resources(self) -> None:
        demand = self._demand()
        if demand == self._last_demand:
            return
        self._last_demand = demand
        try:
            await self._placement.request_resources(demand)
        except Exception as error:  # noqa: BLE001 - a cluster without an autoscaler is fine
            logger.info("resource request not delivered: %s", error)

    async def _autoscale_loop(self) -> None:
        while True:
            await asyncio.sleep(self.settings.autoscale_interval_seconds)
            for pool in list(self._pools.values()):
                if pool.autoscaler is None or pool.growing:
                    continue
                stats = pool.scheduler.statistics()
                agents = self._live_count(pool)
                wanted = pool.autoscaler.observe(queued=stats.queued, running=stats.inflight, agents=agents,
                                                 queue_wait_p95=pool.queue_wait_p95())
                if wanted is not None and wanted != agents:
                    logger.info("autoscaling pool %s from %d to %d agents", pool.name, agents, wanted)
                    self._emit(None, "pool_scaled", pool=pool.name, message=f"{agents} -> {wanted} agents")
                    self._spawn_background(self._autoscale_to(pool, wanted))

    async def _autoscale_to(self, pool: Pool, count: int) -> None:
        pool.spec["count"] = count
        self._journal_pool(pool)
        current = [a for a in pool.agents.values() if a.state != "stopping"]
        if count > len(current):
            await self._grow(pool, count, wait=False)
        else:
            leaving = sorted(current, key=lambda a: len(a.inflight))[: len(current) - count]
            await self._stop_agents(pool, [a.agent_id for a in leaving])
            await self._request_resources()

    def _mark_ready(self, pool: Pool, agent_id: str, where: dict[str, Any]) -> None:
        record = pool.agents.get(agent_id)
        if record is None:
            return
        record.state, record.started_at = "ready", time.time()
        record.node_id, record.pid, record.host = where.get("node_id"), where.get("pid"), where.get("host")
        pool.scheduler.add_agent(agent_id, concurrency=pool.info.concurrency)

    async def _stop_agents(self, pool: Pool, agent_ids: list[str], wait_seconds: float = 30) -> None:
        for agent_id in agent_ids:
            record = pool.agents.get(agent_id)
            if record is not None:
                record.state = "stopping"
                pool.scheduler.set_accepting(agent_id, False)
        deadline = time.monotonic() + wait_seconds  # let running tasks finish, within reason
        while time.monotonic() < deadline and any(
                pool.agents[a].inflight for a in agent_ids if a in pool.agents):
            await asyncio.sleep(0.05)
        await self._placement.deactivate(agent_ids)
        for agent_id in agent_ids:
            record = pool.agents.pop(agent_id, None)
            pool.scheduler.remove_agent(agent_id)
            for task_id in list(record.inflight) if record is not None else ():
                entry = self._tasks.get(task_id)
                if entry is not None and entry.state == TaskState.RUNNING:
                    self._redeliver(pool, entry, "its agent was stopped", count_attempt=False)
        self._pump(pool)

    def _placement_spec(self, pool: Pool) -> PoolPlacementSpec:
        spec = pool.spec
        return PoolPlacementSpec(
            pool=pool.name, agent_type=spec["agent_type"], reference=pool.info.reference,
            num_cpus=spec["num_cpus"], num_gpus=spec["num_gpus"], memory=spec["memory"],
            resources=spec["resources"],
            agents_per_host=spec["agents_per_host"] if spec["placement"] == "packed" else 1,
            passivate_after_seconds=spec["passivate_after_seconds"],
        )

    # ------------------------------------------------------------------ accepting tasks
    async def run(self, template: dict[str, Any], payload: Any = None, timeout: float | None = None,
                  task_id: str | None = None) -> tuple[str, tuple[str, Any, Any]]:
        """Accept one task and answer once it ended: one call instead of submit + wait.

        Returns ``(task_id, (state, result, error))``; the state is ``pending`` if
        ``timeout`` ran out first (the task keeps running).
        """
        ids, answers = await self.run_many(template, [payload], timeout, [task_id] if task_id else None)
        return ids[0], answers[0]

    async def run_many(self, template: dict[str, Any], payloads: list[Any], timeout: float | None = None,
                       task_ids: list[str] | None = None) -> tuple[list[str], list[tuple[str, Any, Any]]]:
        """Accept a batch and answer once every task in it ended: what ``map`` sends per chunk.

        The waits are registered as the tasks are accepted, so no answer is ever
        looked up after the task has left the in-memory retention.
        """
        await self._ensure_started()
        ids, fresh = self._accept_or_fail(template, payloads, task_ids)
        # Wait registration happens before anything can yield, so that no task can end
        # (and leave the in-memory retention) before its waiter exists.
        loop = asyncio.get_running_loop()
        futures = []
        for task_id in ids:
            entry = self._tasks.get(task_id)
            if entry is not None and entry.state.terminal:
                future = loop.create_future()
                future.set_result((entry.state.value, entry.result, entry.error))
            else:
                future = loop.create_future()
                self._waiters.setdefault(task_id, []).append(future)
            futures.append(future)
        if fresh and self._journal is not None:
            await self._journal.durable()
        try:
            done = await asyncio.wait_for(asyncio.gather(*futures), timeout) if timeout else await asyncio.gather(*futures)
        except asyncio.TimeoutError:
            done = [f.result() if f.done() and not f.cancelled() else (PENDING, None, None) for f in futures]
        finally:
            for task_id, future in zip(ids, futures, strict=True):
                waiters = self._waiters.get(task_id)
                if waiters is not None and future in waiters:
                    waiters.remove(future)
                    if not waiters:
                        del self._waiters[task_id]
        return ids, list(done)

    async def submit(self, template: dict[str, Any], payload: Any = None,
                     task_id: str | None = None) -> dict[str, Any]:
        """Accept one task; returns ``{"task_id", "state", "pool"}``."""
        [task_id] = await self.submit_many(template, [payload], [task_id] if task_id else None)
        entry = self._tasks.get(task_id) or self._entry(task_id)
        return {"task_id": task_id, "state": entry.state.value, "pool": entry.pool}

    async def submit_many(self, template: dict[str, Any], payloads: list[Any],
                          task_ids: list[str] | None = None) -> list[str]:
        """Accept tasks that share everything but their payload; durable when this returns."""
        await self._ensure_started()
        ids, fresh = self._accept_or_fail(template, payloads, task_ids)
        if fresh and self._journal is not None:
            await self._journal.durable()
        return ids

    def _accept_or_fail(self, template: dict[str, Any], payloads: list[Any],
                        task_ids: list[str] | None) -> tuple[list[str], bool]:
        try:
            return self._accept(template, payloads, task_ids)
        except HiveError as error:
            for task_id in task_ids or ():
                for waiter in self._waiters.pop(task_id, ()):
                    if not waiter.done():
                        waiter.set_exception(error)
            raise

    def _accept(self, template: dict[str, Any], payloads: list[Any],
                task_ids: list[str] | None) -> tuple[list[str], bool]:
        pool = self._route(template)
        key = template.get("idempotency_key")
        if key is not None and len(payloads) == 1:
            existing = self._idempotency.get((pool.name, key))
            if existing is None and self._journal is not None:
                existing = self._journal.find_idempotent(pool.name, key)
            if existing is not None:
                return [existing], False
        pool.scheduler.check_room(len(payloads))
        now = time.time()
        ids = task_ids or [uuid.uuid4().hex for _ in payloads]
        if len(ids) != len(payloads):
            raise ConfigurationError("submit_many needs one task id per payload when ids are given")
        priority = int(template.get("priority") or 0)
        timeout = template.get("timeout")
        metadata = dict(template.get("metadata") or {})
        max_attempts = template.get("max_attempts") or pool.retry.max_attempts
        affinity = template.get("affinity_key")
        trace_context = template.get("trace_context")
        agent_type = pool.spec["agent_type"]
        tasks, enqueue, journal = self._tasks, pool.scheduler.enqueue, self._journal
        for task_id, payload in zip(ids, payloads, strict=True):
            if task_id in tasks:
                raise ConfigurationError(f"task id {task_id!r} is already in use; let hive-ray choose ids")
            entry = TaskEntry(task_id=task_id, pool=pool.name, agent_type=agent_type, payload=payload,
                              priority=priority, timeout=timeout, affinity_key=affinity,
                              idempotency_key=key, metadata=metadata, max_attempts=max_attempts,
                              trace_context=trace_context, created_at=now)
            tasks[task_id] = entry
            enqueue(entry)
            if journal is not None:
                journal.record(entry)
            if timeout is not None:
                heapq.heappush(self._deadlines, (now + timeout, next(self._deadline_sequence), task_id))
            self._emit(entry, "queued")
        if key is not None:
            self._idempotency[(pool.name, key)] = ids[0]
        if timeout is not None and self._wakeup is not None:
            self._wakeup.set()
        self._counters["submitted"] += len(ids)
        self._signal_events()
        # Dispatch right after this call has answered, not before.
        asyncio.get_running_loop().call_soon(self._pump, pool)
        return ids, True

    def _route(self, template: dict[str, Any]) -> Pool:
        if template.get("pool"):
            return self._pool(template["pool"])
        agent_type, capability = template.get("agent_type"), template.get("capability")
        if agent_type:
            candidates = [p for p in self._pools.values() if p.spec["agent_type"] == agent_type]
            if not candidates:
                running = sorted({p.spec["agent_type"] for p in self._pools.values()})
                raise NoRouteError(
                    f"no pool runs agent type {agent_type!r}; running types: {', '.join(running) or '(none)'}. "
                    f"Spawn one first: hive.spawn({agent_type!r}) or `hive spawn {agent_type}`."
                )
        elif capability:
            candidates = [p for p in self._pools.values() if capability in p.info.capabilities]
            if not candidates:
                offered = sorted({c for p in self._pools.values() for c in p.info.capabilities})
                raise NoRouteError(
                    f"no pool offers capability {capability!r}; offered: {', '.join(offered) or '(none)'}"
                )
        else:
            raise ConfigurationError("a task needs one of agent_type, capability or pool")
        if len(candidates) == 1:
            return candidates[0]
        # Several pools qualify: the one with the least work per agent.
        return min(candidates, key=lambda p: (len(p.scheduler) + p.scheduler.statistics().inflight)
                   / max(1, len(p.agents)))

    async def resubmit(self, task_id: str) -> dict[str, Any]:
        """Submit a dead-lettered (or any ended) task again, as a new task."""
        entry = self._entry(task_id)
        template = {"pool": entry.pool, "priority": entry.priority, "timeout": entry.timeout,
                    "affinity_key": entry.affinity_key, "max_attempts": entry.max_attempts,
                    "metadata": {**entry.metadata, "resubmitted_from": task_id}}
        accepted = await self.submit(template, entry.payload)
        self._dead_letters.pop(task_id, None)
        return accepted

    # ------------------------------------------------------------------ dispatch
    def _pump(self, pool: Pool) -> None:
        if self._pools.get(pool.name) is not pool:
            return
        for agent_id, entries in pool.scheduler.assign():
            record = pool.agents.get(agent_id)
            now = time.time()
            envelopes = []
            # Sampled tasks get queue spans and the context of their batch's dispatch span.
            traced = None if self._tracer is None else self._tracer.start_dispatch(pool.name, agent_id, entries, now)
            for entry in entries:
                check_transition(entry.state, TaskState.RUNNING)
                entry.state, entry.started_at, entry.agent_id = TaskState.RUNNING, now, agent_id
                entry.attempts += 1
                pool.queue_waits.append(now - entry.created_at)
                if record is not None:
                    record.inflight.add(entry.task_id)
                envelopes.append(Envelope(task_id=entry.task_id, agent_id=agent_id, payload=entry.payload,
                                          attempt=entry.attempts, deadline=entry.deadline(),
                                          metadata=entry.metadata,
                                          trace_context=entry.trace_context if traced is None
                                          else traced.get(id(entry.trace_context))))
                self._emit(entry, "running", agent_id=agent_id)
            self._spawn_background(self._dispatch(pool, agent_id, entries, envelopes))
        next_retry = pool.scheduler.next_retry_at()
        if next_retry is not None and self._wakeup is not None:
            self._wakeup.set()

    async def _dispatch(self, pool: Pool, agent_id: str, entries: list[TaskEntry],
                        envelopes: list[Envelope]) -> None:
        try:
            outcomes = await self._placement.run_batch(agent_id, envelopes)
        except AgentLost as lost:
            if self._tracer is not None:
                self._tracer.end_dispatch(envelopes, f"agent lost: {lost.cause}")
            self._release_batch(pool, agent_id, entries)
            for entry in entries:
                if entry.state == TaskState.RUNNING and entry.agent_id == agent_id:
                    self._redeliver(pool, entry, f"agent {agent_id} lost ({lost.cause})")
            await self._on_host_failed(pool, self._placement.siblings(agent_id), lost.cause, lost.detail)
            return
        except Exception as error:  # noqa: BLE001 - e.g. a result that cannot be pickled
            logger.exception("batch on %s failed", agent_id)
            outcomes = [Outcome(task_id=e.task_id, status="error",
                                error={"type": type(error).__name__, "message": str(error)[:2000]})
                        for e in envelopes]
        if self._tracer is not None:
            self._tracer.end_dispatch(envelopes)
        record = pool.agents.get(agent_id)
        by_id = {entry.task_id: entry for entry in entries}
        for outcome in outcomes:
            entry = by_id.get(outcome.task_id)
            if entry is None:
                continue
            if record is not None:
                record.inflight.discard(entry.task_id)
                record.tasks_done += 1
            if outcome.finished_at:
                pool.scheduler.observe_handle_seconds(max(0.0, outcome.finished_at - outcome.started_at))
            if entry.state != TaskState.RUNNING or entry.agent_id != agent_id:
                # It already ended (cancelled, timed out) or was delivered again elsewhere.
                self._counters["late_results"] += 1
                if outcome.status == "ok" and entry.state == TaskState.SUCCEEDED:
                    self._counters["duplicate_executions"] += 1
                continue
            self._settle(pool, entry, outcome)
        pool.scheduler.release(agent_id, len(entries))
        self._signal_events()
        self._pump(pool)

    def _settle(self, pool: Pool, entry: TaskEntry, outcome: Outcome) -> None:
        if outcome.status == "ok":
            self._end(entry, TaskState.SUCCEEDED, result=outcome.value)
        elif outcome.status == "cancelled":
            self._end(entry, TaskState.CANCELLED)
        elif outcome.status == "timed_out":
            self._end(entry, TaskState.TIMED_OUT, error=outcome.error)
        elif outcome.status == "lost":
            self._redeliver(pool, entry, "agent not active on its host")
        else:
            error = outcome.error or {}
            retry_exceptions = pool.spec["retry"]["retry_exceptions"]
            decision = pool.retry.decide(entry.attempts, str(error.get("type", "")), self._rng)
            if retry_exceptions and decision.retry and entry.attempts < (entry.max_attempts or 1):
                entry.error = error
                self._counters["retried"] += 1
                self._requeue(pool, entry, decision.delay_seconds, f"retry after {error.get('type')}")
            else:
                self._end(entry, TaskState.FAILED, error=error,
                          dead_letter=retry_exceptions and entry.attempts >= (entry.max_attempts or 1))

    def _release_batch(self, pool: Pool, agent_id: str, entries: list[TaskEntry]) -> None:
        record = pool.agents.get(agent_id)
        for entry in entries:
            if record is not None:
                record.inflight.discard(entry.task_id)
        pool.scheduler.release(agent_id, len(entries))

    def _redeliver(self, pool: Pool, entry: TaskEntry, reason: str, *, count_attempt: bool = True) -> None:
        """A running task's agent went away: queue it again, or dead-letter it."""
        if not count_attempt:
            entry.attempts = max(0, entry.attempts - 1)
        if entry.attempts >= (entry.max_attempts or 1):
            self._end(entry, TaskState.FAILED, dead_letter=True, error={
                "type": "AgentLost", "message": f"{reason}; gave up after {entry.attempts} attempt(s)"})
            return
        self._counters["redelivered"] += 1
        delay = pool.retry.decide(entry.attempts, "AgentLost", self._rng).delay_seconds
        self._requeue(pool, entry, delay, reason)

    def _requeue(self, pool: Pool, entry: TaskEntry, delay: float, reason: str) -> None:
        check_transition(entry.state, TaskState.QUEUED)
        entry.state, entry.agent_id = TaskState.QUEUED, None
        entry.not_before = time.monotonic() + delay
        pool.scheduler.requeue(entry)
        self._emit(entry, "queued", message=reason)
        if self._wakeup is not None:
            self._wakeup.set()

    # ------------------------------------------------------------------ supervision
    async def _on_host_failed(self, pool: Pool, agent_ids: list[str], cause: str, detail: str) -> None:
        """A host (with one agent, or many packed ones) failed: decide by the pool's policy
        whether and when to restart its agents, and re-deliver what they were running."""
        failed = [pool.agents[a] for a in agent_ids if a in pool.agents and pool.agents[a].state == "ready"]
        if not failed:
            self._pump(pool)
            return
        for record in failed:
            record.state = "restarting"
            pool.scheduler.remove_agent(record.agent_id)
            for task_id in list(record.inflight):  # tasks it held in other batches
                entry = self._tasks.get(task_id)
                record.inflight.discard(task_id)
                if entry is not None and entry.state == TaskState.RUNNING and entry.agent_id == record.agent_id:
                    self._redeliver(pool, entry, f"agent {record.agent_id} lost ({cause})")
        names = [record.agent_id for record in failed]
        label = names[0] if len(names) == 1 else f"{names[0]} and {len(names) - 1} agent(s) on its host"
        decision = pool.supervisor.on_failure(label, cause, detail)
        self._emit(None, "agent_restart" if decision.restart else "agent_failed", pool=pool.name,
                   agent_id=label, cause=cause, message=decision.reason)
        logger.warning("%s failed (%s: %s); %s", label, cause, detail[:200], decision.reason)
        await self._placement.deactivate(names, kill=True)
        if not decision.restart:
            for record in failed:
                record.state = "failed"
            self._pump(pool)
            return
        if decision.delay_seconds:
            await asyncio.sleep(decision.delay_seconds)
        failed = [r for r in failed if pool.agents.get(r.agent_id) is r and r.state == "restarting"]
        if not failed:
            return  # stopped or scaled away meanwhile
        try:
            where = await self._placement.activate(self._placement_spec(pool), [r.agent_id for r in failed])
        except Exception as error:  # noqa: BLE001 - e.g. no node can place it now
            for record in failed:
                record.state = "ready"  # so that this failure is handled like any other
            await self._on_host_failed(pool, [r.agent_id for r in failed], "exception", f"restart failed: {error}")
            return
        for record in failed:
            record.restarts += 1
            self._mark_ready(pool, record.agent_id, where.get(record.agent_id, {}))
        freeze_long_lived()
        self._pump(pool)

    async def _health_loop(self) -> None:
        """Ping every ready host once per interval; one that does not answer in time is restarted.

        The pings are spread evenly over the interval instead of sent together: each
        one wakes a host process, and a thousand-agent pool has several of them, so
        a burst of all at once stalled the busy hosts of a 2-core machine for
        30-50 ms every interval (measured with 8 hosts), a spike in the latency tail.
        """
        interval = self.settings.health_check_interval_seconds
        timeout = self.settings.health_check_timeout_seconds
        pending: set[str] = set()  # hosts whose last ping has not been answered yet
        while True:
            checks = [(self._pools[name], key, agent_ids)
                      for name, key, agent_ids in self._placement.health_targets()
                      if name in self._pools and self._pools[name].spec["health_check"]]
            if not checks:
                await asyncio.sleep(interval)
                continue
            spacing = interval / len(checks)
            for pool, key, agent_ids in checks:
                await asyncio.sleep(spacing)
                if key not in pending and self._pools.get(pool.name) is pool:
                    pending.add(key)
                    self._spawn_background(self._check_host(pool, key, agent_ids, timeout, pending))

    async def _check_host(self, pool: Pool, key: str, agent_ids: list[str], timeout: float,
                          pending: set[str]) -> None:
        try:
            await self._placement.host_health(key, timeout)
        except AgentLost as lost:
            await self._on_host_failed(pool, agent_ids, lost.cause, lost.detail)
        except Exception:  # noqa: BLE001 - e.g. the host was stopped meanwhile: nothing to do
            logger.debug("health check of %s failed", key, exc_info=True)
        else:
            pool.supervisor.on_healthy()
        finally:
            pending.discard(key)

    # ------------------------------------------------------------------ endings and timers
    def _end(self, entry: TaskEntry, state: TaskState, *, result: Any = None,
             error: dict[str, Any] | None = None, dead_letter: bool = False) -> None:
        check_transition(entry.state, state)
        entry.state, entry.finished_at = state, time.time()
        entry.result, entry.error = result, error
        pool = self._pools.get(entry.pool)
        if pool is not None:
            if state == TaskState.SUCCEEDED:
                pool.succeeded += 1
            elif state == TaskState.FAILED:
                pool.failed += 1
        self._counters[state.value] += 1
        if dead_letter:
            self._counters["dead_lettered"] += 1
            self._dead_letters[entry.task_id] = None
            if len(self._dead_letters) > DEAD_LETTER_LIMIT:
                self._dead_letters.popitem(last=False)
            entry.metadata = {**entry.metadata, "dead_letter": "true"}
        if self._journal is not None:
            self._journal.record(entry)
        self._emit(entry, state.value)
        self._resolve_waiters(entry)
        self._retain(entry.task_id)

    def _retain(self, task_id: str) -> None:
        finished = self._finished
        finished[task_id] = None
        limit = self.settings.finished_retention_count
        horizon = time.time() - self.settings.finished_retention_seconds
        while finished:
            oldest_id = next(iter(finished))
            oldest = self._tasks.get(oldest_id)
            if len(finished) > limit or oldest is None or (oldest.finished_at or 0) < horizon:
                finished.popitem(last=False)
                gone = self._tasks.pop(oldest_id, None)
                if gone is not None and gone.idempotency_key is not None:
                    self._idempotency.pop((gone.pool, gone.idempotency_key), None)
            else:
                break

    async def cancel(self, task_id: str) -> dict[str, Any]:
        """Cancel a queued or running task; a task that already ended is left as it is."""
        await self._ensure_started()
        entry = self._entry(task_id)
        if entry.state == TaskState.QUEUED:
            pool = self._pools.get(entry.pool)
            if pool is not None:
                pool.scheduler.discard(entry)
            self._end(entry, TaskState.CANCELLED)
        elif entry.state == TaskState.RUNNING:
            if entry.agent_id is not None:
                self._placement.cancel(entry.agent_id, task_id)
            self._end(entry, TaskState.CANCELLED)
        self._signal_events()
        return self._record(entry)

    async def _timer_loop(self) -> None:
        """Ends tasks past their timeout and wakes pools whose retries are due."""
        assert self._wakeup is not None
        while True:
            now = time.time()
            while self._deadlines and self._deadlines[0][0] <= now:
                _, _, task_id = heapq.heappop(self._deadlines)
                entry = self._tasks.get(task_id)
                if entry is not None and not entry.state.terminal:
                    self._time_out(entry)
            retry_times = []
            for pool in self._pools.values():
                due = pool.scheduler.next_retry_at()
                if due is not None:
                    if due <= time.monotonic():
                        self._pump(pool)
                    else:
                        retry_times.append(due - time.monotonic())
            delay = min([self._deadlines[0][0] - time.time()] if self._deadlines else [3600.0])
            delay = min([delay, *retry_times])
            self._wakeup.clear()
            try:
                await asyncio.wait_for(self._wakeup.wait(), max(0.001, delay))
            except asyncio.TimeoutError:
                pass

    def _time_out(self, entry: TaskEntry) -> None:
        pool = self._pools.get(entry.pool)
        agent_id = entry.agent_id if entry.state == TaskState.RUNNING else None
        if entry.state == TaskState.QUEUED and pool is not None:
            pool.scheduler.discard(entry)
        elif agent_id is not None:
            self._placement.cancel(agent_id, entry.task_id)
        self._end(entry, TaskState.TIMED_OUT, error={
            "type": "TaskTimeoutError",
            "message": f"the task did not finish within its timeout of {entry.timeout} s"})
        self._signal_events()
        if agent_id is not None and pool is not None:
            self._spawn_background(self._check_unresponsive(pool, agent_id, entry.task_id))

    async def _check_unresponsive(self, pool: Pool, agent_id: str, task_id: str) -> None:
        """A timed-out task still held by its agent after a grace period: restart the agent."""
        await asyncio.sleep(self.settings.health_check_timeout_seconds)
        record = pool.agents.get(agent_id)
        if record is not None and record.state == "ready" and task_id in record.inflight:
            await self._on_host_failed(pool, self._placement.siblings(agent_id), "timeout_unresponsive",
                                       f"{agent_id} still runs task {task_id} after its timeout and a grace period")

    async def _prune_loop(self) -> None:
        while True:
            await asyncio.sleep(30)
            try:
                await asyncio.to_thread(self._journal.prune,
                                        max_age_seconds=self.settings.journal_retention_seconds,
                                        max_finished=self.settings.journal_retention_count)
            except Exception:  # noqa: BLE001 - pruning is best effort; the next round retries
                logger.exception("journal pruning failed")

    # ------------------------------------------------------------------ status
    def _pool_info(self, pool: Pool) -> dict[str, Any]:
        stats = pool.scheduler.statistics()
        agents = [{
            "agent_id": a.agent_id, "pool": pool.name, "agent_type": pool.spec["agent_type"],
            "state": a.state, "node_id": a.node_id, "pid": a.pid, "host": a.host, "inflight": len(a.inflight),
            "tasks_done": a.tasks_done, "restarts": a.restarts, "started_at": a.started_at,
        } for a in pool.agents.values()]
        return {
            "name": pool.name, "agent_type": pool.spec["agent_type"],
            "capabilities": sorted(pool.info.capabilities),
            "size": sum(1 for a in pool.agents.values() if a.state == "ready"),
            "starting": sum(1 for a in pool.agents.values() if a.state == "starting"),
            "queue_wait_p95": pool.queue_wait_p95(),
            "desired": pool.spec["count"], "state": pool.state, "policy": pool.spec["policy"],
            "placement": pool.spec["placement"], "queued": stats.queued, "running": stats.inflight,
            "succeeded": pool.succeeded, "failed": pool.failed, "agents": agents,
            "spec": dict(pool.spec), "restarts": pool.supervisor.total_restarts,
            "recent_restarts": pool.supervisor.recent(20),
            "dead_letters": sum(1 for t in self._dead_letters if (e := self._tasks.get(t)) and e.pool == pool.name),
        }

    async def hosts(self, pool: str) -> list[dict[str, Any]]:
        """Each host actor of ``pool`` with its pid and its active and passivated agents."""
        await self._ensure_started()
        self._pool(pool)
        return await self._placement.host_summaries(pool)

    async def restart_events(self, pool: str | None = None, limit: int = 100) -> list[dict[str, Any]]:
        pools = [self._pool(pool)] if pool else list(self._pools.values())
        events = [event for p in pools for event in p.supervisor.recent(limit)]
        return sorted(events, key=lambda event: event["at"])[-limit:]

    async def health(self) -> dict[str, Any]:
        """Readiness: the orchestrator is started (journal open, recovery done) and answering."""
        await self._ensure_started()
        return {"status": "ok", "pools": len(self._pools), "tasks": len(self._tasks),
                "degraded_pools": sorted(p.name for p in self._pools.values() if p.supervisor.degraded),
                "uptime_seconds": time.time() - self._created_at}

    async def statistics(self) -> dict[str, Any]:
        import os

        return {
            "counters": dict(self._counters),
            "tasks_in_memory": len(self._tasks),
            "finished_in_memory": len(self._finished),
            "waiters": sum(len(w) for w in self._waiters.values()),
            "pools": {name: {"queued": len(p.scheduler), "inflight": p.scheduler.statistics().inflight,
                             "batch_size": p.scheduler.batch_size(), "restarts": p.supervisor.total_restarts,
                             "state": p.state}
                      for name, p in self._pools.items()},
            # Counting a large journal takes a while: off the event loop, beside the writer.
            "journal": await asyncio.to_thread(self._journal.statistics) if self._journal is not None else None,
            "journal_path": str(self._journal.path) if self._journal is not None else None,
            "recovery_seconds": self._recovery_seconds,
            "gc": self._gc_pauses.statistics(),
            "pid": os.getpid(),
        }

    async def shutdown(self) -> None:
        """Stop every pool's agents (used by ``hive down`` and ``Hive.close``); keeps the journal."""
        for name in list(self._pools):
            pool = self._pools.pop(name)
            await self._placement.deactivate(list(pool.agents))
        if self._journal is not None:
            await self._journal.durable()
        if self._tracer is not None:
            await asyncio.to_thread(self._tracer.flush)

    # ------------------------------------------------------------------ tracing and the analyzer
    def _start_tracing(self) -> None:
        """The orchestrator's tracer, and the analyzer it owns (with Ray only)."""
        from hive_ray._tracing import tracer_from_settings

        self._tracer = tracer_from_settings(self.settings, "orchestrator")
        wanted = self.settings.analyzer
        if wanted or (wanted is None and self.settings.tracing):
            from hive_ray._runtime._analyzer_actor import get_or_create_analyzer

            self._analyzer = get_or_create_analyzer(self.settings)

    async def tracing_config(self) -> dict[str, Any]:
        """What agent hosts need to trace (they ask once, when they start)."""
        from hive_ray._tracing import TracingConfig

        return TracingConfig.from_settings(self.settings).to_dict()

    async def analyzer(self) -> Any:
        """The analyzer actor's handle, started now if it does not run yet."""
        await self._ensure_started()
        if self._analyzer is None:
            from hive_ray._runtime._analyzer_actor import get_or_create_analyzer

            self._analyzer = get_or_create_analyzer(self.settings)
        return self._analyzer


def _data_plane_bind_address() -> str:
    """Loopback when every node shares this machine's address, else Ray's node address."""
    import ray

    own = ray.util.get_node_ip_address()
    addresses = {node["NodeManagerAddress"] for node in ray.nodes() if node.get("Alive")}
    return "127.0.0.1" if addresses <= {own} else own


def _session_journal_dir() -> Path:
    """The default journal lives with this Ray cluster's session files on the head node."""
    import ray

    context = ray.get_runtime_context()
    return Path(context.get_temp_dir()) / context.get_session_name() / "hive-journal"


__all__ = ["Orchestrator", "TaskNotFoundError"]
