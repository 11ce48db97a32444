"""The durable task journal: every accepted task, in SQLite (WAL mode), with group commit.

The orchestrator must record a task before ``submit`` returns, yet accept more
than 10,000 tasks a second. A commit per task cannot do that (each SQLite
commit costs tens of microseconds to milliseconds), so writes are split in two:

* `Journal.put` buffers an upsert in memory, O(1) and without I/O;
* `Journal.commit` writes everything buffered in one transaction, and
  `GroupCommitter` runs those commits in a worker thread on behalf of many
  waiters at once: ``await committer.durable()`` returns once the entries
  buffered before the call are on disk.

Durability: WAL with ``synchronous=NORMAL`` survives a killed process (the
failure that matters for an orchestrator actor) but may lose the last
commits on a power cut or kernel crash; the file itself stays consistent.

Checkpoints: by default SQLite copies the write-ahead log back into the
database inside whichever commit crosses 1,000 pages, and that copy ends
with an fsync: a commit every second or so took ~10 ms instead of ~0.3 ms,
which was the whole p99 of task latency. A journal opened with
``background_checkpoints=True`` leaves that to `Journal.checkpoint`, which
runs on a second connection (WAL lets it proceed beside the writer) and is
meant for another thread; `GroupCommitter` calls it after its commits.

Threading: `commit` is meant to run in a worker thread while the event loop
keeps calling `put`. Two locks keep that safe: a short buffer lock around the
in-memory buffer, and a connection lock around every SQLite call.
"""

from __future__ import annotations

import contextlib
import sqlite3
import tempfile
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from hive_ray._errors import JournalError

SCHEMA_VERSION = 1
APPLICATION = "hive-ray-journal"

_SCHEMA = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE tasks (
    task_id TEXT PRIMARY KEY,
    pool TEXT NOT NULL,
    state TEXT NOT NULL,
    idempotency_key TEXT,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL,
    finished INTEGER NOT NULL,
    body BLOB NOT NULL
);
CREATE INDEX tasks_by_finished_created ON tasks (finished, created_at);
CREATE INDEX tasks_by_pool_idempotency ON tasks (pool, idempotency_key);
CREATE TABLE pools (name TEXT PRIMARY KEY, spec BLOB NOT NULL, updated_at REAL NOT NULL);
"""

_COLUMNS = "task_id, pool, state, idempotency_key, created_at, updated_at, finished, body"

_UPSERT = f"""
INSERT INTO tasks ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?)
ON CONFLICT (task_id) DO UPDATE SET
    pool = excluded.pool, state = excluded.state, idempotency_key = excluded.idempotency_key,
    created_at = excluded.created_at, updated_at = excluded.updated_at,
    finished = excluded.finished, body = excluded.body
"""

_FIX_CORRUPT = "move the file aside (the journal starts empty) or restore it from a backup"


@dataclass(frozen=True, slots=True, kw_only=True)
class JournalEntry:
    """One task as the journal stores it.

    The journal indexes the few fields it queries by and treats ``body`` as
    opaque bytes: the orchestrator owns the task record and its encoding.
    """

    task_id: str
    pool: str
    state: str
    idempotency_key: str | None
    created_at: float
    updated_at: float
    finished: bool
    body: bytes

    def _row(self) -> tuple[str, str, str, str | None, float, float, int, bytes]:
        return (
            self.task_id,
            self.pool,
            self.state,
            self.idempotency_key,
            self.created_at,
            self.updated_at,
            int(self.finished),
            self.body,
        )


def _entry_from_row(row: tuple) -> JournalEntry:
    task_id, pool, state, idempotency_key, created_at, updated_at, finished, body = row
    return JournalEntry(
        task_id=task_id,
        pool=pool,
        state=state,
        idempotency_key=idempotency_key,
        created_at=created_at,
        updated_at=updated_at,
        finished=bool(finished),
        body=bytes(body),
    )


@dataclass(frozen=True, slots=True, kw_only=True)
class JournalStatistics:
    """A snapshot of the journal, from `Journal.statistics`.

    Attributes:
        entries: committed entries on disk.
        unfinished: committed entries not yet finished.
        pending: entries buffered and not yet committed.
        commits: commits since the journal was opened.
        committed_entries: entries written by those commits.
        last_commit_seconds: how long the most recent commit took.
        file_bytes: size of the database file plus its write-ahead log.
        checkpoints: background checkpoints since the journal was opened.
        last_checkpoint_seconds: how long the most recent one took.
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


class Journal:
    """The SQLite task journal. Create it with `Journal.open`."""

    def __init__(self, connection: sqlite3.Connection, path: Path) -> None:
        """Wrap an open, checked connection; use `Journal.open` instead."""
        self._connection: sqlite3.Connection | None = connection
        self._path = path
        self._connection_lock = threading.Lock()
        # A second connection for what must not hold up commits: checkpoints and counts.
        self._side: sqlite3.Connection | None = None
        self._side_lock = threading.Lock()
        self._checkpoints = 0
        self._last_checkpoint_seconds = 0.0
        self._buffer_lock = threading.Lock()
        self._pending: dict[str, JournalEntry] = {}
        # Buffered entries by (pool, idempotency key), so that duplicate
        # submissions within one commit window are caught before they hit disk.
        self._pending_by_key: dict[tuple[str, str], JournalEntry] = {}
        # Every put takes a sequence number; everything up to durable_sequence
        # is on disk. GroupCommitter waits on these numbers.
        self._put_sequence = 0
        self._durable_sequence = 0
        self._commits = 0
        self._committed_entries = 0
        self._last_commit_seconds = 0.0

    # ------------------------------------------------------------ opening

    @classmethod
    def open(cls, directory: str | Path, *, filename: str = "journal.sqlite3",
             background_checkpoints: bool = False) -> Journal:
        """Open (or create) the journal ``filename`` in ``directory``.

        With ``background_checkpoints``, commits never checkpoint the write-ahead
        log: the owner must call `checkpoint` regularly (`GroupCommitter` does).

        Raises:
            JournalError: the directory cannot be written, or the file is
                corrupt, not a SQLite database, or not a hive-ray journal.
        """
        folder = Path(directory).expanduser()
        path = folder / filename
        try:
            folder.mkdir(parents=True, exist_ok=True)
            # SQLite needs to create the -wal and -shm files beside the
            # database, so probe the directory itself, not just the file.
            with tempfile.TemporaryFile(dir=folder, prefix=".hive-journal-probe-"):
                pass
        except OSError as error:
            raise JournalError(
                f"cannot write the task journal directory {str(folder)!r}: {error}; "
                f"set HIVE_JOURNAL_DIR to a writable directory",
                path=str(path),
            ) from error
        try:
            connection = sqlite3.connect(
                path, check_same_thread=False, isolation_level=None, timeout=30.0
            )
        except sqlite3.Error as error:
            raise JournalError(
                f"cannot open the task journal {str(path)!r}: {error}; "
                f"set HIVE_JOURNAL_DIR to a writable directory",
                path=str(path),
            ) from error
        try:
            _prepare(connection, path)
            if background_checkpoints:
                connection.execute("PRAGMA wal_autocheckpoint=0")
        except BaseException:
            connection.close()
            raise
        return cls(connection, path)

    @property
    def path(self) -> Path:
        """The database file."""
        return self._path

    # ------------------------------------------------------------ writing

    @property
    def pending_count(self) -> int:
        """How many entries are buffered and not yet committed."""
        return len(self._pending)

    @property
    def put_sequence(self) -> int:
        """The number of puts so far; compare with `durable_sequence`."""
        return self._put_sequence

    @property
    def durable_sequence(self) -> int:
        """Every put numbered up to this is committed."""
        return self._durable_sequence

    def put(self, entry: JournalEntry) -> None:
        """Buffer an upsert of ``entry``; the latest put for a task_id wins."""
        with self._buffer_lock:
            self._pending[entry.task_id] = entry
            if entry.idempotency_key is not None:
                self._pending_by_key[(entry.pool, entry.idempotency_key)] = entry
            self._put_sequence += 1

    def put_many(self, entries: Iterable[JournalEntry]) -> None:
        """Buffer upserts of several entries, in order."""
        with self._buffer_lock:
            pending = self._pending
            by_key = self._pending_by_key
            count = 0
            for entry in entries:
                pending[entry.task_id] = entry
                if entry.idempotency_key is not None:
                    by_key[(entry.pool, entry.idempotency_key)] = entry
                count += 1
            self._put_sequence += count

    def commit(self) -> int:
        """Write every buffered entry in one transaction and return how many.

        Safe to call from a worker thread while other threads keep calling
        `put`. If the write fails, the entries go back into the buffer (unless
        a newer version was put meanwhile), so a later commit retries them.

        Raises:
            JournalError: the journal is closed or SQLite refused the write.
        """
        with self._connection_lock:
            connection = self._require_open()
            # Swapping inside the connection lock keeps durable_sequence
            # honest: every earlier batch has finished by the time we swap.
            with self._buffer_lock:
                batch = self._pending
                sequence = self._put_sequence
                self._pending = {}
                self._pending_by_key = {}
            if not batch:
                self._durable_sequence = sequence
                return 0
            started = time.perf_counter()
            try:
                connection.execute("BEGIN IMMEDIATE")
                try:
                    connection.executemany(_UPSERT, [entry._row() for entry in batch.values()])
                    connection.execute("COMMIT")
                except BaseException:
                    connection.execute("ROLLBACK")
                    raise
            except sqlite3.Error as error:
                self._requeue(batch)
                raise JournalError(
                    f"could not commit {len(batch)} entries to the task journal "
                    f"{str(self._path)!r}: {error}; check free disk space and permissions",
                    path=str(self._path),
                ) from error
            except BaseException:
                self._requeue(batch)
                raise
            self._last_commit_seconds = time.perf_counter() - started
            self._commits += 1
            self._committed_entries += len(batch)
            self._durable_sequence = sequence
            return len(batch)

    def _requeue(self, batch: dict[str, JournalEntry]) -> None:
        with self._buffer_lock:
            for task_id, entry in batch.items():
                newer = self._pending.setdefault(task_id, entry)
                if newer is entry and entry.idempotency_key is not None:
                    self._pending_by_key.setdefault((entry.pool, entry.idempotency_key), entry)

    # ------------------------------------------------------------ reading

    def get(self, task_id: str) -> JournalEntry | None:
        """Return the latest version of ``task_id``, buffered or committed."""
        with self._buffer_lock:
            entry = self._pending.get(task_id)
        if entry is not None:
            return entry
        rows = self._fetch(f"SELECT {_COLUMNS} FROM tasks WHERE task_id = ?", (task_id,))
        return _entry_from_row(rows[0]) if rows else None

    def find_idempotent(self, pool_or_scope: str, idempotency_key: str) -> JournalEntry | None:
        """Return the newest task submitted to ``pool_or_scope`` with this key, if any.

        Looks at buffered entries too, so a duplicate arriving before the
        first submission's commit is still found.
        """
        with self._buffer_lock:
            entry = self._pending_by_key.get((pool_or_scope, idempotency_key))
            # A later put of the same task may have changed its key.
            if entry is not None and self._pending.get(entry.task_id) is not entry:
                entry = None
        if entry is not None:
            return entry
        rows = self._fetch(
            f"SELECT {_COLUMNS} FROM tasks WHERE pool = ? AND idempotency_key = ? "
            f"ORDER BY created_at DESC LIMIT 1",
            (pool_or_scope, idempotency_key),
        )
        return _entry_from_row(rows[0]) if rows else None

    def unfinished(self) -> list[JournalEntry]:
        """Return committed, unfinished entries, oldest first: the work to recover on restart."""
        rows = self._fetch(
            f"SELECT {_COLUMNS} FROM tasks WHERE finished = 0 ORDER BY created_at, task_id"
        )
        return [_entry_from_row(row) for row in rows]

    def query(
        self,
        *,
        state: str | None = None,
        pool: str | None = None,
        finished: bool | None = None,
        limit: int = 100,
        after_created: float | None = None,
        after_task_id: str = "",
    ) -> list[JournalEntry]:
        """Return up to ``limit`` committed entries matching the filters, oldest first.

        Page by passing the last entry's ``created_at`` and ``task_id`` as
        ``after_created`` and ``after_task_id``.
        """
        if limit < 0:
            raise ValueError(f"query limit must be >= 0, got {limit!r}")
        conditions: list[str] = []
        parameters: list[object] = []
        if state is not None:
            conditions.append("state = ?")
            parameters.append(state)
        if pool is not None:
            conditions.append("pool = ?")
            parameters.append(pool)
        if finished is not None:
            conditions.append("finished = ?")
            parameters.append(int(finished))
        if after_created is not None:
            conditions.append("(created_at > ? OR (created_at = ? AND task_id > ?))")
            parameters.extend((after_created, after_created, after_task_id))
        where = f"WHERE {' AND '.join(conditions)}" if conditions else ""
        rows = self._fetch(
            f"SELECT {_COLUMNS} FROM tasks {where} ORDER BY created_at, task_id LIMIT ?",
            (*parameters, limit),
        )
        return [_entry_from_row(row) for row in rows]

    # ------------------------------------------------------------ upkeep

    def prune(self, *, max_age_seconds: float | None, max_finished: int | None, now: float,
              chunk: int = 500) -> int:
        """Delete committed finished entries and return how many were deleted.

        Ages and order are by creation time, which the table indexes together
        with ``finished``: finding what to delete reads the index on the second
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
                                     (max_finished - 1,))
                if row is not None:  # the oldest entry kept
                    cutoff = tuple(row) if cutoff is None else max(cutoff, tuple(row))
        if cutoff is None:
            return 0
        deleted = 0
        while True:
            with self._connection_lock:
                connection = self._require_open()
                connection.execute("BEGIN IMMEDIATE")
                try:
                    count = connection.execute(
                        "DELETE FROM tasks WHERE rowid IN (SELECT rowid FROM tasks "
                        "WHERE finished = 1 AND (created_at, rowid) < (?, ?) LIMIT ?)",
                        (*cutoff, chunk)).rowcount
                    connection.execute("COMMIT")
                except BaseException:
                    connection.execute("ROLLBACK")
                    raise
            deleted += count
            if count < chunk:
                return deleted

    # ------------------------------------------------------------ pools
    def put_pool(self, name: str, spec: bytes) -> None:
        """Record a pool's declared spec at once (pool changes are rare; no batching)."""
        with self._connection_lock:
            self._require_open().execute(
                "INSERT INTO pools (name, spec, updated_at) VALUES (?, ?, ?) "
                "ON CONFLICT (name) DO UPDATE SET spec = excluded.spec, updated_at = excluded.updated_at",
                (name, spec, time.time()),
            )

    def delete_pool(self, name: str) -> None:
        with self._connection_lock:
            self._require_open().execute("DELETE FROM pools WHERE name = ?", (name,))

    def pools(self) -> dict[str, bytes]:
        """Every recorded pool's spec, by name, in creation order."""
        return {name: spec for name, spec in self._fetch("SELECT name, spec FROM pools ORDER BY rowid")}

    def checkpoint(self) -> int:
        """Copy the write-ahead log into the database without holding up commits.

        Runs on the journal's second connection (call it from a worker thread);
        a PASSIVE checkpoint never waits for the writer. Returns the pages the
        log still holds beyond what was copied (0: all of it).

        Raises:
            JournalError: the journal is closed or SQLite refused.
        """
        started = time.perf_counter()
        _busy, log_pages, copied = self._side_row("PRAGMA wal_checkpoint(PASSIVE)", doing="checkpoint")
        self._last_checkpoint_seconds = time.perf_counter() - started
        self._checkpoints += 1
        return max(0, log_pages - copied)

    def _side_row(self, sql: str, parameters: tuple = (), *, doing: str = "read") -> tuple | None:
        """One row from the second connection, which never waits for the writer's lock."""
        with self._side_lock:
            try:
                if self._side is None:
                    self._require_open()
                    self._side = sqlite3.connect(self._path, check_same_thread=False,
                                                 isolation_level=None, timeout=30.0)
                return self._side.execute(sql, parameters).fetchone()
            except sqlite3.Error as error:
                raise JournalError(
                    f"could not {doing} the task journal {str(self._path)!r}: {error}; "
                    f"check free disk space and permissions",
                    path=str(self._path),
                ) from error

    def statistics(self) -> JournalStatistics:
        """Return a snapshot of sizes and counters.

        It counts the tasks table on the second connection, so a large journal
        does not hold up commits meanwhile (call it from a worker thread).
        """
        entries, unfinished = self._side_row(
            "SELECT COUNT(*), COALESCE(SUM(finished = 0), 0) FROM tasks")
        file_bytes = 0
        for suffix in ("", "-wal"):
            with contextlib.suppress(OSError):
                file_bytes += Path(f"{self._path}{suffix}").stat().st_size
        return JournalStatistics(
            entries=entries,
            unfinished=unfinished,
            pending=len(self._pending),
            commits=self._commits,
            committed_entries=self._committed_entries,
            last_commit_seconds=self._last_commit_seconds,
            file_bytes=file_bytes,
            checkpoints=self._checkpoints,
            last_checkpoint_seconds=self._last_checkpoint_seconds,
        )

    def close(self) -> None:
        """Commit what is buffered and close the file. Closing twice is harmless."""
        if self._connection is None:
            return
        try:
            self.commit()
        finally:
            with self._side_lock:
                if self._side is not None:
                    self._side.close()  # first: closing the writer last checkpoints the log
                    self._side = None
            with self._connection_lock:
                if self._connection is not None:
                    self._connection.close()
                    self._connection = None

    def __enter__(self) -> Journal:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _require_open(self) -> sqlite3.Connection:
        if self._connection is None:
            raise JournalError(
                f"the task journal {str(self._path)!r} is closed; open it again with Journal.open",
                path=str(self._path),
            )
        return self._connection

    def _fetch(self, sql: str, parameters: tuple = ()) -> list[tuple]:
        with self._connection_lock:
            return self._require_open().execute(sql, parameters).fetchall()


def _prepare(connection: sqlite3.Connection, path: Path) -> None:
    """Check integrity and schema, create the schema in a new file, and enable WAL."""
    try:
        problems = [row[0] for row in connection.execute("PRAGMA quick_check").fetchall()]
        if problems != ["ok"]:
            raise JournalError(
                f"the task journal {str(path)!r} is corrupt ({'; '.join(problems[:3])}); "
                f"{_FIX_CORRUPT}",
                path=str(path),
            )
        tables = {
            row[0]
            for row in connection.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
        }
        if not tables:
            # One transaction, so a crash cannot leave tables without their meta rows.
            connection.executescript(
                f"BEGIN;{_SCHEMA}"
                f"INSERT INTO meta (key, value) VALUES ('application', '{APPLICATION}');"
                f"INSERT INTO meta (key, value) VALUES ('schema_version', '{SCHEMA_VERSION}');"
                f"COMMIT;"
            )
        else:
            _check_schema(connection, path, tables)
        mode = connection.execute("PRAGMA journal_mode=WAL").fetchone()[0]
        if str(mode).lower() != "wal":
            raise JournalError(
                f"the task journal {str(path)!r} could not switch to WAL mode (got {mode!r}); "
                f"put HIVE_JOURNAL_DIR on a local file system",
                path=str(path),
            )
        connection.execute("PRAGMA synchronous=NORMAL")
        # After a checkpoint lets the log start over, cut the file back to 64 MiB.
        connection.execute("PRAGMA journal_size_limit=67108864")
    except sqlite3.DatabaseError as error:
        raise JournalError(
            f"the task journal {str(path)!r} is not a readable SQLite database ({error}); "
            f"{_FIX_CORRUPT}",
            path=str(path),
        ) from error


def _check_schema(connection: sqlite3.Connection, path: Path, tables: set[str]) -> None:
    meta = dict(connection.execute("SELECT key, value FROM meta")) if "meta" in tables else {}
    if meta.get("application") != APPLICATION or "tasks" not in tables:
        raise JournalError(
            f"{str(path)!r} is a SQLite database but not a hive-ray task journal; "
            f"choose another HIVE_JOURNAL_DIR or move the file aside",
            path=str(path),
        )
    version = meta.get("schema_version")
    if version != str(SCHEMA_VERSION):
        raise JournalError(
            f"the task journal {str(path)!r} has schema version {version!r}, but this "
            f"hive-ray reads version {SCHEMA_VERSION}; upgrade hive-ray or move the file aside",
            path=str(path),
        )
