"""The orchestrator's durable memory: tasks and pools in the SQLite journal.

Every accepted task is buffered here and ``await durable()`` returns once it
is committed, so ``submit`` answers only for tasks that survive a crash of the
orchestrator. Task endings are written in the same group commits, without
making anyone wait. After a restart, :meth:`TaskJournal.unfinished` gives back
every task that had not ended and :meth:`TaskJournal.pools` every declared pool.

Pure Python (no Ray): unit-tested with a temporary directory.
"""

from __future__ import annotations

import asyncio
import pickle
import time
from pathlib import Path
from typing import Any

from hive_ray._group_commit import GroupCommitter
from hive_ray._journal import Journal, JournalEntry
from hive_ray._task import TaskEntry, TaskState

#: TaskEntry fields that are saved (the rest is scheduling bookkeeping).
_SAVED = (
    "task_id", "pool", "agent_type", "payload", "priority", "timeout", "affinity_key",
    "idempotency_key", "metadata", "max_attempts", "trace_context", "state", "created_at",
    "started_at", "finished_at", "attempts", "agent_id", "result", "error",
)


def _dumps(value: Any) -> bytes:
    try:
        return pickle.dumps(value, protocol=5)
    except (pickle.PicklingError, TypeError, AttributeError):
        from ray import cloudpickle  # payloads such as lambdas or local classes

        return cloudpickle.dumps(value, protocol=5)


def encode_entry(entry: TaskEntry) -> bytes:
    # A tuple in _SAVED's order: about twice as fast to pickle as a dict.
    values = [getattr(entry, name) for name in _SAVED]
    values[_STATE_INDEX] = entry.state.value
    return _dumps((1, tuple(values)))


def decode_entry(body: bytes) -> TaskEntry:
    version, values = pickle.loads(body)
    if version != 1:
        raise ValueError(f"journal record format {version} is newer than this hive-ray reads")
    fields = dict(zip(_SAVED, values, strict=True))
    fields["state"] = TaskState(fields["state"])
    return TaskEntry(**fields)


_STATE_INDEX = _SAVED.index("state")
_HOST_PREFIX = "host:"


class TaskJournal:
    """Tasks and pools, durably. Build it with :meth:`open`."""

    def __init__(self, journal: Journal) -> None:
        self._journal = journal
        # Commit as soon as there is work: batches form by themselves while a
        # commit is in flight, so an idle system adds one commit of latency.
        self._committer = GroupCommitter(journal, interval_seconds=0.0, checkpoint_seconds=1.0)
        self._dirty: dict[str, TaskEntry] = {}
        self._flush_scheduled = False

    @classmethod
    def open(cls, directory: str | Path) -> TaskJournal:
        """Open the journal in ``directory``; raises JournalError with the fix if it cannot."""
        return cls(Journal.open(directory, background_checkpoints=True))

    @property
    def path(self) -> Path:
        return self._journal.path

    def record(self, entry: TaskEntry) -> None:
        """Note that the entry changed; it is encoded once per event-loop turn and committed
        in the next group commit. A task accepted and finished in the same turn costs one row."""
        self._dirty[entry.task_id] = entry
        if not self._flush_scheduled:
            try:
                asyncio.get_running_loop().call_soon(self._flush)
                self._flush_scheduled = True
            except RuntimeError:  # no event loop (tools, tests): write through
                self._flush()

    def _flush(self) -> None:
        self._flush_scheduled = False
        dirty, self._dirty = self._dirty, {}
        if not dirty:
            return
        now = time.time()
        self._committer.put_many([
            JournalEntry(task_id=entry.task_id, pool=entry.pool, state=entry.state.value,
                         idempotency_key=entry.idempotency_key, created_at=entry.created_at,
                         updated_at=now, finished=entry.state.terminal, body=encode_entry(entry))
            for entry in dirty.values()
        ])

    async def durable(self) -> None:
        """Return once everything recorded so far is committed."""
        self._flush()
        await self._committer.durable()

    def unfinished(self) -> list[TaskEntry]:
        return [decode_entry(row.body) for row in self._journal.unfinished()]

    def get(self, task_id: str) -> TaskEntry | None:
        if task_id in self._dirty:
            return self._dirty[task_id]
        row = self._journal.get(task_id)
        return decode_entry(row.body) if row is not None else None

    def find_idempotent(self, pool: str, key: str) -> str | None:
        row = self._journal.find_idempotent(pool, key)
        return row.task_id if row is not None else None

    def record_pool(self, name: str, declaration: dict[str, Any]) -> None:
        self._journal.put_pool(name, _dumps(declaration))

    def forget_pool(self, name: str) -> None:
        self._journal.delete_pool(name)

    def pools(self) -> list[dict[str, Any]]:
        return [pickle.loads(spec) for name, spec in self._journal.pools().items()
                if not name.startswith(_HOST_PREFIX)]

    # Stopgap until the journal's own host table lands (branch ``journal``): host records
    # share the pools table under a prefix no pool name can have (pool names are
    # ``[A-Za-z0-9_.-]+``).
    def record_host(self, key: str, info: dict[str, Any]) -> None:
        """Remember a host actor (its Ray name, pool, number) so a restarted orchestrator finds it."""
        self._journal.put_pool(_HOST_PREFIX + key, _dumps(info))

    def forget_host(self, key: str) -> None:
        self._journal.delete_pool(_HOST_PREFIX + key)

    def hosts(self) -> dict[str, dict[str, Any]]:
        """Every recorded host's info, by host key, in the order they were recorded."""
        return {name[len(_HOST_PREFIX):]: pickle.loads(spec) for name, spec in self._journal.pools().items()
                if name.startswith(_HOST_PREFIX)}

    def prune(self, *, max_age_seconds: float, max_finished: int) -> int:
        return self._journal.prune(max_age_seconds=max_age_seconds, max_finished=max_finished, now=time.time())

    def statistics(self) -> dict[str, Any]:
        """Counts and sizes; it reads the table, so call it from a worker thread."""
        stats = self._journal.statistics()
        return {name: getattr(stats, name) for name in stats.__dataclass_fields__}

    async def close(self) -> None:
        self._flush()
        await self._committer.close()
        self._journal.close()
