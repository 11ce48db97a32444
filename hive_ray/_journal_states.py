"""Virtual agents in the journal: states (one row per identity), topic subscriptions, reminders.

A mixin of `hive_ray._journal.Journal`. A state is written with the next group
commit, in the same transaction as the endings of the tasks committed with it,
so a message's answer and the state it left are kept or lost together. Only the
rows of identities whose state changed are written (``WITHOUT ROWID`` on the
primary key ``(agent_type, key)``): a large state of one agent never costs
the others a rewrite. Reads overlay what is buffered, like task reads.
"""

from __future__ import annotations

import sqlite3
import threading
from typing import TYPE_CHECKING, NamedTuple

from hive_ray._journal_buffer import PendingWrites


class StateRow(NamedTuple):
    """One identity's saved state: its version, the activation that wrote it, the pickle."""

    version: int
    activation: str
    body: bytes


_PUT_STATE = ("INSERT INTO agent_states (agent_type, key, version, activation, body, updated_at) "
              "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (agent_type, key) DO UPDATE SET "
              "version = excluded.version, activation = excluded.activation, body = excluded.body, "
              "updated_at = excluded.updated_at")
_DELETE_STATE = "DELETE FROM agent_states WHERE agent_type = ? AND key = ?"
_PUT_SUBSCRIPTION = ("INSERT INTO subscriptions (topic, agent_type, key, created_at) VALUES (?, ?, ?, ?) "
                     "ON CONFLICT (topic, agent_type, key) DO NOTHING")
_DELETE_SUBSCRIPTION = "DELETE FROM subscriptions WHERE topic = ? AND agent_type = ? AND key = ?"
_PUT_REMINDER = ("INSERT INTO reminders (agent_type, key, name, due_at, period) VALUES (?, ?, ?, ?, ?) "
                 "ON CONFLICT (agent_type, key, name) DO UPDATE SET due_at = excluded.due_at, "
                 "period = excluded.period")
_DELETE_REMINDER = "DELETE FROM reminders WHERE agent_type = ? AND key = ? AND name = ?"


def write_states(connection: sqlite3.Connection, batch: PendingWrites, now: float) -> None:
    """The state rows of ``batch``, inside the caller's transaction."""
    puts = [(agent_type, key, row.version, row.activation, row.body, now)
            for (agent_type, key), row in batch.states.items() if row is not None]
    if puts:
        connection.executemany(_PUT_STATE, puts)
    deletes = [identity for identity, row in batch.states.items() if row is None]
    if deletes:
        connection.executemany(_DELETE_STATE, deletes)
    for subscription, present in batch.subscriptions.items():
        if present:
            connection.execute(_PUT_SUBSCRIPTION, (*subscription, now))
        else:
            connection.execute(_DELETE_SUBSCRIPTION, subscription)
    for identity, when in batch.reminders.items():
        if when is None:
            connection.execute(_DELETE_REMINDER, identity)
        else:
            connection.execute(_PUT_REMINDER, (*identity, *when))


class JournalStates:
    """The state methods of `hive_ray._journal.Journal`."""

    _buffer_lock: threading.Lock
    _pending: PendingWrites
    _inflight: PendingWrites | None

    if TYPE_CHECKING:  # provided by Journal
        def _read(self, sql: str, parameters: tuple = ()) -> list[tuple]: ...
        def _put_other(self, method: str, key: str, value: object) -> None: ...

    def put_state(self, agent_type: str, key: str, row: StateRow | None) -> None:
        """Buffer an identity's new state (None forgets it); committed with the next group commit."""
        self._put_other("put_state", (agent_type, key), row)  # type: ignore[arg-type]

    def put_states(self, rows: dict[tuple[str, str], StateRow | None]) -> None:
        """Buffer several identities' new states at once (one lock, one sequence number each)."""
        self._require_open()  # type: ignore[attr-defined]
        with self._buffer_lock:
            self._pending.states.update(rows)
            self._put_sequence += len(rows)  # type: ignore[has-type]

    def get_state(self, agent_type: str, key: str) -> StateRow | None:
        """The latest state of ``(agent_type, key)``, buffered or committed, or None."""
        identity = (agent_type, key)
        with self._buffer_lock:
            for layer in (self._pending, self._inflight):
                if layer is not None and identity in layer.states:
                    return layer.states[identity]
        rows = self._read("SELECT version, activation, body FROM agent_states WHERE agent_type = ? AND key = ?",
                          identity)
        return StateRow(int(rows[0][0]), str(rows[0][1]), bytes(rows[0][2])) if rows else None

    def put_subscription(self, topic: str, agent_type: str, key: str, present: bool = True) -> None:
        """Buffer an agent subscription (``present=False`` removes it)."""
        self._put_other("put_subscription", (topic, agent_type, key), present)  # type: ignore[arg-type]

    def subscriptions(self) -> list[tuple[str, str, str]]:
        """Every agent subscription (topic, agent type, key), committed or buffered, oldest first."""
        rows = [tuple(row) for row in self._read(
            "SELECT topic, agent_type, key FROM subscriptions ORDER BY created_at, topic, agent_type, key")]
        found: dict[tuple[str, str, str], None] = dict.fromkeys(rows)  # type: ignore[arg-type]
        with self._buffer_lock:
            for layer in (self._inflight, self._pending):
                if layer is None:
                    continue
                for subscription, present in layer.subscriptions.items():
                    if present:
                        found[subscription] = None
                    else:
                        found.pop(subscription, None)
        return list(found)

    def put_reminder(self, agent_type: str, key: str, name: str, when: tuple[float, float | None] | None) -> None:
        """Buffer a reminder's ``(due_at, period)`` (None removes it)."""
        self._put_other("put_reminder", (agent_type, key, name), when)  # type: ignore[arg-type]

    def reminders(self) -> list[tuple[str, str, str, float, float | None]]:
        """Every reminder ``(agent_type, key, name, due_at, period)``, committed or buffered."""
        found = {(t, k, n): (due, period) for t, k, n, due, period in self._read(
            "SELECT agent_type, key, name, due_at, period FROM reminders")}
        with self._buffer_lock:
            for layer in (self._inflight, self._pending):
                if layer is None:
                    continue
                for identity, when in layer.reminders.items():
                    if when is None:
                        found.pop(identity, None)
                    else:
                        found[identity] = when
        return [(*identity, *when) for identity, when in found.items()]

    def get_states(self, agent_type: str, keys: list[str]) -> dict[str, StateRow]:
        """The latest states of several keys of one type (those that have one), in one read per
        500 keys; buffered ones win. Safe to call from a worker thread."""
        found: dict[str, StateRow] = {}
        gone: set[str] = set()
        with self._buffer_lock:
            for layer in (self._inflight, self._pending):  # the newer layer last: it wins
                if layer is None:
                    continue
                for key in keys:
                    if (agent_type, key) in layer.states:
                        row = layer.states[(agent_type, key)]
                        if row is None:
                            gone.add(key)
                            found.pop(key, None)
                        else:
                            gone.discard(key)
                            found[key] = row
        rest = [key for key in keys if key not in found and key not in gone]
        for start in range(0, len(rest), 500):
            part = rest[start:start + 500]
            marks = ",".join("?" * len(part))
            for key, version, activation, body in self._read(
                    f"SELECT key, version, activation, body FROM agent_states WHERE agent_type = ? "
                    f"AND key IN ({marks})", (agent_type, *part)):
                found[str(key)] = StateRow(int(version), str(activation), bytes(body))
        return found

    def state_count(self, agent_type: str | None = None) -> int:
        """How many identities have a committed state (of one type, or of all)."""
        if agent_type is None:
            rows = self._read("SELECT count(*) FROM agent_states")
        else:
            rows = self._read("SELECT count(*) FROM agent_states WHERE agent_type = ?", (agent_type,))
        return int(rows[0][0])
