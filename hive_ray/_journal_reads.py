"""Reading the journal: what is committed, overlaid with what is buffered.

A mixin of `hive_ray._journal.Journal`, kept apart because reads have their
own concern: every read sees the journal as it will be once the buffer is
committed. The buffer and the batch being committed override what the
reader connection sees (which is the last commit), so a task put a moment
ago is found, and a read never waits for a commit in progress.
"""

from __future__ import annotations

import json
import threading
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from hive_ray._journal_buffer import COLUMNS, JournalEntry, PendingWrites, entry_from_row


class JournalReads:
    """The read methods of `hive_ray._journal.Journal`."""

    _buffer_lock: threading.Lock
    _pending: PendingWrites
    _inflight: PendingWrites | None

    if TYPE_CHECKING:  # provided by Journal: rows from its reader connection
        def _read(self, sql: str, parameters: tuple = ()) -> list[tuple]: ...

    def get(self, task_id: str) -> JournalEntry | None:
        """Return the latest version of ``task_id``, buffered or committed."""
        with self._buffer_lock:
            entry = self._buffered(task_id)
        if entry is not None:
            return entry
        rows = self._read(f"SELECT {COLUMNS} FROM tasks WHERE task_id = ?", (task_id,))
        return entry_from_row(rows[0]) if rows else None

    def find_idempotent(self, pool_or_scope: str, idempotency_key: str) -> JournalEntry | None:
        """Return the newest task submitted to ``pool_or_scope`` with this key, if any.

        Looks at buffered entries too, so a duplicate arriving before the
        first submission's commit is still found; a new task whose commit
        failed is not.
        """
        with self._buffer_lock:
            entry = self._pending.find_key(pool_or_scope, idempotency_key)
            if entry is None and self._inflight is not None:
                entry = self._inflight.find_key(pool_or_scope, idempotency_key)
                if entry is not None and entry.task_id in self._pending.tasks:
                    entry = None  # a newer put of that task changed its key
        if entry is not None:
            return entry
        rows = self._read(
            f"SELECT {COLUMNS} FROM tasks WHERE pool = ? AND idempotency_key = ? "
            f"ORDER BY created_at DESC LIMIT 1",
            (pool_or_scope, idempotency_key),
        )
        if not rows:
            return None
        found = entry_from_row(rows[0])
        with self._buffer_lock:
            newer = self._buffered(found.task_id)
        if newer is None:
            return found
        return newer if newer.idempotency_key == idempotency_key else None

    def unfinished(self) -> list[JournalEntry]:
        """Return unfinished entries, oldest first: the work to recover on restart."""
        # The buffer before the disk: a batch committed in between is then seen in one or
        # the other (the other way round, it could slip between the two and be missed).
        overlay, _cleared = self._overlay()
        rows = self._read(
            f"SELECT {COLUMNS} FROM tasks WHERE finished = 0 ORDER BY created_at, task_id")
        entries = [entry_from_row(row) for row in rows]
        if not overlay:
            return entries
        merged = {entry.task_id: entry for entry in entries}
        for task_id, entry in overlay.items():
            if entry.finished:
                merged.pop(task_id, None)
            else:
                merged[task_id] = entry
        return sorted(merged.values(), key=lambda entry: (entry.created_at, entry.task_id))

    def dead_letters(self, limit: int = 100, pool: str | None = None) -> list[JournalEntry]:
        """Return up to ``limit`` dead-lettered tasks (of ``pool``, or all), newest first.

        Newest by the time the task was last written, i.e. when it failed for good.
        """
        if limit < 0:
            raise ValueError(f"dead_letters limit must be >= 0, got {limit!r}")
        overlay, cleared = self._overlay()  # before the disk, as in `unfinished`
        where = "dead_letter = 1" + (" AND pool = ?" if pool is not None else "")
        rows = self._read(
            f"SELECT {COLUMNS} FROM tasks WHERE {where} ORDER BY updated_at DESC, rowid DESC LIMIT ?",
            (*(() if pool is None else (pool,)), limit + len(overlay) + len(cleared)),
        )
        # Buffered writes are newer than committed ones, and later puts newer than earlier
        # ones: in that order before a stable sort, they win ties as the disk's rowid order does.
        found = [entry for entry in reversed(overlay.values())
                 if entry.dead_letter and (pool is None or entry.pool == pool)]
        found += [entry for entry in map(entry_from_row, rows)
                  if entry.task_id not in overlay and entry.task_id not in cleared]
        found.sort(key=lambda entry: entry.updated_at, reverse=True)
        return found[:limit]

    def query(self, *, state: str | None = None, pool: str | None = None,
              finished: bool | None = None, limit: int = 100, after_created: float | None = None,
              after_task_id: str = "") -> list[JournalEntry]:
        """Return up to ``limit`` committed entries matching the filters, oldest first.

        Page by passing the last entry's ``created_at`` and ``task_id`` as
        ``after_created`` and ``after_task_id``.
        """
        if limit < 0:
            raise ValueError(f"query limit must be >= 0, got {limit!r}")
        conditions: list[str] = []
        parameters: list[object] = []
        for column, value in (("state", state), ("pool", pool),
                              ("finished", None if finished is None else int(finished))):
            if value is not None:
                conditions.append(f"{column} = ?")
                parameters.append(value)
        if after_created is not None:
            conditions.append("(created_at > ? OR (created_at = ? AND task_id > ?))")
            parameters.extend((after_created, after_created, after_task_id))
        where = f"WHERE {' AND '.join(conditions)}" if conditions else ""
        rows = self._read(f"SELECT {COLUMNS} FROM tasks {where} ORDER BY created_at, task_id LIMIT ?",
                          (*parameters, limit))
        return [entry_from_row(row) for row in rows]

    def pools(self) -> dict[str, bytes]:
        """Every recorded pool's spec, by name, in creation order (buffered changes included)."""
        buffered = self._buffered_writes("pools")  # before the disk, as in `unfinished`
        return _apply(dict(self._read("SELECT name, spec FROM pools ORDER BY rowid")), buffered)

    def hosts(self) -> dict[str, dict[str, Any]]:
        """Every recorded host, by key, in the order first recorded (buffered changes included)."""
        buffered = self._buffered_writes("hosts")  # before the disk, as in `unfinished`
        hosts = _apply(dict(self._read("SELECT key, record FROM hosts ORDER BY rowid")), buffered)
        return {key: json.loads(text) for key, text in hosts.items()}

    def _buffered(self, task_id: str) -> JournalEntry | None:
        """The newest buffered version of a task; call with the buffer lock held."""
        entry = self._pending.tasks.get(task_id)
        if entry is None and self._inflight is not None:
            entry = self._inflight.tasks.get(task_id)
        return entry

    def _overlay(self) -> tuple[dict[str, JournalEntry], set[str]]:
        """What the buffer changes on disk: task versions that override it (with their
        dead-letter flag as it will be), and tasks whose flag only is cleared."""
        overlay: dict[str, JournalEntry] = {}
        cleared: set[str] = set()
        with self._buffer_lock:
            for layer in (self._inflight, self._pending):  # older first: a newer layer's writes win
                if layer is None:
                    continue
                overlay.update(layer.tasks)
                cleared -= layer.tasks.keys()
                for task_id in layer.cleared:
                    if task_id in overlay:
                        overlay[task_id] = replace(overlay[task_id], dead_letter=False)
                    else:
                        cleared.add(task_id)
        return overlay, cleared

    def _buffered_writes(self, table: str) -> list[dict[str, Any]]:
        """Copies of the buffered pool or host writes, older layer first."""
        with self._buffer_lock:
            return [dict(getattr(layer, table)) for layer in (self._inflight, self._pending)
                    if layer is not None]


def _apply(committed: dict[str, Any], layers: list[dict[str, Any]]) -> dict[str, Any]:
    for layer in layers:  # older first
        for key, value in layer.items():
            if value is None:
                committed.pop(key, None)
            else:
                committed[key] = value
    return committed
