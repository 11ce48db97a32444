"""The durable task journal: tasks, dead letters, pools and hosts in SQLite (WAL), with group commit.

The orchestrator must record a task before ``submit`` returns, yet accept more
than 10,000 tasks a second. A commit per task cannot do that, so writes are
split in two: `Journal.put` (and `put_pool`, `put_host`, `forget_dead_letter`)
buffers a write in memory, O(1) and without I/O; `Journal.commit` writes
everything buffered in one transaction, which `GroupCommitter` runs in a
worker thread on behalf of many waiters at once.

A failed commit writes nothing. Its new tasks (put with ``accept=True``) are
dropped: their submitters get the `JournalError`, and recovery never sees
them. Every other write (a task's progress or ending, a pool, a host) stays
buffered and is retried by the next commit.

Durability: ``normal`` (WAL, ``synchronous=NORMAL``) survives a killed
process but may lose the last commits on a power cut or kernel crash;
``full`` (``synchronous=FULL``) survives those too, at the cost of an fsync
per commit. The file stays consistent either way. Files, lock and schema:
`hive_ray._journal_files`; reads: `hive_ray._journal_reads`.

Checkpoints: by default SQLite copies the write-ahead log back into the
database inside whichever commit crosses 1,000 pages, with an fsync: a
commit every second or so took ~10 ms instead of ~0.3 ms, the whole p99 of
task latency. With ``background_checkpoints=True`` that is left to
`Journal.checkpoint`, on a side connection beside the writer.

Threading: `commit` runs in a worker thread while the event loop keeps
calling `put` and the reads, which use a third connection and never wait
for a commit. Every failure is a `JournalError` (`hive_ray._journal_errors`).
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hive_ray._errors import JournalError
from hive_ray._journal_buffer import COLUMNS, JournalEntry, PendingWrites
from hive_ray._journal_errors import fix_for, journal_error, translated
from hive_ray._journal_files import (
    DURABILITY_MODES,
    JournalLock,
    check_integrity,
    connect,
    create_private_files,
    prepare_directory,
    prepare_schema,
)
from hive_ray._journal_reads import JournalReads
from hive_ray._journal_states import JournalStates, write_states

__all__ = ["Journal", "JournalEntry", "JournalStatistics"]

_UPSERT = f"""
INSERT INTO tasks ({COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)
ON CONFLICT (task_id) DO UPDATE SET
    state = excluded.state, updated_at = excluded.updated_at,
    finished = excluded.finished, body = excluded.body, dead_letter = excluded.dead_letter
"""
# A task's pool, idempotency key and creation time never change once it is accepted: leaving
# them out of the update spares the (pool, idempotency_key) index a rewrite per task. SQLite
# rewrites every index whose columns an UPDATE sets, changed or not (22 % less CPU per task
# for its insert and its ending, measured with this schema).
_CLEAR_DEAD_LETTER = "UPDATE tasks SET dead_letter = 0 WHERE task_id = ?"
_PUT_POOL = ("INSERT INTO pools (name, spec, updated_at) VALUES (?, ?, ?) ON CONFLICT (name) "
             "DO UPDATE SET spec = excluded.spec, updated_at = excluded.updated_at")
_DELETE_POOL = "DELETE FROM pools WHERE name = ?"
_PUT_HOST = ("INSERT INTO hosts (key, record, updated_at) VALUES (?, ?, ?) ON CONFLICT (key) "
             "DO UPDATE SET record = excluded.record, updated_at = excluded.updated_at")
_DELETE_HOST = "DELETE FROM hosts WHERE key = ?"


@dataclass(frozen=True, slots=True, kw_only=True)
class JournalStatistics:
    """A snapshot of the journal, from `Journal.statistics`.

    Attributes:
        entries: committed tasks on disk.
        unfinished: committed tasks not yet finished.
        dead_letters: committed tasks marked as dead letters.
        hosts: committed host records.
        pending: writes buffered and not yet committed.
        commits: commits since the journal was opened.
        committed_entries: writes made by those commits.
        failed_commits: commits that failed since the journal was opened.
        last_commit_seconds: how long the most recent commit took.
        file_bytes: size of the database file plus its write-ahead log.
        checkpoints: background checkpoints since the journal was opened.
        last_checkpoint_seconds: how long the most recent one took.
        durability: ``normal`` or ``full`` (see the module docstring).
    """

    entries: int
    unfinished: int
    pending: int
    commits: int
    committed_entries: int
    last_commit_seconds: float
    file_bytes: int
    checkpoints: int = 0
    last_checkpoint_seconds: float = 0.0
    dead_letters: int = 0
    hosts: int = 0
    failed_commits: int = 0
    durability: str = "normal"


class Journal(JournalReads, JournalStates):
    """The SQLite task journal. Create it with `Journal.open`."""

    def __init__(self, connection: sqlite3.Connection, path: Path, *, lock: JournalLock | None = None,
                 durability: str = "normal") -> None:
        """Wrap an open, checked connection; use `Journal.open` instead."""
        self._connection: sqlite3.Connection | None = connection
        self._path = path
        self._lock = lock
        self._durability = durability
        self._closed = False
        self._connection_lock = threading.Lock()
        # Reads on their own connection, so that they never wait for a commit.
        self._reader: sqlite3.Connection | None = None
        self._reader_lock = threading.Lock()
        # And one for what must not hold up commits or reads: checkpoints and counts.
        self._side: sqlite3.Connection | None = None
        self._side_lock = threading.Lock()
        self._buffer_lock = threading.Lock()
        self._pending = PendingWrites()
        self._inflight: PendingWrites | None = None  # the batch being committed
        # Every write takes a sequence number; everything up to durable_sequence
        # is on disk. GroupCommitter waits on these numbers.
        self._put_sequence = 0
        self._durable_sequence = 0
        self._attempted_sequence = 0
        self._commits = 0
        self._failed_commits = 0
        self._committed_entries = 0
        self._last_commit_seconds = 0.0
        self._checkpoints = 0
        self._last_checkpoint_seconds = 0.0

    # ------------------------------------------------------------ opening

    @classmethod
    def open(cls, directory: str | Path, *, filename: str = "journal.sqlite3",
             background_checkpoints: bool = False, durability: str = "normal",
             lock_timeout_seconds: float = 5.0) -> Journal:
        """Open (or create) the journal ``filename`` in ``directory``.

        Args:
            directory: created with mode 0700 if missing (see `hive_ray._journal_files`).
            filename: the database file's name.
            background_checkpoints: commits never checkpoint the write-ahead
                log; the owner must call `checkpoint` regularly (`GroupCommitter` does).
            durability: ``normal`` (survives a killed process) or ``full``
                (survives a power cut too; slower commits).
            lock_timeout_seconds: how long to wait for another process that
                holds the journal (an orchestrator still exiting) to let go.

        Raises:
            ValueError: ``durability`` is not one of ``normal``, ``full``.
            JournalError: the directory cannot be used, another process holds
                the journal, or the file is corrupt, not a hive-ray journal,
                or of a newer version.
        """
        if durability not in DURABILITY_MODES:
            raise ValueError(f"journal durability must be 'normal' or 'full', got {durability!r}")
        folder = Path(directory).expanduser()
        path = folder / filename
        prepare_directory(folder)
        lock = JournalLock.acquire(path, lock_timeout_seconds)
        try:
            create_private_files(path)
            connection = connect(path, durability)
            try:
                prepare_schema(connection, path)
                if background_checkpoints:
                    with translated(path, "opening"):
                        connection.execute("PRAGMA wal_autocheckpoint=0")
            except BaseException:
                connection.close()
                raise
        except BaseException:
            lock.release()
            raise
        return cls(connection, path, lock=lock, durability=durability)

    @property
    def path(self) -> Path:
        """The database file."""
        return self._path

    @property
    def durability(self) -> str:
        """``normal`` or ``full``."""
        return self._durability

    # ------------------------------------------------------------ writing

    @property
    def pending_count(self) -> int:
        """How many writes are buffered and not yet committed."""
        return len(self._pending)

    @property
    def put_sequence(self) -> int:
        """The number of writes so far; compare with `durable_sequence`."""
        return self._put_sequence

    @property
    def durable_sequence(self) -> int:
        """Every write numbered up to this is committed."""
        return self._durable_sequence

    @property
    def attempted_sequence(self) -> int:
        """The writes up to this number were in the latest commit, whether it succeeded or not."""
        return self._attempted_sequence

    def put(self, entry: JournalEntry, *, accept: bool = False) -> None:
        """Buffer an upsert of ``entry``; the latest put for a task_id wins.

        ``accept=True`` marks a new task: if the commit that carries it fails,
        it is dropped instead of retried, so it is never written (see `commit`).
        """
        self.put_many((entry,), accept=accept)

    def put_many(self, entries: Iterable[JournalEntry], *, accept: bool = False) -> None:
        """Buffer upserts of several entries, in order (see `put`)."""
        self._require_open()
        with self._buffer_lock:
            pending = self._pending
            for entry in entries:
                pending.put(entry, accept=accept)
                self._put_sequence += 1

    def forget_dead_letter(self, task_id: str) -> None:
        """Buffer clearing ``task_id``'s dead-letter flag (it was resubmitted); the row stays."""
        self._require_open()
        with self._buffer_lock:
            self._pending.clear_dead_letter(task_id)
            self._put_sequence += 1

    def put_pool(self, name: str, spec: bytes) -> None:
        """Buffer a pool's declared spec (committed with the next group commit)."""
        self._put_other("put_pool", name, spec)

    def delete_pool(self, name: str) -> None:
        """Buffer forgetting a pool."""
        self._put_other("put_pool", name, None)

    def put_host(self, key: str, record: dict[str, Any]) -> None:
        """Buffer the record of a host actor (JSON: strings, numbers, lists, dicts).

        Raises:
            TypeError: ``record`` is not JSON-serializable.
        """
        try:
            text = json.dumps(record, sort_keys=True)
        except (TypeError, ValueError) as error:
            raise TypeError(f"the record of host {key!r} must be JSON-serializable "
                            f"(strings, numbers, lists, dicts): {error}") from error
        self._put_other("put_host", key, text)

    def delete_host(self, key: str) -> None:
        """Buffer forgetting a host's record."""
        self._put_other("put_host", key, None)

    def _put_other(self, method: str, key: str, value: Any) -> None:
        self._require_open()
        with self._buffer_lock:  # the buffer is swapped by commits: look its method up inside
            getattr(self._pending, method)(key, value)
            self._put_sequence += 1

    def commit(self) -> int:
        """Write every buffered write in one transaction and return how many.

        Safe to call from a worker thread while other threads keep calling
        `put`. If the transaction fails, nothing of it is written: the batch's
        new tasks (``accept=True``) are dropped, and its other writes go back
        into the buffer (unless a newer version was put meanwhile) for a later
        commit to retry.

        Raises:
            JournalError: the journal is closed or SQLite refused the write;
                the message says what to do and what became of the batch.
        """
        with self._connection_lock:
            connection = self._require_open()
            # Swapping inside the connection lock keeps durable_sequence
            # honest: every earlier batch has finished by the time we swap.
            with self._buffer_lock:
                batch = self._pending
                sequence = self._attempted_sequence = self._put_sequence
                if not batch:
                    self._durable_sequence = sequence
                    return 0
                self._pending, self._inflight = PendingWrites(), batch
            started = time.perf_counter()
            try:
                _write(connection, batch)
            except BaseException as error:
                with self._buffer_lock:
                    self._pending, dropped = batch.retry_under(self._pending)
                    self._inflight = None
                self._failed_commits += 1
                if not isinstance(error, sqlite3.Error):
                    raise
                note = (f"{dropped} new task(s) in this commit were not accepted and nothing of them "
                        f"was written; the other writes" if dropped else "The other writes")
                raise journal_error(error, path=self._path, action=f"committing {len(batch)} writes to",
                                    note=f"{note} are retried by the next commit") from error
            with self._buffer_lock:
                self._inflight = None
                self._durable_sequence = sequence
            self._last_commit_seconds = time.perf_counter() - started
            self._commits += 1
            self._committed_entries += len(batch)
            return len(batch)

    # ------------------------------------------------------------ upkeep

    def prune(self, *, max_age_seconds: float | None, max_finished: int | None, now: float,
              chunk: int = 500) -> int:
        """Delete committed finished entries (dead letters included) and return how many.

        Ages and order are by creation time, which the table indexes together
        with ``finished``: finding what to delete reads the index on the side
        connection, and the deletion runs in transactions of ``chunk`` rows, so
        commits go on in between (one statement over a large journal held them
        up for hundreds of milliseconds).

        Args:
            max_age_seconds: delete finished entries created more than this
                long before ``now``; None keeps them regardless of age.
            max_finished: keep only this many most recently created
                finished entries (ties in the order they were first
                written); None keeps them regardless of count.
            now: the current wall-clock time, in the units of ``created_at``.
            chunk: rows deleted per transaction.
        """
        if max_age_seconds is not None and max_age_seconds < 0:
            raise ValueError(f"prune max_age_seconds must be >= 0 or None, got {max_age_seconds!r}")
        if max_finished is not None and max_finished < 0:
            raise ValueError(f"prune max_finished must be >= 0 or None, got {max_finished!r}")
        # Entries go by (created_at, rowid): the index on (finished, created_at) ends with
        # the rowid, which breaks ties in insertion order, so no sort is needed.
        cutoff = None if max_age_seconds is None else (now - max_age_seconds, 0)
        if max_finished is not None:
            if max_finished == 0:
                cutoff = (float("inf"), 0)
            else:
                row = self._side_row("SELECT created_at, rowid FROM tasks WHERE finished = 1 "
                                     "ORDER BY created_at DESC, rowid DESC LIMIT 1 OFFSET ?",
                                     (max_finished - 1,), action="finding what to prune in")
                if row is not None:  # the oldest entry kept
                    cutoff = tuple(row) if cutoff is None else max(cutoff, tuple(row))
        if cutoff is None:
            return 0
        deleted = 0
        while True:
            with self._connection_lock:
                connection = self._require_open()
                with translated(self._path, "pruning"):
                    connection.execute("BEGIN IMMEDIATE")
                    try:
                        count = connection.execute(
                            "DELETE FROM tasks WHERE rowid IN (SELECT rowid FROM tasks "
                            "WHERE finished = 1 AND (created_at, rowid) < (?, ?) LIMIT ?)",
                            (*cutoff, chunk)).rowcount
                        connection.execute("COMMIT")
                    except BaseException:
                        _roll_back(connection)
                        raise
            deleted += count
            if count < chunk:
                return deleted

    def checkpoint(self) -> int:
        """Copy the write-ahead log into the database without holding up commits.

        Runs on the journal's side connection (call it from a worker thread);
        a PASSIVE checkpoint never waits for the writer. Returns the pages the
        log still holds beyond what was copied (0: all of it).

        Raises:
            JournalError: the journal is closed or SQLite refused.
        """
        started = time.perf_counter()
        _busy, log_pages, copied = self._side_row("PRAGMA wal_checkpoint(PASSIVE)",
                                                  action="checkpointing")
        self._last_checkpoint_seconds = time.perf_counter() - started
        self._checkpoints += 1
        return max(0, log_pages - copied)

    def check_integrity(self) -> None:
        """Read the whole file on the side connection (seconds for a large journal: call it
        from a worker thread, e.g. once after start-up) and raise what is wrong with it.

        Raises:
            JournalError: the file is corrupt (``reason == "corrupt"``; the message says
                where it is and how to start fresh or restore a backup).
        """
        with self._side_lock:
            check_integrity(self._on_side(), self._path)

    def statistics(self) -> JournalStatistics:
        """Return a snapshot of sizes and counters.

        It counts the tasks table on the side connection, so a large journal
        does not hold up commits meanwhile (call it from a worker thread).
        """
        entries, unfinished, dead_letters, hosts = self._side_row(
            "SELECT COUNT(*), COALESCE(SUM(finished = 0), 0), COALESCE(SUM(dead_letter), 0), "
            "(SELECT COUNT(*) FROM hosts) FROM tasks", action="counting")
        file_bytes = 0
        for suffix in ("", "-wal"):
            with contextlib.suppress(OSError):
                file_bytes += Path(f"{self._path}{suffix}").stat().st_size
        return JournalStatistics(
            entries=entries, unfinished=unfinished, dead_letters=dead_letters, hosts=hosts,
            pending=len(self._pending), commits=self._commits,
            committed_entries=self._committed_entries, failed_commits=self._failed_commits,
            last_commit_seconds=self._last_commit_seconds, file_bytes=file_bytes,
            checkpoints=self._checkpoints, last_checkpoint_seconds=self._last_checkpoint_seconds,
            durability=self._durability,
        )

    def close(self) -> None:
        """Commit what is buffered and close the files. Closing twice is harmless.

        Raises:
            JournalError: the final commit failed (the files are closed anyway,
                and what was buffered is lost: a later open recovers the rest).
        """
        if self._closed:
            return
        try:
            self.commit()
        finally:
            self._closed = True
            # The side and reader connections first: closing the writer last checkpoints the log.
            for lock, name in ((self._side_lock, "_side"), (self._reader_lock, "_reader"),
                               (self._connection_lock, "_connection")):
                with lock:
                    connection = getattr(self, name)
                    setattr(self, name, None)
                    if connection is not None:
                        with contextlib.suppress(sqlite3.Error):
                            connection.close()
            if self._lock is not None:
                self._lock.release()

    def __enter__(self) -> Journal:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # ------------------------------------------------------------ connections

    def _require_open(self) -> sqlite3.Connection:
        if self._closed or self._connection is None:
            raise JournalError(
                f"the task journal {str(self._path)!r} is closed; {fix_for('closed', self._path)}",
                path=str(self._path), reason="closed",
            )
        return self._connection

    def _read(self, sql: str, parameters: tuple = ()) -> list[tuple]:
        """Rows from the reader connection, which sees the last commit and never waits for the next."""
        with self._reader_lock:
            self._require_open()
            if self._reader is None:
                self._reader = connect(self._path, self._durability)
            with translated(self._path, "reading"):
                return self._reader.execute(sql, parameters).fetchall()

    def _side_row(self, sql: str, parameters: tuple = (), *, action: str) -> tuple | None:
        """One row from the side connection, which never waits for the writer's lock."""
        with self._side_lock, translated(self._path, action):
            return self._on_side().execute(sql, parameters).fetchone()

    def _on_side(self) -> sqlite3.Connection:
        """The side connection, opened on first use; call with the side lock held."""
        self._require_open()
        if self._side is None:
            self._side = connect(self._path, self._durability)
        return self._side


def _write(connection: sqlite3.Connection, batch: PendingWrites) -> None:
    now = time.time()
    connection.execute("BEGIN IMMEDIATE")
    try:
        if batch.tasks:
            connection.executemany(_UPSERT, [entry._row() for entry in batch.tasks.values()])
        if batch.cleared:
            connection.executemany(_CLEAR_DEAD_LETTER, [(task_id,) for task_id in batch.cleared])
        for table, put, delete in ((batch.pools, _PUT_POOL, _DELETE_POOL),
                                   (batch.hosts, _PUT_HOST, _DELETE_HOST)):
            for key, value in table.items():
                if value is None:
                    connection.execute(delete, (key,))
                else:
                    connection.execute(put, (key, value, now))
        if batch.states or batch.subscriptions or batch.reminders:
            write_states(connection, batch, now)
        connection.execute("COMMIT")
    except BaseException:
        _roll_back(connection)
        raise


def _roll_back(connection: sqlite3.Connection) -> None:
    # SQLite rolls some failures back by itself (a full disk does): then there is nothing to undo.
    if connection.in_transaction:
        with contextlib.suppress(sqlite3.Error):
            connection.execute("ROLLBACK")

