"""The orchestrator actor: pools, queues, dispatch, supervision and task records.

One async Ray actor, named ``orchestrator`` in the ``hive`` namespace, so that
every driver (a notebook kernel, the CLI, a Serve replica) finds the same one.
It runs on a single event loop, so its state needs no locks; everything slow
(agent calls, journal commits) is awaited, never blocked on.

The class is usable without Ray for tests: give it a fake ``placement``.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import logging
import time
import uuid
from collections import OrderedDict, deque
from dataclasses import dataclass, field
from typing import Any

from hive_ray._errors import (
    ConfigurationError,
    HiveError,
    NoRouteError,
    TaskNotFoundError,
    UnknownPoolError,
)
from hive_ray._registry import AgentTypeInfo, describe
from hive_ray._results import PENDING
from hive_ray._scheduler import PoolScheduler
from hive_ray._settings import Settings
from hive_ray._task import Envelope, Outcome, TaskEntry, TaskState

logger = logging.getLogger("hive_ray.orchestrator")

#: How long a ``wait(expected=True)`` for a not-yet-known task id waits for its submit.
EARLY_WAIT_GRACE_SECONDS = 30.0


@dataclass(slots=True, kw_only=True)
class AgentRecord:
    agent_id: str
    pool: str
    state: str = "starting"  # starting | ready | restarting | stopping | failed
    node_id: str | None = None
    pid: int | None = None
    started_at: float | None = None
    tasks_done: int = 0
    restarts: int = 0
    inflight: set[str] = field(default_factory=set)


@dataclass(slots=True, kw_only=True)
class Pool:
    spec: dict[str, Any]
    info: AgentTypeInfo
    scheduler: PoolScheduler
    agents: dict[str, AgentRecord] = field(default_factory=dict)
    counter: itertools.count = field(default_factory=itertools.count)
    state: str = "ok"
    succeeded: int = 0
    failed: int = 0

    @property
    def name(self) -> str:
        return self.spec["name"]


class Orchestrator:
    """Owns pools of agents and every task's record; see the module docstring."""

    def __init__(self, settings: dict[str, Any] | None = None, placement: Any = None) -> None:
        self.settings = Settings(**(settings or {}))
        self._placement = placement
        self._pools: dict[str, Pool] = {}
        self._tasks: dict[str, TaskEntry] = {}
        self._finished: OrderedDict[str, None] = OrderedDict()
        self._idempotency: dict[tuple[str, str], str] = {}
        self._waiters: dict[str, list[asyncio.Future[Any]]] = {}
        self._events: deque[dict[str, Any]] = deque(maxlen=self.settings.event_buffer)
        self._event_sequence = itertools.count(1)
        self._event_signal: asyncio.Event | None = None
        self._deadlines: list[tuple[float, int, str]] = []
        self._deadline_sequence = itertools.count()
        self._deadline_wakeup: asyncio.Event | None = None
        self._background: set[asyncio.Task[Any]] = set()
        self._started = False
        self._start_future: asyncio.Future[None] | None = None
        self._channels: Any = None
        self._counters = {"submitted": 0, "succeeded": 0, "failed": 0, "cancelled": 0,
                          "timed_out": 0, "redelivered": 0, "late_results": 0}
        self._created_at = time.time()

    # ------------------------------------------------------------------ start-up
    async def _ensure_started(self) -> None:
        if self._started:
            return
        if self._start_future is None:
            self._start_future = asyncio.ensure_future(self._start())
        await asyncio.shield(self._start_future)

    async def _start(self) -> None:
        if self._placement is None:
            self._placement = await self._make_ray_placement()
        self._event_signal = asyncio.Event()
        self._deadline_wakeup = asyncio.Event()
        self._spawn_background(self._deadline_loop())
        self._started = True

    async def _make_ray_placement(self) -> Any:
        import secrets

        import ray

        from hive_ray._runtime._channel import ChannelServer
        from hive_ray._runtime._placement import RayPlacement

        me = ray.get_runtime_context().current_actor
        token = secrets.token_hex(16)
        channels: ChannelServer | None = ChannelServer(token, self._answer_client_call)
        self._channel_token = token
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
        return RayPlacement(me, namespace=self.settings.namespace, channels=channels, channel_token=token)

    #: What drivers may call over the data plane: the hot paths (and reads).
    CLIENT_CALLS = frozenset({"run", "submit", "submit_many", "wait", "wait_many", "task", "tasks",
                              "cancel", "events", "health", "statistics", "pools", "pool"})

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

    def _spawn_background(self, coroutine: Any) -> asyncio.Task[Any]:
        task = asyncio.ensure_future(coroutine)
        self._background.add(task)
        task.add_done_callback(self._background.discard)
        return task

    # ------------------------------------------------------------------ pools
    async def create_pool(self, spec: dict[str, Any], reference: str | bytes | None = None,
                          capabilities: list[str] | None = None, concurrency: int | None = None) -> dict[str, Any]:
        """Create a pool (or add ``count`` agents to an existing one) and wait until ready."""
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
            await self._grow(pool, pool.scheduler.statistics().agents + validated["count"])
            pool.spec["count"] = len(pool.agents)
            return self._pool_info(pool)
        if reference is None:
            info = describe(validated["agent_type"])  # raises UnknownAgentTypeError
        else:
            info = AgentTypeInfo(name=validated["agent_type"], capabilities=frozenset(capabilities or ()),
                                 concurrency=concurrency or 1, reference=reference)
        scheduler = PoolScheduler(name, policy=validated["policy"], max_queue=validated["max_queue"],
                                  max_batch=self.settings.max_batch,
                                  target_batch_seconds=self.settings.target_batch_seconds)
        pool = Pool(spec=validated, info=info, scheduler=scheduler)
        self._pools[name] = pool
        try:
            await self._grow(pool, validated["count"])
        except BaseException:
            if not pool.agents:
                self._pools.pop(name, None)
            raise
        return self._pool_info(pool)

    async def scale(self, name: str, count: int) -> dict[str, Any]:
        """Grow or shrink a pool to ``count`` agents. Busy agents finish their tasks first."""
        await self._ensure_started()
        pool = self._pool(name)
        if count < 0:
            raise ConfigurationError(f"cannot scale pool {name!r} to {count} agents; use 0 or more")
        current = [a for a in pool.agents.values() if a.state != "stopping"]
        if count > len(current):
            await self._grow(pool, count)
        elif count < len(current):
            # Stop the least busy agents first.
            leaving = sorted(current, key=lambda a: len(a.inflight))[: len(current) - count]
            await self._stop_agents(pool, [a.agent_id for a in leaving])
        pool.spec["count"] = count
        return self._pool_info(pool)

    async def stop_pool(self, name: str) -> dict[str, Any]:
        """Stop every agent of a pool and remove it; its queued tasks are cancelled."""
        await self._ensure_started()
        pool = self._pool(name)
        for entry in list(pool.scheduler._queue) + [e for e in self._tasks.values()
                                                    if e.pool == name and not e.state.terminal]:
            if not entry.state.terminal:
                pool.scheduler.discard(entry)
                self._end(entry, TaskState.CANCELLED, error={"type": "PoolStopped",
                          "message": f"pool {name!r} was stopped before the task ended"})
        await self._stop_agents(pool, list(pool.agents))
        info = self._pool_info(pool)
        del self._pools[name]
        return info

    async def pools(self) -> list[dict[str, Any]]:
        return [self._pool_info(pool) for pool in self._pools.values()]

    async def pool(self, name: str) -> dict[str, Any]:
        return self._pool_info(self._pool(name))

    def _pool(self, name: str) -> Pool:
        pool = self._pools.get(name)
        if pool is None:
            raise UnknownPoolError(pool=name, known=self._pools)
        return pool

    async def _grow(self, pool: Pool, target: int) -> None:
        missing = target - len([a for a in pool.agents.values() if a.state != "stopping"])
        if missing <= 0:
            return
        agent_ids = [f"{pool.name}-{next(pool.counter)}" for _ in range(missing)]
        for agent_id in agent_ids:
            pool.agents[agent_id] = AgentRecord(agent_id=agent_id, pool=pool.name)
        try:
            where = await self._placement.activate(self._placement_spec(pool), agent_ids)
        except Exception as error:
            for agent_id in agent_ids:
                pool.agents.pop(agent_id, None)
            if isinstance(error, HiveError):
                raise
            raise ConfigurationError(
                f"could not start agents for pool {pool.name!r}: {type(error).__name__}: {error}"
            ) from None
        now = time.time()
        for agent_id in agent_ids:
            record = pool.agents[agent_id]
            record.state, record.started_at = "ready", now
            record.node_id = where.get(agent_id, {}).get("node_id")
            record.pid = where.get(agent_id, {}).get("pid")
            pool.scheduler.add_agent(agent_id, concurrency=pool.info.concurrency)
        self._pump(pool)

    async def _stop_agents(self, pool: Pool, agent_ids: list[str]) -> None:
        for agent_id in agent_ids:
            record = pool.agents.get(agent_id)
            if record is not None:
                record.state = "stopping"
                pool.scheduler.set_accepting(agent_id, False)
        # Let running tasks finish (bounded), then stop the hosts.
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and any(
            pool.agents[a].inflight for a in agent_ids if a in pool.agents
        ):
            await asyncio.sleep(0.05)
        await self._placement.deactivate(agent_ids)
        for agent_id in agent_ids:
            record = pool.agents.pop(agent_id, None)
            pool.scheduler.remove_agent(agent_id)
            if record is not None:
                for task_id in list(record.inflight):
                    entry = self._tasks.get(task_id)
                    if entry is not None and entry.state == TaskState.RUNNING:
                        self._redeliver(pool, entry, "agent stopped")
        self._pump(pool)

    def _placement_spec(self, pool: Pool) -> Any:
        from hive_ray._runtime._contracts import PoolPlacementSpec

        spec = pool.spec
        return PoolPlacementSpec(
            pool=pool.name, agent_type=spec["agent_type"], reference=pool.info.reference,
            num_cpus=spec["num_cpus"], num_gpus=spec["num_gpus"], memory=spec["memory"],
            resources=spec["resources"],
            agents_per_host=spec["agents_per_host"] if spec["placement"] == "packed" else 1,
        )

    # ------------------------------------------------------------------ submit
    async def submit(self, template: dict[str, Any], payload: Any = None,
                     task_id: str | None = None) -> dict[str, Any]:
        """Accept one task; returns ``{"task_id", "state", "pool", "existing"}``."""
        [task_id] = await self.submit_many(template, [payload], [task_id] if task_id else None)
        entry = self._tasks[task_id]
        return {"task_id": task_id, "state": entry.state.value, "pool": entry.pool}

    async def run(self, template: dict[str, Any], payload: Any = None,
                  timeout: float | None = None) -> tuple[str, tuple[str, Any, Any]]:
        """Accept one task and answer once it ended: one call instead of submit + wait.

        Returns ``(task_id, (state, result, error))``; the state is ``pending``
        if ``timeout`` ran out first (the task keeps running).
        """
        [task_id] = await self.submit_many(template, [payload])
        return task_id, await self.wait(task_id, timeout)

    async def submit_many(self, template: dict[str, Any], payloads: list[Any],
                          task_ids: list[str] | None = None) -> list[str]:
        """Accept tasks that share everything but their payload; one call per batch."""
        await self._ensure_started()
        try:
            return self._accept(template, payloads, task_ids)
        except HiveError as error:
            for task_id in task_ids or ():
                for waiter in self._waiters.pop(task_id, ()):
                    if not waiter.done():
                        waiter.set_exception(error)
            raise

    def _accept(self, template: dict[str, Any], payloads: list[Any],
                task_ids: list[str] | None) -> list[str]:
        pool = self._route(template)
        key = template.get("idempotency_key")
        if key is not None and len(payloads) == 1:
            existing = self._idempotency.get((pool.name, key))
            if existing is not None and existing in self._tasks:
                return [existing]
        pool.scheduler.check_room(len(payloads))
        now = time.time()
        ids = task_ids or [uuid.uuid4().hex for _ in payloads]
        if len(ids) != len(payloads):
            raise ConfigurationError("submit_many needs one task id per payload when ids are given")
        priority = int(template.get("priority") or 0)
        timeout = template.get("timeout")
        metadata = dict(template.get("metadata") or {})
        max_attempts = template.get("max_attempts") or pool.spec["max_attempts"]
        affinity = template.get("affinity_key")
        trace_context = template.get("trace_context")
        agent_type = pool.spec["agent_type"]
        tasks, enqueue, events = self._tasks, pool.scheduler.enqueue, self._events
        for task_id, payload in zip(ids, payloads, strict=True):
            if task_id in tasks:
                raise ConfigurationError(f"task id {task_id!r} is already in use; let hive-ray choose ids")
            entry = TaskEntry(task_id=task_id, pool=pool.name, agent_type=agent_type, payload=payload,
                              priority=priority, timeout=timeout, affinity_key=affinity,
                              idempotency_key=key, metadata=metadata, max_attempts=max_attempts,
                              trace_context=trace_context, created_at=now)
            tasks[task_id] = entry
            enqueue(entry)
            if timeout is not None:
                heapq.heappush(self._deadlines, (now + timeout, next(self._deadline_sequence), task_id))
            events.append({"sequence": next(self._event_sequence), "time": now, "task_id": task_id,
                           "pool": pool.name, "state": "queued"})
        if key is not None:
            self._idempotency[(pool.name, key)] = ids[0]
        if timeout is not None and self._deadline_wakeup is not None:
            self._deadline_wakeup.set()
        self._counters["submitted"] += len(ids)
        self._signal_events()
        # Dispatch right after this call has answered: the caller learns sooner
        # that its tasks are accepted, and the agent call is not delayed by much.
        asyncio.get_running_loop().call_soon(self._pump, pool)
        return ids

    def _route(self, template: dict[str, Any]) -> Pool:
        if template.get("pool"):
            return self._pool(template["pool"])
        agent_type = template.get("agent_type")
        capability = template.get("capability")
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

    # ------------------------------------------------------------------ dispatch
    def _pump(self, pool: Pool) -> None:
        for agent_id, entries in pool.scheduler.assign():
            record = pool.agents.get(agent_id)
            now = time.time()
            envelopes = []
            for entry in entries:
                entry.state = TaskState.RUNNING
                entry.started_at = now
                entry.attempts += 1
                entry.agent_id = agent_id
                if record is not None:
                    record.inflight.add(entry.task_id)
                envelopes.append(Envelope(task_id=entry.task_id, agent_id=agent_id, payload=entry.payload,
                                          attempt=entry.attempts, deadline=entry.deadline(),
                                          metadata=entry.metadata, trace_context=entry.trace_context))
                self._events.append({"sequence": next(self._event_sequence), "time": now,
                                     "task_id": entry.task_id, "pool": pool.name, "state": "running"})
            self._spawn_background(self._dispatch(pool, agent_id, entries, envelopes))

    async def _dispatch(self, pool: Pool, agent_id: str, entries: list[TaskEntry],
                        envelopes: list[Envelope]) -> None:
        from hive_ray._runtime._contracts import AgentLost

        try:
            outcomes = await self._placement.run_batch(agent_id, envelopes)
        except AgentLost as lost:
            await self._on_agent_lost(pool, agent_id, entries, lost.cause, lost.detail)
            return
        except Exception as error:  # noqa: BLE001 - e.g. a result that cannot be pickled
            logger.exception("batch on %s failed", agent_id)
            outcomes = [Outcome(task_id=e.task_id, status="error",
                                error={"type": type(error).__name__, "message": str(error)[:2000]})
                        for e in envelopes]
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
                self._counters["late_results"] += 1  # already ended (cancelled, timed out) or re-delivered
                continue
            if outcome.status == "ok":
                self._end(entry, TaskState.SUCCEEDED, result=outcome.value)
            elif outcome.status == "cancelled":
                self._end(entry, TaskState.CANCELLED)
            elif outcome.status == "timed_out":
                self._end(entry, TaskState.TIMED_OUT, error=outcome.error)
            elif outcome.status == "lost":
                self._redeliver(pool, entry, "agent not active on its host")
            else:
                self._end(entry, TaskState.FAILED, error=outcome.error)
        pool.scheduler.release(agent_id, len(entries))
        self._signal_events()
        self._pump(pool)

    async def _on_agent_lost(self, pool: Pool, agent_id: str, entries: list[TaskEntry],
                             cause: str, detail: str) -> None:
        record = pool.agents.get(agent_id)
        for entry in entries:
            if record is not None:
                record.inflight.discard(entry.task_id)
            if entry.state == TaskState.RUNNING and entry.agent_id == agent_id:
                self._redeliver(pool, entry, f"agent {agent_id} lost: {cause}")
        pool.scheduler.release(agent_id, len(entries))
        if record is None or record.state in ("restarting", "stopping"):
            self._pump(pool)
            return
        logger.warning("agent %s lost (%s): %s; restarting", agent_id, cause, detail)
        record.state = "restarting"
        record.restarts += 1
        pool.scheduler.remove_agent(agent_id)
        await self._placement.deactivate([agent_id], kill=True)
        try:
            where = await self._placement.activate(self._placement_spec(pool), [agent_id])
        except Exception as error:  # noqa: BLE001
            logger.error("could not restart %s: %s", agent_id, error)
            record.state = "failed"
            pool.state = "degraded"
            self._pump(pool)
            return
        record.state, record.started_at = "ready", time.time()
        record.node_id = where.get(agent_id, {}).get("node_id")
        record.pid = where.get(agent_id, {}).get("pid")
        pool.scheduler.add_agent(agent_id, concurrency=pool.info.concurrency)
        self._pump(pool)

    def _redeliver(self, pool: Pool, entry: TaskEntry, reason: str) -> None:
        if entry.attempts >= (entry.max_attempts or 1):
            self._end(entry, TaskState.FAILED, error={
                "type": "AgentLost", "message": f"{reason}; gave up after {entry.attempts} attempts"})
            return
        entry.state = TaskState.QUEUED
        entry.agent_id = None
        self._counters["redelivered"] += 1
        pool.scheduler.requeue(entry)
        self._events.append({"sequence": next(self._event_sequence), "time": time.time(),
                             "task_id": entry.task_id, "pool": pool.name, "state": "queued",
                             "message": reason})

    # ------------------------------------------------------------------ endings
    def _end(self, entry: TaskEntry, state: TaskState, *, result: Any = None,
             error: dict[str, Any] | None = None) -> None:
        entry.state = state
        entry.finished_at = time.time()
        entry.result = result
        entry.error = error
        pool = self._pools.get(entry.pool)
        if pool is not None:
            if state == TaskState.SUCCEEDED:
                pool.succeeded += 1
            elif state == TaskState.FAILED:
                pool.failed += 1
        self._counters[state.value] += 1
        self._events.append({"sequence": next(self._event_sequence), "time": entry.finished_at,
                             "task_id": entry.task_id, "pool": entry.pool, "state": state.value})
        waiters = self._waiters.pop(entry.task_id, None)
        if waiters:
            answer = (state.value, result, error)
            for waiter in waiters:
                if not waiter.done():
                    waiter.set_result(answer)
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

    async def _deadline_loop(self) -> None:
        assert self._deadline_wakeup is not None
        while True:
            now = time.time()
            while self._deadlines and self._deadlines[0][0] <= now:
                _, _, task_id = heapq.heappop(self._deadlines)
                entry = self._tasks.get(task_id)
                if entry is None or entry.state.terminal:
                    continue
                pool = self._pools.get(entry.pool)
                if entry.state == TaskState.QUEUED and pool is not None:
                    pool.scheduler.discard(entry)
                elif entry.state == TaskState.RUNNING and entry.agent_id is not None:
                    self._placement.cancel(entry.agent_id, task_id)
                self._end(entry, TaskState.TIMED_OUT, error={
                    "type": "TaskTimeoutError",
                    "message": f"the task did not finish within its timeout of {entry.timeout} s"})
                self._signal_events()
            delay = self._deadlines[0][0] - time.time() if self._deadlines else 3600.0
            self._deadline_wakeup.clear()
            try:
                await asyncio.wait_for(self._deadline_wakeup.wait(), max(0.001, delay))
            except asyncio.TimeoutError:
                pass

    # ------------------------------------------------------------------ waiting
    async def wait(self, task_id: str, timeout: float | None = None,
                   expected: bool = False) -> tuple[str, Any, Any]:
        """``(state, result, error)`` once the task ends, or ``("pending", None, None)``.

        ``expected`` is for a client that sends ``submit`` and ``wait`` together
        to save a round trip: Ray may start the wait first, so an unknown id is
        waited for (for :data:`EARLY_WAIT_GRACE_SECONDS`) instead of refused.
        """
        entry = self._tasks.get(task_id)
        if entry is None and not expected:
            raise TaskNotFoundError(task_id=task_id)
        if entry is not None and entry.state.terminal:
            return (entry.state.value, entry.result, entry.error)
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        self._waiters.setdefault(task_id, []).append(future)
        if entry is None:
            loop.call_later(EARLY_WAIT_GRACE_SECONDS, self._expire_early_wait, task_id, future)
        try:
            if timeout is None:
                return await future
            return await asyncio.wait_for(asyncio.shield(future), timeout)
        except asyncio.TimeoutError:
            return (PENDING, None, None)
        finally:
            waiters = self._waiters.get(task_id)
            if waiters is not None and future in waiters:
                waiters.remove(future)
                if not waiters:
                    del self._waiters[task_id]

    def _expire_early_wait(self, task_id: str, future: asyncio.Future[Any]) -> None:
        if task_id not in self._tasks and not future.done():
            future.set_exception(TaskNotFoundError(task_id=task_id))

    async def wait_many(self, task_ids: list[str], timeout: float | None = None) -> list[tuple[str, Any, Any]]:
        """Answers for every id, in order, once all ended (or the timeout ran out)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        answers = []
        for task_id in task_ids:
            remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
            answers.append(await self.wait(task_id, remaining))
        return answers

    # ------------------------------------------------------------------ progress & events
    async def report_progress(self, task_id: str, fraction: float, message: str | None = None) -> None:
        entry = self._tasks.get(task_id)
        if entry is None or entry.state != TaskState.RUNNING:
            return
        entry.progress, entry.progress_message = fraction, message
        self._events.append({"sequence": next(self._event_sequence), "time": time.time(),
                             "task_id": task_id, "pool": entry.pool, "state": "progress",
                             "progress": fraction, "message": message})
        self._signal_events()

    def _signal_events(self) -> None:
        if self._event_signal is not None:
            self._event_signal.set()

    async def events(self, after: int = 0, timeout: float = 0.0, task_id: str | None = None,
                     limit: int = 1000) -> dict[str, Any]:
        """Events with a sequence above ``after``; long-polls up to ``timeout`` seconds."""
        await self._ensure_started()
        deadline = time.monotonic() + max(0.0, timeout)
        while True:
            found = [e for e in self._events if e["sequence"] > after
                     and (task_id is None or e["task_id"] == task_id)][:limit]
            last = self._events[-1]["sequence"] if self._events else 0
            remaining = deadline - time.monotonic()
            if found or remaining <= 0:
                oldest = self._events[0]["sequence"] if self._events else 0
                return {"events": found, "last_sequence": last, "missed": bool(after and oldest > after + 1)}
            assert self._event_signal is not None
            self._event_signal.clear()
            try:
                await asyncio.wait_for(self._event_signal.wait(), remaining)
            except asyncio.TimeoutError:
                pass

    # ------------------------------------------------------------------ queries
    def _entry(self, task_id: str) -> TaskEntry:
        entry = self._tasks.get(task_id)
        if entry is None:
            raise TaskNotFoundError(task_id=task_id)
        return entry

    async def task(self, task_id: str) -> dict[str, Any]:
        return self._record(self._entry(task_id))

    async def tasks(self, state: str | None = None, pool: str | None = None, limit: int = 100,
                    cursor: str | None = None) -> dict[str, Any]:
        """Newest first; ``cursor`` is the ``next_cursor`` of the previous page."""
        limit = max(1, min(1000, limit))
        entries = reversed(self._tasks.values())
        if cursor is not None:
            entries = itertools.dropwhile(lambda e: e.task_id != cursor, entries)
            next(entries, None)
        page = []
        for entry in entries:
            if (state is None or entry.state.value == state) and (pool is None or entry.pool == pool):
                page.append(entry)
                if len(page) > limit:
                    break
        more = len(page) > limit
        page = page[:limit]
        return {"tasks": [self._record(e) for e in page],
                "next_cursor": page[-1].task_id if more and page else None}

    def _record(self, entry: TaskEntry) -> dict[str, Any]:
        return {
            "task_id": entry.task_id, "pool": entry.pool, "agent_type": entry.agent_type,
            "state": entry.state.value, "priority": entry.priority, "created_at": entry.created_at,
            "started_at": entry.started_at, "finished_at": entry.finished_at,
            "attempts": entry.attempts, "agent_id": entry.agent_id, "result": entry.result,
            "error": entry.error, "progress": entry.progress, "progress_message": entry.progress_message,
            "timeout": entry.timeout, "affinity_key": entry.affinity_key,
            "idempotency_key": entry.idempotency_key, "metadata": entry.metadata,
        }

    def _pool_info(self, pool: Pool) -> dict[str, Any]:
        stats = pool.scheduler.statistics()
        agents = [{
            "agent_id": a.agent_id, "pool": pool.name, "agent_type": pool.spec["agent_type"],
            "state": a.state, "node_id": a.node_id, "pid": a.pid, "inflight": len(a.inflight),
            "tasks_done": a.tasks_done, "restarts": a.restarts, "started_at": a.started_at,
        } for a in pool.agents.values()]
        return {
            "name": pool.name, "agent_type": pool.spec["agent_type"],
            "capabilities": sorted(pool.info.capabilities),
            "size": sum(1 for a in pool.agents.values() if a.state == "ready"),
            "desired": pool.spec["count"], "state": pool.state, "policy": pool.spec["policy"],
            "placement": pool.spec["placement"], "queued": stats.queued, "running": stats.inflight,
            "succeeded": pool.succeeded, "failed": pool.failed, "agents": agents,
            "spec": dict(pool.spec),
        }

    async def health(self) -> dict[str, Any]:
        """Readiness: answers only if the event loop is alive; cheap."""
        await self._ensure_started()
        return {"status": "ok", "pools": len(self._pools), "tasks": len(self._tasks),
                "uptime_seconds": time.time() - self._created_at}

    async def statistics(self) -> dict[str, Any]:
        import os

        return {
            "counters": dict(self._counters),
            "tasks_in_memory": len(self._tasks),
            "finished_in_memory": len(self._finished),
            "waiters": sum(len(w) for w in self._waiters.values()),
            "pools": {name: {"queued": len(p.scheduler), "inflight": p.scheduler.statistics().inflight,
                             "batch_size": p.scheduler.batch_size()} for name, p in self._pools.items()},
            "pid": os.getpid(),
        }

    async def shutdown(self) -> None:
        """Stop every pool's agents (used by ``hive down`` and ``Hive.close``)."""
        for name in list(self._pools):
            pool = self._pools[name]
            await self._placement.deactivate(list(pool.agents))
            del self._pools[name]


def _data_plane_bind_address() -> str:
    """Loopback when every node shares this machine's address, else Ray's node address."""
    import ray

    own = ray.util.get_node_ip_address()
    addresses = {node["NodeManagerAddress"] for node in ray.nodes() if node.get("Alive")}
    return "127.0.0.1" if addresses <= {own} else own
