"""The orchestrator's durable memory: tasks, dead letters, pools and hosts in the SQLite journal.

How the orchestrator uses it:

* **Accepting** (commit before dispatch): build the new `TaskEntry`s, then
  ``await journal.accept_many(entries)``, and only then queue or dispatch
  them. It returns once they are committed (many concurrent accepts share
  one commit) and raises `JournalError` if that commit failed; then nothing
  of them was written, recovery will never run them, and the caller must
  drop them and pass the error on.
* **Changes** (started, retried, ended, dead-lettered): `record` them; they
  are encoded once per event-loop turn and committed in the next group
  commit, without making anyone wait (``await durable()`` waits).
* **Restart**: `unfinished` gives back every task that had not ended,
  `pools` every declared pool, `hosts` every host actor recorded with
  `record_host` (to re-adopt), and `dead_letters` the tasks that failed for
  good (``record(entry, dead_letter=True)`` with the ending that sends a task
  there; `forget_dead_letter` after a resubmit).
* **Past memory**: `get` and `find_idempotent` answer from the journal once a
  task has left the orchestrator's memory.

Pure Python (no Ray): unit-tested with a temporary directory.
"""

from __future__ import annotations

import asyncio
import logging
import operator
import pickle
import time
from collections.abc import Awaitable, Sequence
from pathlib import Path
from typing import Any

from hive_ray._errors import JournalError
from hive_ray._group_commit import GroupCommitter
from hive_ray._journal import Journal, JournalEntry
from hive_ray._journal_states import StateRow
from hive_ray._task import TaskEntry, TaskState

logger = logging.getLogger("hive_ray.journal")

#: TaskEntry fields that are saved (the rest is scheduling bookkeeping).
_SAVED = (
    "task_id", "pool", "agent_type", "payload", "priority", "timeout", "affinity_key",
    "idempotency_key", "metadata", "max_attempts", "trace_context", "state", "created_at",
    "started_at", "finished_at", "attempts", "agent_id", "result", "error", "usage",
)
#: Format 1 had every field before "usage"; format 2 added it.
_SAVED_V1 = _SAVED[:_SAVED.index("usage")]
_STATE_INDEX = _SAVED.index("state")
#: Undecodable rows named one by one in the log at recovery; the rest are counted.
_NAMED_IN_LOG = 10


def _dumps(value: Any) -> bytes:
    try:
        return pickle.dumps(value, protocol=5)
    except (pickle.PicklingError, TypeError, AttributeError):
        from ray import cloudpickle  # payloads such as lambdas or local classes

        return cloudpickle.dumps(value, protocol=5)


_SAVED_VALUES = operator.attrgetter(*_SAVED)


def encode_entry(entry: TaskEntry) -> bytes:
    # A tuple in _SAVED's order: about twice as fast to pickle as a dict (and read in C: 2.1 µs
    # a task instead of 2.9 with a getattr per field).
    values = _SAVED_VALUES(entry)
    return _dumps((2, (*values[:_STATE_INDEX], entry.state.value, *values[_STATE_INDEX + 1:])))


def decode_entry(body: bytes) -> TaskEntry:
    version, values = pickle.loads(body)
    if version not in (1, 2):
        raise ValueError(f"journal record format {version} is newer than this hive-ray reads")
    fields = dict(zip(_SAVED if version == 2 else _SAVED_V1, values, strict=True))
    fields["state"] = TaskState(fields["state"])
    return TaskEntry(**fields)


class TaskJournal:
    """Tasks, dead letters, pools and hosts, durably. Build it with :meth:`open`."""

    def __init__(self, journal: Journal, *, failure_backoff_seconds: float = 0.05) -> None:
        self._journal = journal
        # Commit as soon as there is work: batches form by themselves while a
        # commit is in flight, so an idle system adds one commit of latency.
        self._committer = GroupCommitter(journal, interval_seconds=0.0, checkpoint_seconds=1.0,
                                         failure_backoff_seconds=failure_backoff_seconds)
        self._dirty: dict[str, TaskEntry] = {}
        self._dead_dirty: set[str] = set()  # of _dirty: endings that are dead letters
        self._dirty_states: dict[tuple[str, str], StateRow | None] = {}  # virtual agents' new states
        self._flush_scheduled = False

    @classmethod
    def open(cls, directory: str | Path, *, durability: str = "normal") -> TaskJournal:
        """Open the journal in ``directory`` (``durability``: the ``journal_durability`` setting).

        Raises:
            JournalError: it cannot be opened; the message says why and what to do.
        """
        return cls(Journal.open(directory, background_checkpoints=True, durability=durability))

    @property
    def path(self) -> Path:
        return self._journal.path

    @property
    def durability(self) -> str:
        return self._journal.durability

    # ------------------------------------------------------------ tasks

    def accept_many(self, entries: Sequence[TaskEntry]) -> Awaitable[None]:
        """Write new tasks; the returned awaitable finishes once they are committed.

        Queue or dispatch the tasks only after awaiting it. The entries are
        encoded and buffered by this call itself, before anything is awaited
        (so ``asyncio.ensure_future(journal.accept_many(entries))`` loses no
        time), and concurrent accepts share one commit. Changes recorded
        earlier are written in the same commit or before.

        Cancelling the awaiting caller does not withdraw the entries: the
        commit goes on and decides their fate (shield it, as for a commit).

        Raises:
            JournalError: (from the awaitable) the commit failed, e.g. with
                ``reason == "full"``: none of these entries was written and
                none ever will be, so do not run them (and do not `record`
                them). Raised by the call itself, ``reason == "unencodable"``,
                when an entry's payload does not pickle; nothing was buffered.
        """
        if not entries:
            return _nothing()
        self._flush()
        now = time.time()
        rows = []
        for entry in entries:
            try:
                rows.append(self._row(entry, now))
            except Exception as error:  # noqa: BLE001 - whatever pickling raised
                raise JournalError(
                    f"task {entry.task_id!r} cannot be written to the task journal "
                    f"{str(self.path)!r}: its payload does not pickle ({error!r}); send a payload "
                    f"that pickles", path=str(self.path), reason="unencodable") from error
        self._committer.put_many(rows, accept=True)
        return self._committer.durable()

    def record(self, entry: TaskEntry, *, dead_letter: bool = False) -> None:
        """Note that the entry changed; it is encoded once per event-loop turn and committed
        in the next group commit. A task accepted and finished in the same turn costs one row.

        ``dead_letter=True`` with the ending that sends the task to the dead
        letters (not from its metadata: a resubmitted task inherits that).
        Record only tasks already accepted (`accept_many`): a change is retried
        until a commit succeeds, so recovery would run a task whose accept failed.
        """
        self._dirty[entry.task_id] = entry
        if dead_letter:
            self._dead_dirty.add(entry.task_id)
        else:
            self._dead_dirty.discard(entry.task_id)
        self._schedule_flush()

    def _schedule_flush(self) -> None:
        if not self._flush_scheduled:
            try:
                asyncio.get_running_loop().call_soon(self._flush)
                self._flush_scheduled = True
            except RuntimeError:  # no event loop (tools, tests): write through
                self._flush()

    def _flush(self) -> None:
        self._flush_scheduled = False
        if self._dirty_states:  # before the endings they came with: never in a later commit
            states, self._dirty_states = self._dirty_states, {}
            self._journal.put_states(states)
            self._committer.nudge()
        dirty, self._dirty = self._dirty, {}
        dead, self._dead_dirty = self._dead_dirty, set()
        if not dirty:
            return
        now = time.time()
        rows = []
        for entry in dirty.values():
            try:
                rows.append(self._row(entry, now, dead_letter=entry.task_id in dead))
            except Exception:  # noqa: BLE001 - one bad result must not cost the others
                logger.exception("task %s could not be written to the task journal; its last "
                                 "change is lost there", entry.task_id)
        self._committer.put_many(rows)

    @staticmethod
    def _row(entry: TaskEntry, now: float, *, dead_letter: bool = False) -> JournalEntry:
        return JournalEntry(task_id=entry.task_id, pool=entry.pool, state=entry.state.value,
                            idempotency_key=entry.idempotency_key, created_at=entry.created_at,
                            updated_at=now, finished=entry.state.terminal, body=encode_entry(entry),
                            dead_letter=dead_letter)

    async def durable(self) -> None:
        """Return once everything recorded so far is committed.

        Raises:
            JournalError: a commit carrying some of it failed (what was not
                new is retried by later commits).
        """
        self._flush()
        await self._committer.durable()

    def unfinished(self) -> list[TaskEntry]:
        """Every task that had not ended, oldest first: what a restarted orchestrator queues again.

        A row this hive-ray cannot decode (its payload's class no longer
        imports) is logged and left in the journal for a later restart.
        """
        entries = []
        skipped = []
        for row in self._journal.unfinished():
            try:
                entries.append(self._decode(row))
            except JournalError as error:
                if len(skipped) < _NAMED_IN_LOG:
                    logger.error("%s", error)
                skipped.append(row.task_id)
        if skipped:
            logger.error("%d unfinished task(s) in %s could not be decoded and were not recovered; "
                         "they stay in the journal for the next restart", len(skipped), self.path)
        return entries

    def get(self, task_id: str) -> TaskEntry | None:
        """The task's latest recorded version, or None if the journal never had it (or pruned it)."""
        if task_id in self._dirty:
            return self._dirty[task_id]
        row = self._journal.get(task_id)
        return self._decode(row) if row is not None else None

    def find_idempotent(self, pool: str, key: str) -> TaskEntry | None:
        """The newest task accepted into ``pool`` with this idempotency key, with its state,
        result and error; None if there is none (or its accept failed)."""
        self._flush()
        row = self._journal.find_idempotent(pool, key)
        return self._decode(row) if row is not None else None

    def dead_letters(self, limit: int = 100, pool: str | None = None) -> list[TaskEntry]:
        """Tasks that failed for good (of ``pool``, or all), newest first, from the journal."""
        self._flush()
        found = []
        for row in self._journal.dead_letters(limit, pool):
            try:
                found.append(self._decode(row))
            except JournalError as error:
                logger.error("%s", error)
        return found

    def forget_dead_letter(self, task_id: str) -> None:
        """Take ``task_id`` off the dead letters (it was resubmitted); its record stays."""
        self._flush()
        self._journal.forget_dead_letter(task_id)
        self._committer.nudge()

    def _decode(self, row: JournalEntry) -> TaskEntry:
        try:
            return decode_entry(row.body)
        except Exception as error:  # noqa: BLE001 - pickle raises anything a class's code raises
            raise JournalError(
                f"task {row.task_id!r} of pool {row.pool!r} in the task journal {str(self.path)!r} "
                f"cannot be decoded ({error!r}); install the module its payload or result refers "
                f"to on the head node, or delete the row (sqlite3 {str(self.path)!r} \"DELETE FROM "
                f"tasks WHERE task_id = '{row.task_id}'\") with the orchestrator stopped",
                path=str(self.path), reason="unreadable", task_id=row.task_id) from error

    # ------------------------------------------------------------ pools and hosts

    def record_pool(self, name: str, declaration: dict[str, Any]) -> None:
        """Record a pool's declaration; committed by the next group commit (``await durable()``)."""
        self._journal.put_pool(name, _dumps(declaration))
        self._committer.nudge()

    def forget_pool(self, name: str) -> None:
        self._journal.delete_pool(name)
        self._committer.nudge()

    def pools(self) -> list[dict[str, Any]]:
        """Every recorded pool declaration, in creation order."""
        declarations = []
        for name, spec in self._journal.pools().items():
            try:
                declarations.append(pickle.loads(spec))
            except Exception as error:  # noqa: BLE001 - one bad row must not hide the others
                logger.error("the declaration of pool %r in %s cannot be decoded (%r); it is "
                             "not recreated", name, self.path, error)
        return declarations

    def record_host(self, key: str, record: dict[str, Any]) -> None:
        """Record a host actor that outlives the orchestrator, e.g. ``{"pool", "actor_name",
        "namespace", "agent_ids", "node_id"}`` (JSON values); committed by the next group commit.

        Raises:
            TypeError: ``record`` is not JSON-serializable.
        """
        self._journal.put_host(key, record)
        self._committer.nudge()

    def forget_host(self, key: str) -> None:
        self._journal.delete_host(key)
        self._committer.nudge()

    def hosts(self) -> dict[str, dict[str, Any]]:
        """Every recorded host, by key, in the order first recorded."""
        return self._journal.hosts()

    # ------------------------------------------------------------ virtual agents' states

    def record_state(self, agent_type: str, key: str, row: StateRow | None) -> None:
        """Keep an identity's new state; buffered once per event-loop turn like endings, and
        committed with the endings recorded after it, or earlier."""
        self._dirty_states[(agent_type, key)] = row
        self._schedule_flush()

    def record_subscription(self, topic: str, agent_type: str, key: str, present: bool = True) -> None:
        """Keep (or, ``present=False``, drop) an agent's subscription to a topic."""
        self._journal.put_subscription(topic, agent_type, key, present)
        self._committer.nudge()

    def subscriptions(self) -> list[tuple[str, str, str]]:
        """Every agent subscription, oldest first (read at recovery)."""
        return self._journal.subscriptions()

    def record_reminder(self, agent_type: str, key: str, name: str,
                        when: tuple[float, float | None] | None) -> None:
        """Keep a reminder's ``(due_at, period)``, or drop it (None)."""
        self._journal.put_reminder(agent_type, key, name, when)
        self._committer.nudge()

    def reminders(self) -> list[tuple[str, str, str, float, float | None]]:
        """Every reminder (read at recovery)."""
        return self._journal.reminders()

    async def states(self, agent_type: str, keys: list[str]) -> dict[str, StateRow]:
        """The latest states of several keys (those that have one); the journal is read on a
        worker thread, so a burst of activations does not hold up the event loop."""
        found: dict[str, StateRow] = {}
        missing = []
        for key in keys:
            identity = (agent_type, key)
            if identity in self._dirty_states:
                row = self._dirty_states[identity]
                if row is not None:
                    found[key] = row
            else:
                missing.append(key)
        if missing:
            found.update(await asyncio.to_thread(self._journal.get_states, agent_type, missing))
        return found

    def state(self, agent_type: str, key: str) -> StateRow | None:
        """An identity's latest state, buffered or committed (a read of one row)."""
        identity = (agent_type, key)
        if identity in self._dirty_states:
            return self._dirty_states[identity]
        return self._journal.get_state(agent_type, key)

    # ------------------------------------------------------------ upkeep

    def prune(self, *, max_age_seconds: float, max_finished: int) -> int:
        """Delete finished tasks (dead letters too) past the retention; call from a worker thread."""
        return self._journal.prune(max_age_seconds=max_age_seconds, max_finished=max_finished,
                                   now=time.time())

    def check_integrity(self) -> None:
        """Read the whole journal file and raise `JournalError` (reason ``corrupt``) if it is
        damaged; seconds for a large journal, so call it from a worker thread after start-up."""
        self._journal.check_integrity()

    def statistics(self) -> dict[str, Any]:
        """Counts and sizes; it reads the table, so call it from a worker thread."""
        stats = self._journal.statistics()
        return {name: getattr(stats, name) for name in stats.__dataclass_fields__}

    async def close(self) -> None:
        """Commit what is left and close the files (even if that last commit fails)."""
        try:
            self._flush()
            await self._committer.close()
        finally:
            self._journal.close()


async def _nothing() -> None:
    """What `TaskJournal.accept_many` returns for no entries: nothing to wait for."""
