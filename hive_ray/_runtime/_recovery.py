"""Recovery: opening the journal, and rebuilding pools and unfinished tasks after a restart.

A mixin of :class:`~hive_ray._runtime._orchestrator.Orchestrator`. Ray
restarts a killed orchestrator; the new one opens the same journal, re-creates
every declared pool and queues every task that had not ended again.
"""

from __future__ import annotations

import asyncio
import heapq
import logging
import random
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hive_ray._errors import HiveError
from hive_ray._settings import Settings
from hive_ray._task import TaskEntry, TaskState

if TYPE_CHECKING:
    from hive_ray._runtime._pools import Pool

logger = logging.getLogger("hive_ray.orchestrator")


class Recovery:
    """The journal's life: open, recover from, prune."""

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

    def _open_journal(self) -> Any:
        if not self.settings.journal:
            return None
        from hive_ray._runtime._durability import TaskJournal

        directory = self.settings.journal_dir
        if directory is None:
            # One journal per orchestrator: several may share a cluster (namespaces, names).
            directory = _session_journal_dir() / f"{self.settings.namespace}-{self.settings.orchestrator_name}"
        return TaskJournal.open(directory, durability=self.settings.journal_durability)

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

    async def _prune_loop(self) -> None:
        while True:
            await asyncio.sleep(30)
            try:
                await asyncio.to_thread(self._journal.prune,
                                        max_age_seconds=self.settings.journal_retention_seconds,
                                        max_finished=self.settings.journal_retention_count)
            except Exception:  # noqa: BLE001 - pruning is best effort; the next round retries
                logger.exception("journal pruning failed")


def _session_journal_dir() -> Path:
    """The default journal lives with this Ray cluster's session files on the head node."""
    import ray

    context = ray.get_runtime_context()
    return Path(context.get_temp_dir()) / context.get_session_name() / "hive-journal"


__all__ = ["Recovery"]
