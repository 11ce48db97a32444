"""What the journal writes, and the writes buffered for its next commit.

`JournalEntry` is one task row. `PendingWrites` collects everything put
between two commits (task upserts, cleared dead-letter flags, pool and host
records) keyed so that the latest write of a thing wins, and knows what to
keep when a commit fails: every change to something already accepted is
kept and retried, but new tasks (`PendingWrites.put` with ``accept=True``)
are dropped, because their submitters were told the accept failed and recovery
must never run them.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any


@dataclass(frozen=True, slots=True, kw_only=True)
class JournalEntry:
    """One task as the journal stores it.

    The journal indexes the few fields it queries by and treats ``body`` as
    opaque bytes: the orchestrator owns the task record and its encoding.
    ``dead_letter`` marks a task that failed for good and waits for an operator
    (`Journal.dead_letters`, `Journal.forget_dead_letter`).
    """

    task_id: str
    pool: str
    state: str
    idempotency_key: str | None
    created_at: float
    updated_at: float
    finished: bool
    body: bytes
    dead_letter: bool = False

    def _row(self) -> tuple[str, str, str, str | None, float, float, int, bytes, int]:
        return (self.task_id, self.pool, self.state, self.idempotency_key, self.created_at,
                self.updated_at, int(self.finished), self.body, int(self.dead_letter))


#: The task columns, in `JournalEntry._row` order.
COLUMNS = ("task_id, pool, state, idempotency_key, created_at, updated_at, finished, body, "
           "dead_letter")


def entry_from_row(row: tuple) -> JournalEntry:
    task_id, pool, state, idempotency_key, created_at, updated_at, finished, body, dead = row
    return JournalEntry(task_id=task_id, pool=pool, state=state, idempotency_key=idempotency_key,
                        created_at=created_at, updated_at=updated_at, finished=bool(finished),
                        body=bytes(body), dead_letter=bool(dead))


@dataclass(slots=True)
class PendingWrites:
    """Writes waiting for one commit; the latest write of each task, pool or host wins.

    Attributes:
        tasks: task upserts by task id.
        accepted: ids of tasks first written by an accept (dropped if their commit fails).
        by_key: the buffered task of each (pool, idempotency key).
        cleared: tasks whose dead-letter flag is cleared after the upserts.
        pools: pool specs by name; None deletes the pool's record.
        hosts: host records (JSON text) by key; None deletes it.
        states: virtual agents' states by (agent type, key); None deletes it.
        subscriptions: agent subscriptions by (topic, agent type, key); False deletes it.
        reminders: (due_at, period) by (agent type, key, name); None deletes it.
    """

    tasks: dict[str, JournalEntry] = field(default_factory=dict)
    accepted: set[str] = field(default_factory=set)
    by_key: dict[tuple[str, str], JournalEntry] = field(default_factory=dict)
    cleared: set[str] = field(default_factory=set)
    pools: dict[str, bytes | None] = field(default_factory=dict)
    hosts: dict[str, str | None] = field(default_factory=dict)
    states: dict[tuple[str, str], Any] = field(default_factory=dict)  # hive_ray._journal_states.StateRow
    subscriptions: dict[tuple[str, str, str], bool] = field(default_factory=dict)  # False: unsubscribed
    reminders: dict[tuple[str, str, str], tuple[float, float | None] | None] = field(default_factory=dict)

    def __len__(self) -> int:
        """Distinct things to write (what a batch size limit counts)."""
        return (len(self.tasks) + len(self.cleared) + len(self.pools) + len(self.hosts) + len(self.states)
                + len(self.subscriptions) + len(self.reminders))

    def put(self, entry: JournalEntry, *, accept: bool = False) -> None:
        self.tasks[entry.task_id] = entry
        if accept:
            self.accepted.add(entry.task_id)
        if entry.idempotency_key is not None:
            self.by_key[(entry.pool, entry.idempotency_key)] = entry
        # The upsert writes the flag explicitly, so an earlier clear no longer applies.
        self.cleared.discard(entry.task_id)

    def clear_dead_letter(self, task_id: str) -> None:
        buffered = self.tasks.get(task_id)
        if buffered is not None and buffered.dead_letter:
            self.tasks[task_id] = replace(buffered, dead_letter=False)
        self.cleared.add(task_id)

    def put_pool(self, name: str, spec: bytes | None) -> None:
        self.pools[name] = spec

    def put_host(self, key: str, record: str | None) -> None:
        self.hosts[key] = record

    def put_state(self, identity: tuple[str, str], row: Any) -> None:
        self.states[identity] = row

    def put_subscription(self, subscription: tuple[str, str, str], present: bool) -> None:
        self.subscriptions[subscription] = present

    def put_reminder(self, identity: tuple[str, str, str], when: tuple[float, float | None] | None) -> None:
        self.reminders[identity] = when

    def find_key(self, pool: str, idempotency_key: str) -> JournalEntry | None:
        """The buffered task with this key, unless a later put of that task changed its key."""
        entry = self.by_key.get((pool, idempotency_key))
        if entry is not None and self.tasks.get(entry.task_id) is not entry:
            return None
        return entry

    def retry_under(self, newer: PendingWrites) -> tuple[PendingWrites, int]:
        """After this batch's commit failed: ``newer`` plus what of this batch must be retried.

        Writes in ``newer`` win over this batch's. New tasks of this batch are
        dropped (never written, never recovered); their count is returned too.
        """
        dropped = 0
        for task_id, entry in self.tasks.items():
            if task_id in self.accepted:
                dropped += 1
                continue
            if task_id not in newer.tasks:
                newer.tasks[task_id] = entry
                if entry.idempotency_key is not None:
                    newer.by_key.setdefault((entry.pool, entry.idempotency_key), entry)
        for task_id in self.cleared:
            if task_id not in newer.tasks:  # a newer upsert states the flag itself
                newer.cleared.add(task_id)
        for name, spec in self.pools.items():
            newer.pools.setdefault(name, spec)
        for key, record in self.hosts.items():
            newer.hosts.setdefault(key, record)
        for identity, row in self.states.items():
            newer.states.setdefault(identity, row)
        for subscription, present in self.subscriptions.items():
            newer.subscriptions.setdefault(subscription, present)
        for identity, when in self.reminders.items():
            newer.reminders.setdefault(identity, when)
        return newer, dropped
