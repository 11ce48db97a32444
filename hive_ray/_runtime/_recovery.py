"""Recovery: opening the journal, and taking pools, hosts and tasks back after a restart.

A mixin of :class:`~hive_ray._runtime._orchestrator.Orchestrator`. Ray
restarts a killed orchestrator (``max_restarts=-1``); the new one opens the
same journal and recovers in two steps.

1. Before it answers any call, from the journal alone (fast): every declared
   pool comes back in state ``recovering``, and every task that had not ended
   is queued again. Submits to a recovering pool queue as usual.
2. In the background, every pool at once (:meth:`Recovery._recover_pool`):
   the hosts recorded for it are adopted. They are detached actors that
   outlived the crash, so their agents keep their in-memory state. The tasks
   they are still running are taken out of the queue and left to finish
   there, and the outcomes they kept are recorded: a task in flight during
   the crash runs once and is recorded once. A host that is gone, or does not
   answer within ``host_adoption_timeout_seconds`` (it is then stopped), is
   replaced like any failed host: its tasks wait in the queue for other
   agents. Then missing agents are started, and the pool is ``ok`` (or
   ``degraded``) again.

So ``health``, reads and submits are answered within seconds of a restart,
however long a pool takes to come back.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hive_ray._errors import HiveError
from hive_ray._runtime._contracts import AdoptedHost, AgentLost
from hive_ray._runtime._pools import AgentRecord, validated_pool_spec
from hive_ray._runtime._state import SharedState
from hive_ray._task import Envelope, TaskEntry, TaskState, check_transition

if TYPE_CHECKING:
    from hive_ray._runtime._pools import Pool

logger = logging.getLogger("hive_ray.orchestrator")


class Recovery(SharedState):
    """The journal's life: open, recover from, prune; adopting hosts after a restart."""

    def _open_journal(self) -> Any:
        if not self.settings.journal:
            return None
        from hive_ray._runtime._durability import TaskJournal

        directory = self.settings.journal_dir
        if directory is None:
            # One journal per orchestrator: several may share a cluster (namespaces, names).
            directory = _session_journal_dir() / f"{self.settings.namespace}-{self.settings.orchestrator_name}"
        return TaskJournal.open(directory, durability=self.settings.journal_durability)

    def _recover(self) -> None:
        """Step 1 (see the module docstring): pools and unfinished tasks from the journal;
        each pool's hosts are adopted in the background."""
        declarations = self._journal.pools()
        unfinished = self._journal.unfinished()
        hosts = self._journal.hosts()
        self._placement.record_hosts_in(self._journal, hosts)
        if not declarations and not unfinished and not hosts:
            return
        logger.warning("recovering %d pool(s), %d host(s) and %d unfinished task(s) from %s",
                       len(declarations), len(hosts), len(unfinished), self._journal.path)
        for declaration in declarations:
            try:
                pool = self._new_pool(validated_pool_spec(declaration["spec"]), declaration["reference"],
                                      declaration["capabilities"], declaration["concurrency"],
                                      declaration.get("virtual", False))
                if pool.info.virtual:  # the same shards own the same keys as before the restart
                    pool.members = list(declaration.get("members") or [])
                    pool.scheduler.set_members(pool.members)
                    self._subscriptions.declare(pool.info.name, pool.spec["subscriptions"])
            except HiveError as error:
                logger.error("could not re-create pool %s: %s", declaration["spec"].get("name"), error)
                continue
            pool.recovering, pool.adopted = True, asyncio.Event()
            self._pools[pool.name] = pool
        for entry in unfinished:
            self._requeue_recovered(entry)
        recorded: dict[str, list[tuple[str, dict[str, Any]]]] = {}
        for key, info in hosts.items():
            if info["pool"] in self._pools:
                recorded.setdefault(info["pool"], []).append((key, info))
            else:  # its pool failed to come back, or was stopped just before the crash
                self._spawn_background(self._placement.stop_recorded(key, info))
        for pool in self._pools.values():
            recovering = asyncio.ensure_future(self._recover_pool(pool, recorded.get(pool.name, [])))
            pool.growing.add(recovering)  # stop_pool and shutdown cancel it; autoscaling waits
            recovering.add_done_callback(pool.growing.discard)

    def _requeue_recovered(self, entry: TaskEntry) -> None:
        pool = self._pools.get(entry.pool)
        self._tasks[entry.task_id] = entry
        if entry.idempotency_key is not None:
            self._idempotency[(entry.pool, entry.idempotency_key)] = entry.task_id
        if pool is None:
            self._end(entry, TaskState.FAILED, error={
                "type": "PoolMissing", "message": f"pool {entry.pool!r} no longer exists after a restart"})
            return
        # Rebuilt from the journal, not a transition: whatever had not ended waits again.
        entry.state, entry.agent_id = TaskState.QUEUED, None
        pool.scheduler.requeue(entry, front=False)
        if entry.timeout is not None:
            heapq.heappush(self._deadlines, (entry.created_at + entry.timeout,
                                             next(self._deadline_sequence), entry.task_id))
        self._emit(entry, "queued", message="recovered after an orchestrator restart")
        self._counters["recovered"] += 1

    async def _recover_pool(self, pool: Pool, recorded: list[tuple[str, dict[str, Any]]]) -> None:
        """Step 2 for one pool: adopt its surviving hosts, then start the agents still missing."""
        assert pool.adopted is not None
        spec, timeout = self._placement_spec(pool), self.settings.host_adoption_timeout_seconds
        adoptions = [asyncio.ensure_future(self._placement.adopt(spec, key, info, timeout))
                     for key, info in recorded]
        try:
            if adoptions:
                await asyncio.wait(adoptions)
            adopted = []
            for (key, _), adoption in zip(recorded, adoptions, strict=True):
                error = adoption.exception()
                if error is None:
                    adopted.append(adoption.result())
                    continue
                detail = f"{error.cause}: {error.detail}" if isinstance(error, AgentLost) else repr(error)
                logger.warning("host %s of pool %s was not adopted (%s); its agents start anew",
                               key, pool.name, detail[:300])
                self._emit(None, "host_lost", pool=pool.name, message=f"{key} not adopted: {detail[:300]}")
            self._take_over(pool, adopted)
        except asyncio.CancelledError:  # the pool was stopped (or shut down) meanwhile
            for adoption in adoptions:
                adoption.cancel()  # an adoption cut short stops its host
            taken = [agent_id for adoption in adoptions
                     if adoption.done() and not adoption.cancelled() and adoption.exception() is None
                     for agent_id in adoption.result().where]
            if taken:
                await self._placement.deactivate(taken, kill=True)
            raise
        finally:
            pool.adopted.set()
        try:
            self._pump(pool)
            surplus = self._live_count(pool) - pool.spec["count"]  # e.g. killed mid scale-down
            if surplus > 0:
                current = [a for a in pool.agents.values() if a.state != "stopping"]
                leaving = sorted(current, key=lambda a: len(a.inflight))[:surplus]
                await self._stop_agents(pool, [a.agent_id for a in leaving])
            await self._grow(pool, pool.spec["count"])
        except HiveError as error:
            logger.error("pool %s could not start its missing agents after a restart: %s", pool.name, error)
        except Exception:  # noqa: BLE001 - logged here: nobody awaits this task
            logger.exception("pool %s could not start its missing agents after a restart", pool.name)
        finally:
            pool.recovering = False
            self._signal_events()

    def _take_over(self, pool: Pool, adopted: list[AdoptedHost]) -> None:
        """Adopted hosts' agents become ready as they are; what they ran is taken back.

        Batches still running are left to finish where they run (their tasks leave
        the queue and count as running on their agent); outcomes the hosts kept are
        recorded if the journal still has their task unfinished. Running batches go
        first: a kept outcome of an earlier attempt must not end a later one.
        """
        highest = -1
        for host in adopted:
            for agent_id, where in host.where.items():
                pool.agents[agent_id] = AgentRecord(agent_id=agent_id, pool=pool.name)
                self._mark_ready(pool, agent_id, where)
                highest = max(highest, _agent_number(pool.name, agent_id))
            self._counters["adopted_agents"] += len(host.where)
        if highest >= 0:
            pool.counter = itertools.count(max(highest + 1, next(pool.counter)))
        now = time.time()
        for host in adopted:
            for batch in host.running:
                record = pool.agents.get(batch.agent_id)
                entries = []
                for task_id, attempt in batch.attempts.items():
                    entry = self._reclaimable(pool, task_id, batch.agent_id, attempt, now)
                    if entry is not None:
                        entries.append(entry)
                        if record is not None:
                            record.inflight.add(task_id)
                if not entries:
                    continue
                pool.scheduler.occupy(batch.agent_id, len(entries))
                self._counters["reclaimed"] += len(entries)
                envelopes = [Envelope(task_id=entry.task_id, agent_id=batch.agent_id, payload=None,
                                      attempt=entry.attempts) for entry in entries]
                reclaimed = self._placement.reclaim(batch.agent_id, [entry.task_id for entry in entries])
                self._spawn_background(self._dispatch(pool, batch.agent_id, entries, envelopes, reclaimed=reclaimed))
        for host in adopted:
            for kept in host.outcomes:
                entry = self._reclaimable(pool, kept.outcome.task_id, kept.agent_id, kept.attempt, now)
                if entry is not None:
                    self._counters["reclaimed"] += 1
                    self._settle(pool, entry, kept.outcome)

    def _reclaimable(self, pool: Pool, task_id: str, agent_id: str, attempt: int,
                     now: float) -> TaskEntry | None:
        """The task an adopted host ran, now marked running there; None if it is not ours to
        take back (unknown, already ended, or already taken back from a later attempt)."""
        entry = self._tasks.get(task_id)
        if entry is None or entry.pool != pool.name:
            return None
        if entry.state.terminal:
            self._placement.cancel(agent_id, task_id)  # e.g. cancelled while the pool recovered
            return None
        if entry.state != TaskState.QUEUED:
            return None
        pool.scheduler.discard(entry)
        check_transition(entry.state, TaskState.RUNNING)
        entry.state, entry.agent_id, entry.started_at = TaskState.RUNNING, agent_id, now
        entry.attempts = max(entry.attempts, attempt)
        self._emit(entry, "running", agent_id=agent_id, message="taken back from its host after a restart")
        return entry

    async def _stop_stray_hosts(self) -> None:
        try:
            stopped = await self._placement.stop_strays()
        except Exception:  # noqa: BLE001 - best effort: orphaned hosts also exit by themselves
            logger.exception("could not look for stray hosts")
            return
        if stopped:
            logger.warning("stopped %d host(s) this orchestrator had not recorded", stopped)

    async def _prune_loop(self) -> None:
        while True:
            await asyncio.sleep(30)
            try:
                await asyncio.to_thread(self._journal.prune,
                                        max_age_seconds=self.settings.journal_retention_seconds,
                                        max_finished=self.settings.journal_retention_count)
            except Exception:  # noqa: BLE001 - pruning is best effort; the next round retries
                logger.exception("journal pruning failed")


def _agent_number(pool: str, agent_id: str) -> int:
    """The number in an agent id ``<pool>-<n>``, or -1."""
    suffix = agent_id[len(pool) + 1:] if agent_id.startswith(f"{pool}-") else ""
    return int(suffix) if suffix.isdigit() else -1


def _session_journal_dir() -> Path:
    """The default journal lives with this Ray cluster's session files on the head node."""
    import ray

    context = ray.get_runtime_context()
    return Path(context.get_temp_dir()) / context.get_session_name() / "hive-journal"


__all__ = ["Recovery"]
