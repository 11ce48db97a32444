"""Host supervision: health checks, failed hosts, who pays for a crash, restarts by policy.

A mixin of :class:`~hive_ray._runtime._orchestrator.Orchestrator`. Health is
checked per host (a packed host holds many agents, which fail together); a
failure asks the pool's :class:`~hive_ray._runtime._supervisor.PoolSupervisor`
whether and when to restart, re-delivers what the host was running, and
restarts the agents through placement.

A crash is charged to a task only when that task was alone on the host; the
tasks of a crash with several on board become suspects and run alone, one at a
time per pool, on a host kept free for them (:mod:`hive_ray._isolation` decides,
:meth:`HostSupervision._isolate` delivers).

A health answer carries the age of the host's event-loop heartbeat: a host
whose loop has not run for longer than the health timeout (a handler blocking
it) fails its check like a host that does not answer.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

from hive_ray._gc_pauses import freeze_long_lived
from hive_ray._isolation import INNOCENT_CAUSES, CrashVerdict
from hive_ray._runtime._contracts import AgentLost
from hive_ray._runtime._state import SharedState
from hive_ray._supervision import RestartDecision
from hive_ray._task import TaskState

if TYPE_CHECKING:
    from hive_ray._runtime._pools import AgentRecord, Pool

logger = logging.getLogger("hive_ray.orchestrator")


class HostSupervision(SharedState):
    """Health checks, crash verdicts, isolated delivery and restarts of agent hosts."""

    async def _on_host_failed(self, pool: Pool, agent_ids: list[str], cause: str, detail: str,
                              since: dict[str, int] | None = None) -> None:
        """A host (with one agent, or many packed ones) failed: decide by the pool's policy
        whether and when to restart its agents, and re-deliver what they were running.
        ``since`` (agent id -> restarts) limits it to agents not restarted meanwhile."""
        failed, decision = self._host_lost(pool, agent_ids, cause, detail, since)
        await self._restart_hosts(pool, failed, decision, cause, detail)

    def _host_lost(self, pool: Pool, agent_ids: list[str], cause: str, detail: str,
                   since: dict[str, int] | None = None) -> tuple[list[AgentRecord], RestartDecision | None]:
        """What must happen before anything can yield: take the host's agents out of
        dispatch, judge who pays for the crash, re-deliver what they held, ask the
        restart policy. Returns the failed agents and the policy's decision."""
        failed = [record for a in agent_ids if (record := pool.agents.get(a)) is not None
                  and record.state == "ready" and (since is None or since.get(a) == record.restarts)]
        if not failed:
            return [], None
        failed_ids = {record.agent_id for record in failed}
        present: set[str] = set()
        for record in failed:
            record.state = "restarting"
            pool.scheduler.remove_agent(record.agent_id)
            present |= record.inflight  # what it held, in every batch, ended or not
            record.inflight = set()
        running = sorted((entry for task_id in present if (entry := self._tasks.get(task_id)) is not None
                          and entry.state == TaskState.RUNNING and entry.agent_id in failed_ids),
                         key=lambda entry: (entry.created_at, entry.sequence or 0))  # again in arrival order
        isolation = pool.isolation
        if isolation.reserved is not None and failed_ids.intersection(isolation.reserved):
            isolation.reserved = isolation.runner = None  # chosen again once agents are ready
        if pool.info.virtual:
            # A virtual agent's messages run only on the shard that owns its key, never on a
            # host set aside: a crash alone costs its message an attempt, a shared one does not.
            verdict = CrashVerdict(counted=running) if len(running) == 1 else CrashVerdict(spared=running)
        else:
            verdict = isolation.host_crashed(present, running, cause)
        for entry in verdict.released:
            self._emit(entry, "queued", message="no longer suspect: the crash it was held for is explained")
            pool.scheduler.requeue(entry)
        for entry in verdict.counted:
            self._redeliver(pool, entry, f"agent {entry.agent_id} lost ({cause}) while this task ran alone on it")
        isolated = len(verdict.spared) > 1 and cause not in INNOCENT_CAUSES and not pool.info.virtual
        for entry in verdict.spared:
            self._redeliver(pool, entry, f"agent {entry.agent_id} lost ({cause}) with {len(present)} tasks on "
                            f"its host; not counted" + ("; it runs alone until cleared" if isolated else ""),
                            count_attempt=False)
        names = [record.agent_id for record in failed]
        label = names[0] if len(names) == 1 else f"{names[0]} and {len(names) - 1} agent(s) on its host"
        decision = pool.supervisor.on_failure(label, cause, detail)
        self._emit(None, "agent_restart" if decision.restart else "agent_failed", pool=pool.name,
                   agent_id=label, cause=cause, message=decision.reason)
        logger.warning("%s failed (%s: %s); %s", label, cause, detail[:200], decision.reason)
        return failed, decision

    async def _restart_hosts(self, pool: Pool, failed: list[AgentRecord], decision: RestartDecision | None,
                             cause: str, detail: str) -> None:
        """Restart failed agents when and if the policy said so."""
        if not failed or decision is None:
            self._pump(pool)
            return
        names = [record.agent_id for record in failed]
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

    # ------------------------------------------------------------------ isolation
    def _isolate(self, pool: Pool) -> None:
        """Run the next suspect alone, on a host kept free of other work, one per pool at a time."""
        isolation = pool.isolation
        suspect = isolation.peek()
        if suspect is None:
            self._end_reservation(pool)
            return
        runner = pool.agents.get(isolation.runner) if isolation.runner is not None else None
        if runner is None or runner.state != "ready":
            self._end_reservation(pool)
            if not self._reserve_host(pool):
                return  # no ready agent: suspects wait like queued tasks do
        assert isolation.reserved is not None and isolation.runner is not None
        if any(pool.agents[a].inflight for a in isolation.reserved if a in pool.agents):
            return  # draining; the last outcome pumps again
        # Agents placed on the host since it was set aside (they join accepting) take no work either.
        isolation.reserved = [a for a in self._placement.siblings(isolation.runner) if a in pool.agents]
        for agent_id in isolation.reserved:
            pool.scheduler.set_accepting(agent_id, False)
        if any(pool.agents[a].inflight for a in isolation.reserved):
            return
        isolation.pop()
        self._start_batch(pool, isolation.runner, [suspect])

    def _reserve_host(self, pool: Pool) -> bool:
        """Set aside the host with the least work for suspects: it takes no other tasks."""
        best: list[str] | None = None
        best_load = 0
        seen: set[str] = set()
        for record in pool.agents.values():
            if record.state != "ready" or record.agent_id in seen:
                continue
            host = [a for a in self._placement.siblings(record.agent_id) if a in pool.agents]
            seen.update(host)
            load = sum(len(pool.agents[a].inflight) for a in host)
            if best is None or load < best_load:
                best, best_load = host, load
                if load == 0:
                    break
        if best is None:
            return False
        isolation = pool.isolation
        isolation.reserved = best
        isolation.runner = next(a for a in best if pool.agents[a].state == "ready")
        for agent_id in best:
            pool.scheduler.set_accepting(agent_id, False)
        return True

    def _end_reservation(self, pool: Pool) -> None:
        isolation = pool.isolation
        if isolation.reserved is None:
            return
        for agent_id in isolation.reserved:
            record = pool.agents.get(agent_id)
            if record is not None and record.state == "ready":
                pool.scheduler.set_accepting(agent_id, True)
        isolation.reserved = isolation.runner = None

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
        since = {a: record.restarts for a in agent_ids if (record := pool.agents.get(a)) is not None}
        try:
            answer = await self._placement.host_health(key, timeout)
            silent = answer.get("loop_silent_seconds") if isinstance(answer, dict) else None
            if silent is not None and silent > timeout:
                raise AgentLost(key, "health_check_failed",
                                f"host {key} answers, but its event loop has not run for {silent:.1f} s "
                                f"(more than the {timeout:g} s health timeout): a handler blocks it")
        except AgentLost as lost:  # unless its agents were restarted while it was asked
            pool.activations.pop(key, None)  # its activations died with it
            await self._on_host_failed(pool, agent_ids, lost.cause, lost.detail, since)
        except Exception:  # noqa: BLE001 - e.g. the host was stopped meanwhile: nothing to do
            logger.debug("health check of %s failed", key, exc_info=True)
        else:
            pool.supervisor.on_healthy()
            if isinstance(answer, dict) and answer.get("virtual"):
                pool.activations[key] = answer["virtual"]
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
