"""Pools of agents and their sizes: create, scale, stop, autoscale, and what a pool reports.

A mixin of :class:`~hive_ray._runtime._orchestrator.Orchestrator`. A pool
(:class:`Pool`) owns its scheduler (queue and routing), its supervisor (restart
decisions) and the records of its agents; this part starts and stops agents
through placement and keeps the cluster autoscaler told of the total demand.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from hive_ray._autoscale import AutoscalePolicy, PoolAutoscaler
from hive_ray._capacity import CapacityLimits, check_pool_size, hosts_for, room_for
from hive_ray._errors import CapacityError, ConfigurationError, HiveError, UnknownPoolError
from hive_ray._gc_pauses import freeze_long_lived
from hive_ray._isolation import Isolation
from hive_ray._registry import AgentTypeInfo, describe
from hive_ray._runtime._contracts import PoolPlacementSpec
from hive_ray._runtime._state import SharedState
from hive_ray._runtime._supervisor import PoolSupervisor, restart_policy_from
from hive_ray._scheduler import PoolScheduler
from hive_ray._supervision import RetryPolicy
from hive_ray._task import TaskState
from hive_ray._topics import merged_topics

logger = logging.getLogger("hive_ray.orchestrator")

#: Host processes started together when a pool grows (the rest wait for the next wave).
HOSTS_STARTED_AT_ONCE = 8


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
    # After an orchestrator restart: True until the pool's hosts are adopted (or replaced)
    # and its agents are back; ``adopted`` is set once its surviving hosts are taken over.
    recovering: bool = False
    adopted: asyncio.Event | None = None
    isolation: Isolation = field(default_factory=Isolation)  # suspects of host crashes
    members: list[str] = field(default_factory=list)  # a virtual pool's shards: they own its keys
    activations: dict[str, dict[str, int]] = field(default_factory=dict)  # host -> its shards' counts

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
        if self.recovering:
            return "recovering"
        return "degraded" if self.supervisor.degraded else "ok"



class PoolManager(SharedState):
    """Pools: creating, sizing, autoscaling and describing them."""

    async def create_pool(self, spec: dict[str, Any], reference: str | bytes | None = None,
                          capabilities: list[str] | None = None, concurrency: int | None = None,
                          wait_seconds: float | None = None, virtual: bool = False) -> dict[str, Any]:
        """Create a pool (or add ``count`` agents to an existing one) and wait until ready,
        at most ``wait_seconds`` (default ``spawn_wait_seconds``)."""
        await self._ensure_started()
        validated = validated_pool_spec(spec)
        name = validated["name"]
        pool = self._pools.get(name)
        if pool is not None:
            if pool.spec["agent_type"] != validated["agent_type"]:
                raise ConfigurationError(
                    f"pool {name!r} already runs agent type {pool.spec['agent_type']!r}, not "
                    f"{validated['agent_type']!r}; choose another pool name"
                )
            if validated["config"] and validated["config"] != (pool.spec.get("config") or {}):
                raise ConfigurationError(
                    f"pool {name!r} already runs with another config; spawning into it adds agents "
                    f"with its own config. Stop the pool first, or choose another pool name")
            await self._adopted(pool)
            return await self.scale(name, self._live_count(pool) + validated["count"], wait_seconds)
        pool = self._new_pool(validated, reference, capabilities, concurrency, virtual)
        if pool.info.virtual:
            _check_virtual_pool(pool, self._pools.values())
        await self._check_capacity(pool, validated["count"])
        if validated["autoscale"] is not None:
            await self._check_capacity(pool, validated["autoscale"]["max_agents"], autoscaling=True)
        self._pools[name] = pool
        self._journal_pool(pool)
        if pool.info.virtual:
            self._subscriptions.declare(pool.info.name, validated["subscriptions"])
        try:
            await self._grow(pool, validated["count"], wait_seconds=wait_seconds)
        except BaseException:
            if not pool.agents:
                self._pools.pop(name, None)
                if pool.info.virtual:
                    self._subscriptions.forget_type(pool.info.name)
                if self._journal is not None:
                    self._journal.forget_pool(name)
            raise
        return self._pool_info(pool)

    def _new_pool(self, validated: dict[str, Any], reference: str | bytes | None,
                  capabilities: list[str] | None, concurrency: int | None, virtual: bool = False) -> Pool:
        """A pool object from its validated spec, without agents yet."""
        name = validated["name"]
        if reference is None:
            info = describe(validated["agent_type"])  # raises UnknownAgentTypeError
        else:
            info = AgentTypeInfo(name=validated["agent_type"], capabilities=frozenset(capabilities or ()),
                                 concurrency=concurrency or 1, reference=reference, virtual=bool(virtual))
        retry = validated["retry"]
        pool = Pool(
            spec=validated, info=info,
            scheduler=PoolScheduler(name, policy=validated["policy"], max_queue=validated["max_queue"],
                                    max_batch=self.settings.max_batch,
                                    target_batch_seconds=self.settings.target_batch_seconds,
                                    owners=info.virtual),
            supervisor=PoolSupervisor(name, restart_policy_from(validated["restart"]), rng=self._rng),
            retry=RetryPolicy(max_attempts=retry["max_attempts"],
                              backoff_initial_seconds=retry["backoff_initial_seconds"],
                              backoff_max_seconds=retry["backoff_max_seconds"],
                              multiplier=retry["multiplier"], jitter=retry["jitter"],
                              never_retry=tuple(retry["never_retry"])),
        )
        if info.virtual:  # declared (self._subscriptions) once the pool exists
            validated["subscriptions"] = merged_topics(info.subscriptions, validated["subscriptions"])
        elif validated["subscriptions"]:
            raise ConfigurationError(
                f"agent type {info.name!r} is not virtual: only virtual agent types (VirtualAgent subclasses) "
                f"subscribe to topics, since a message's source names the agent it goes to")
        if validated["autoscale"] is not None:
            pool.autoscaler = PoolAutoscaler(AutoscalePolicy(**validated["autoscale"]))
            validated["count"] = max(validated["autoscale"]["min_agents"],
                                     min(validated["autoscale"]["max_agents"], validated["count"]))
        return pool

    async def _adopted(self, pool: Pool) -> None:
        """Wait until a recovering pool's surviving hosts are taken over (bounded by the
        adoption timeout), so that sizing it counts the agents they hold."""
        if pool.adopted is not None and not pool.adopted.is_set():
            await pool.adopted.wait()
            if self._pools.get(pool.name) is not pool:
                raise UnknownPoolError(pool=pool.name, known=self._pools)  # stopped meanwhile

    def _journal_pool(self, pool: Pool) -> None:
        if self._journal is not None:
            self._journal.record_pool(pool.name, {
                "spec": dict(pool.spec), "reference": pool.info.reference,
                "capabilities": sorted(pool.info.capabilities), "concurrency": pool.info.concurrency,
                "virtual": pool.info.virtual, "members": list(pool.members)})

    @staticmethod
    def _live_count(pool: Pool) -> int:
        return sum(1 for a in pool.agents.values() if a.state != "stopping")

    async def scale(self, name: str, count: int, wait_seconds: float | None = None) -> dict[str, Any]:
        """Grow or shrink a pool to ``count`` agents. Busy agents finish their tasks first; new
        ones are waited for at most ``wait_seconds`` (default ``spawn_wait_seconds``)."""
        await self._ensure_started()
        pool = self._pool(name)
        if count < 0:
            raise ConfigurationError(f"cannot scale pool {name!r} to {count} agents; use 0 or more")
        await self._adopted(pool)
        if pool.info.virtual and count != len(pool.members):
            raise ConfigurationError(
                f"pool {name!r} runs virtual agents: its {len(pool.members)} shard(s) own their keys, so its "
                f"size is fixed; scaling it to {len(pool.members)} restarts failed shards. To change the "
                f"number of shards, stop the pool and spawn it again (states are kept)")
        await self._check_capacity(pool, count)
        pool.spec["count"] = count
        self._journal_pool(pool)
        pool.supervisor.reset()  # an operator's decision clears a degraded state
        for record in [a for a in pool.agents.values() if a.state == "failed"]:
            pool.agents.pop(record.agent_id)
        current = [a for a in pool.agents.values() if a.state != "stopping"]
        if count > len(current):
            await self._grow(pool, count, wait_seconds=wait_seconds)
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
        if pool.info.virtual:
            self._subscriptions.forget_type(pool.info.name)
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

    async def _grow(self, pool: Pool, target: int, *, wait: bool = True, wait_seconds: float | None = None) -> None:
        """Start agents up to ``target``. Waits for them up to ``wait_seconds`` (default
        ``spawn_wait_seconds``).

        Agents the cluster cannot place yet stay ``starting`` (their demand goes
        to the autoscaler) and become ready in the background once placed.
        """
        missing = target - self._live_count(pool)
        if missing <= 0:
            return
        agent_ids = self._new_agent_ids(pool, missing)
        for agent_id in agent_ids:
            pool.agents[agent_id] = AgentRecord(agent_id=agent_id, pool=pool.name)
        self._spawn_background(self._request_resources())
        starting = asyncio.ensure_future(self._activate(pool, agent_ids))
        pool.growing.add(starting)
        starting.add_done_callback(pool.growing.discard)
        if not wait:
            return
        bound = self.settings.spawn_wait_seconds if wait_seconds is None else max(0.0, wait_seconds)
        done, _ = await asyncio.wait({starting}, timeout=bound)
        if done:
            starting.result()  # raises the activation's error, if any

    def _new_agent_ids(self, pool: Pool, missing: int) -> list[str]:
        """Ids for ``missing`` new agents; a virtual pool's shards come back under their own ids
        (they own keys), and new shards join its members."""
        if not pool.info.virtual:
            return [f"{pool.name}-{next(pool.counter)}" for _ in range(missing)]
        ids = [member for member in pool.members if member not in pool.agents][:missing]
        new = [f"{pool.name}-{next(pool.counter)}" for _ in range(missing - len(ids))]
        if new:
            pool.members.extend(new)
            pool.scheduler.set_members(pool.members)
            self._journal_pool(pool)
        return ids + new

    async def _activate(self, pool: Pool, agent_ids: list[str]) -> None:
        """Start agents in waves of a few host processes, each ready (and given work) as it lands.

        Starting hundreds of processes at once stalls a node (and the control plane
        with it); waves keep the orchestrator answering while a large pool grows.
        """
        spec = self._placement_spec(pool)
        wave = max(1, spec.agents_per_host) * HOSTS_STARTED_AT_ONCE
        for start in range(0, len(agent_ids), wave):
            batch = [a for a in agent_ids[start:start + wave] if a in pool.agents]
            try:
                where = await self._placement.activate(spec, batch)
            except asyncio.CancelledError:
                for agent_id in agent_ids[start:]:
                    pool.agents.pop(agent_id, None)
                raise
            except Exception as error:
                for agent_id in agent_ids[start:]:
                    pool.agents.pop(agent_id, None)
                logger.error("could not start agents for pool %s: %s", pool.name, error)
                if isinstance(error, HiveError):
                    raise
                raise ConfigurationError(
                    f"could not start agents for pool {pool.name!r}: {type(error).__name__}: {error}"
                ) from None
            for agent_id in batch:
                self._mark_ready(pool, agent_id, where.get(agent_id, {}))
            freeze_long_lived()
            self._pump(pool)

    async def _capacity_limits(self) -> CapacityLimits:
        memory = None
        reporter = getattr(self._placement, "cluster_memory_bytes", None)
        if reporter is not None and self.settings.max_host_processes is None:
            try:
                memory = await reporter()
            except Exception:  # noqa: BLE001 - unknown memory: only the settings limit
                logger.warning("could not read the cluster's memory", exc_info=True)
        return CapacityLimits(max_agents_per_pool=self.settings.max_agents_per_pool,
                              max_host_processes=self.settings.max_host_processes,
                              cluster_memory_bytes=memory)

    def _hosts_of_other_pools(self, pool: Pool) -> int:
        return sum(hosts_for(self._live_count(other), _agents_per_host(other.spec))
                   for other in self._pools.values() if other is not pool)

    async def _check_capacity(self, pool: Pool, wanted: int, *, autoscaling: bool = False) -> None:
        """Refuse a size the cluster or the admin's limits cannot hold, before anything starts."""
        limits = await self._capacity_limits()
        try:
            check_pool_size(limits, pool=pool.name, wanted=wanted, agents_per_host=_agents_per_host(pool.spec),
                            other_hosts=self._hosts_of_other_pools(pool))
        except CapacityError as error:
            if autoscaling:
                raise CapacityError(f"autoscale.max_agents: {error}", **error.details) from None
            raise

    async def _room_for(self, pool: Pool) -> int:
        return room_for(await self._capacity_limits(), agents_per_host=_agents_per_host(pool.spec),
                        other_hosts=self._hosts_of_other_pools(pool))

    def _demand(self) -> list[dict[str, float]]:
        """Resource bundles for every pool at its desired size (for the autoscaler)."""
        bundles = []
        for pool in self._pools.values():
            spec = pool.spec
            per_host = _agents_per_host(spec)
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
        room = await self._room_for(pool)
        if count > room:
            logger.warning("autoscaling pool %s capped at %d agents (capacity), not %d", pool.name, room, count)
            count = max(room, min(count, self._live_count(pool)))  # never shrinks what runs
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
            agents_per_host=_agents_per_host(spec),
            passivate_after_seconds=spec["passivate_after_seconds"],
            config=spec.get("config") or {},
        )

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
            "placement": pool.spec["placement"], "queued": stats.queued + pool.isolation.waiting(),
            "running": stats.inflight, "suspects": pool.isolation.suspects(),
            "succeeded": pool.succeeded, "failed": pool.failed, "agents": agents,
            "spec": dict(pool.spec), "restarts": pool.supervisor.total_restarts,
            "virtual": _summed(pool.activations.values()) if pool.info.virtual else None,
            "recent_restarts": pool.supervisor.recent(20),
            "dead_letters": sum(1 for name in self._dead_letters.values() if name == pool.name),
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


def _summed(counts: Any) -> dict[str, int]:
    total = {"active": 0, "activated": 0, "deactivated": 0, "handled": 0}
    for host in counts:
        for name in total:
            total[name] += int(host.get(name, 0))
    return total


def _check_virtual_pool(pool: Pool, others: Any) -> None:
    """One pool per virtual type (an identity has one activation), and a fixed size."""
    agent_type = pool.spec["agent_type"]
    taken = next((other.name for other in others if other.spec["agent_type"] == agent_type), None)
    if taken is not None:
        raise ConfigurationError(
            f"pool {taken!r} already runs virtual agent type {agent_type!r}; a virtual type runs in one "
            f"pool (each key has one activation). Spawn into {taken!r}, or stop it first")
    if pool.autoscaler is not None:
        raise ConfigurationError(
            f"virtual agent type {agent_type!r} cannot autoscale: its shards own their keys. Give it a "
            f"fixed count (its activations spread over the shards)")


def validated_pool_spec(spec: dict[str, Any]) -> dict[str, Any]:
    from hive_ray._models import PoolSpec

    try:
        return PoolSpec(**spec).model_dump()
    except ValueError as error:
        raise ConfigurationError(f"invalid pool spec: {error}") from None


def _agents_per_host(spec: dict[str, Any]) -> int:
    return spec["agents_per_host"] if spec["placement"] == "packed" else 1


__all__ = ["AgentRecord", "Pool", "PoolManager"]
