"""Host supervision: health checks, failed hosts, restarts by the pool's policy.

A mixin of :class:`~hive_ray._runtime._orchestrator.Orchestrator`. Health is
checked per host (a packed host holds many agents, which fail together); a
failure asks the pool's :class:`~hive_ray._runtime._supervisor.PoolSupervisor`
whether and when to restart, re-delivers what the host was running, and
restarts the agents through placement.
"""

from __future__ import annotations

import asyncio
import logging
import random
from typing import TYPE_CHECKING, Any

from hive_ray._gc_pauses import freeze_long_lived
from hive_ray._runtime._contracts import AgentLost
from hive_ray._settings import Settings
from hive_ray._task import TaskEntry, TaskState

if TYPE_CHECKING:
    from hive_ray._runtime._pools import Pool

logger = logging.getLogger("hive_ray.orchestrator")


class HostSupervision:
    """Health checks and restarts of agent hosts."""

    # State this part reads or writes, owned as documented in _orchestrator.py.
    settings: Settings
    _placement: Any
    _journal: Any
    _pools: dict[str, Pool]
    _tasks: dict[str, TaskEntry]
    _rng: random.Random
    _counters: dict[str, int]
    _wakeup: asyncio.Event | None
    _tracer: Any

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

    async def _check_unresponsive(self, pool: Pool, agent_id: str, task_id: str) -> None:
        """A timed-out task still held by its agent after a grace period: restart the agent."""
        await asyncio.sleep(self.settings.health_check_timeout_seconds)
        record = pool.agents.get(agent_id)
        if record is not None and record.state == "ready" and task_id in record.inflight:
            await self._on_host_failed(pool, self._placement.siblings(agent_id), "timeout_unresponsive",
                                       f"{agent_id} still runs task {task_id} after its timeout and a grace period")


__all__ = ["HostSupervision"]
