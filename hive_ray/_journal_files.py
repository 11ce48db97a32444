"""The journal's files: a private directory, one owner at a time, and a checked schema.

Opening a journal (`open_files`) does, in order:

1. **Directory**: created with mode 0700; an existing one of ours that others
   can use is tightened to 0700 (give the journal a directory of its own).
   Refused: a sticky, shared directory such as ``/tmp`` (others could plant a
   write-ahead log there for the orchestrator to replay), and one not ours
   to change that any user can write. A directory not ours to change and
   writable only by its group (the root of a volume owned by root, shared
   through Kubernetes' ``fsGroup``) is used with a warning: the files in it
   are 0600 all the same.
2. **Lock**: an exclusive ``fcntl`` lock on ``<file>.lock``, held while the
   journal is open, so that two orchestrators (two processes) never write one
   journal. The lock dies with its process, so an orchestrator that Ray
   restarts after a crash takes it over at once; a process still shutting
   down is waited for a few seconds. (POSIX locks belong to a process: a
   second open within the same process is not refused.)
3. **Files**: the database is created with mode 0600 before SQLite opens it;
   SQLite gives its ``-wal`` and ``-shm`` files the database's mode.
4. **Schema**: a new file gets the current schema; a file of an older
   version is migrated in one transaction; a file that is not a database,
   a foreign database or a newer version is refused with what to do. The
   whole file is not checked here (seconds for a million tasks, which a
   restart cannot wait for): `check_integrity` does that, from a worker.
5. **Durability**: WAL mode with ``synchronous=NORMAL`` (``normal``: a
   commit survives a crash of the process) or ``FULL`` (``full``: it also
   survives a power cut or kernel crash, at the cost of an fsync per commit).
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import sqlite3
import stat
import tempfile
import time
from pathlib import Path

from hive_ray._errors import JournalError
from hive_ray._journal_errors import fix_for, journal_error, translated

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: no journal lock
    fcntl = None  # type: ignore[assignment]

logger = logging.getLogger("hive_ray.journal")

SCHEMA_VERSION = 3
APPLICATION = "hive-ray-journal"
DURABILITY_MODES = ("normal", "full")

#: How long SQLite waits for a lock held by another connection before it fails.
BUSY_TIMEOUT_SECONDS = 10.0

# Version 1, as hive-ray first wrote it; every later version is a migration
# below, and a new file runs them all, so the migrations are always exercised.
_SCHEMA_V1 = """
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

_MIGRATIONS = {
    # 1 -> 2: dead letters (newest first, per pool too; partial indexes cost
    # nothing for other rows) and the host actors that outlive an orchestrator.
    1: """
ALTER TABLE tasks ADD COLUMN dead_letter INTEGER NOT NULL DEFAULT 0;
CREATE INDEX tasks_dead_letters ON tasks (updated_at) WHERE dead_letter = 1;
CREATE INDEX tasks_dead_letters_by_pool ON tasks (pool, updated_at) WHERE dead_letter = 1;
CREATE TABLE hosts (key TEXT PRIMARY KEY, record TEXT NOT NULL, updated_at REAL NOT NULL);
""",
    # 2 -> 3: virtual agents' states (one row per identity), topic subscriptions and reminders
    # (hive_ray._journal_states).
    2: """
CREATE TABLE agent_states (
    agent_type TEXT NOT NULL,
    key TEXT NOT NULL,
    version INTEGER NOT NULL,
    activation TEXT NOT NULL,
    body BLOB NOT NULL,
    updated_at REAL NOT NULL,
    PRIMARY KEY (agent_type, key)
) WITHOUT ROWID;
CREATE TABLE subscriptions (
    topic TEXT NOT NULL,
    agent_type TEXT NOT NULL,
    key TEXT NOT NULL,
    created_at REAL NOT NULL,
    PRIMARY KEY (topic, agent_type, key)
) WITHOUT ROWID;
CREATE TABLE reminders (
    agent_type TEXT NOT NULL,
    key TEXT NOT NULL,
    name TEXT NOT NULL,
    due_at REAL NOT NULL,
    period REAL,
    PRIMARY KEY (agent_type, key, name)
) WITHOUT ROWID;
""",
}

_PRIVATE_DIRECTORY, _PRIVATE_FILE = 0o700, 0o600
_WRITABLE_DIRECTORY_FIX = "set HIVE_JOURNAL_DIR to a writable directory"


class JournalLock:
    """The exclusive lock on ``<journal file>.lock`` that one journal holds while it is open."""

    def __init__(self, descriptor: int | None) -> None:
        self._descriptor = descriptor

    @classmethod
    def acquire(cls, path: Path, timeout_seconds: float) -> JournalLock:
        """Lock the journal ``path``, waiting up to ``timeout_seconds`` for another process.

        Raises:
            JournalError: another process holds the lock (reason ``locked``),
                or the lock file cannot be created.
        """
        if fcntl is None:  # pragma: no cover
            return cls(None)
        lock_path = path.with_name(f"{path.name}.lock")
        try:
            descriptor = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, _PRIVATE_FILE)
        except OSError as error:
            raise journal_error(error, path=path, action="creating the lock file of") from error
        deadline = time.monotonic() + timeout_seconds
        while True:
            try:
                os.fchmod(descriptor, _PRIVATE_FILE)
                fcntl.lockf(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError as error:
                if error.errno not in (errno.EACCES, errno.EAGAIN):
                    os.close(descriptor)
                    raise journal_error(error, path=path, action="locking") from error
                if time.monotonic() >= deadline:
                    holder = _read_holder(descriptor)
                    os.close(descriptor)
                    raise JournalError(
                        f"the task journal {str(path)!r} is in use by another process "
                        f"({holder}, which holds {str(lock_path)!r}): another orchestrator uses "
                        f"the same journal_dir; {fix_for('locked', path)}",
                        path=str(path), reason="locked",
                    ) from None
                time.sleep(0.05)  # the holder may be a crashed orchestrator still exiting
        with contextlib.suppress(OSError):  # who holds it, for the message above
            os.ftruncate(descriptor, 0)
            os.pwrite(descriptor, f"{os.getpid()}\n".encode(), 0)
        return cls(descriptor)

    def release(self) -> None:
        """Release the lock; releasing twice is harmless."""
        if self._descriptor is not None:
            os.close(self._descriptor)  # closing the file drops the lock
            self._descriptor = None


def _read_holder(descriptor: int) -> str:
    with contextlib.suppress(OSError, ValueError):
        return f"pid {int(os.pread(descriptor, 32, 0).decode().strip())}"
    return "an unknown process"


def prepare_directory(folder: Path) -> None:
    """Create ``folder`` with mode 0700, or make sure an existing one is private and writable.

    Raises:
        JournalError: the directory cannot be created, written or made
            private (reason ``directory``; see the module docstring).
    """
    try:
        folder.mkdir(mode=_PRIVATE_DIRECTORY, parents=True, exist_ok=True)
        mode = stat.S_IMODE(folder.stat().st_mode)
    except OSError as error:
        raise _directory_error(
            folder, f"cannot create the task journal directory {str(folder)!r}: {error}; "
            f"{_WRITABLE_DIRECTORY_FIX}") from error
    if mode != _PRIVATE_DIRECTORY:
        _make_private(folder, mode)
    try:
        # SQLite needs to create the -wal and -shm files beside the
        # database, so probe the directory itself, not just the file.
        with tempfile.TemporaryFile(dir=folder, prefix=".hive-journal-probe-"):
            pass
    except OSError as error:
        raise _directory_error(
            folder, f"cannot write the task journal directory {str(folder)!r}: {error}; "
            f"{_WRITABLE_DIRECTORY_FIX}") from error


def _directory_error(folder: Path, message: str) -> JournalError:
    return JournalError(message, path=str(folder), reason="directory")


def _make_private(folder: Path, mode: int) -> None:
    if mode & stat.S_ISVTX:
        raise _directory_error(
            folder, f"the task journal directory {str(folder)!r} is a shared directory (mode {mode:04o}, "
            f"sticky: others may create files in it, such as a write-ahead log the orchestrator "
            f"would replay); point journal_dir (HIVE_JOURNAL_DIR) at a directory of its own, such "
            f"as {str(folder / 'hive-journal')!r}")
    try:
        folder.chmod(_PRIVATE_DIRECTORY)
    except PermissionError as error:
        if mode & stat.S_IWOTH:
            raise _directory_error(
                folder, f"the task journal directory {str(folder)!r} can be written by any user (mode "
                f"{mode:04o}) and is not ours to change ({error}); run chmod 700 "
                f"{str(folder)!r} as its owner, or {_WRITABLE_DIRECTORY_FIX}") from error
        # The root of a mounted volume, owned by root and shared with our group
        # (Kubernetes' fsGroup): the files in it are 0600 all the same.
        logger.warning("the task journal directory %s has mode %04o and is not ours to change; "
                       "its files are still 0600. Run chmod 700 on it as its owner, or point "
                       "HIVE_JOURNAL_DIR at a subdirectory", folder, mode)
        return
    except OSError as error:
        raise _directory_error(
            folder, f"cannot make the task journal directory {str(folder)!r} private (mode {mode:04o}, "
            f"needs 0700): {error}; run chmod 700 {str(folder)!r} as its owner or "
            f"{_WRITABLE_DIRECTORY_FIX}") from error
    if mode & 0o077:
        logger.warning("the task journal directory %s was open to other users (mode %04o); "
                       "it is now 0700", folder, mode)


def create_private_files(path: Path) -> None:
    """Create the database file with mode 0600 (SQLite copies it to ``-wal`` and ``-shm``).

    Files an older hive-ray left with a looser mode are tightened too.
    """
    try:
        descriptor = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, _PRIVATE_FILE)
        try:
            os.fchmod(descriptor, _PRIVATE_FILE)
        finally:
            os.close(descriptor)
        for suffix in ("-wal", "-shm", "-journal"):
            with contextlib.suppress(FileNotFoundError):
                Path(f"{path}{suffix}").chmod(_PRIVATE_FILE)
    except OSError as error:
        raise journal_error(error, path=path, action="creating (mode 0600)") from error


def connect(path: Path, durability: str) -> sqlite3.Connection:
    """A connection to the journal ``path`` with the durability mode's settings.

    Raises:
        JournalError: SQLite cannot open the file.
    """
    with translated(path, "opening"):
        connection = sqlite3.connect(path, check_same_thread=False, isolation_level=None,
                                     timeout=BUSY_TIMEOUT_SECONDS)
        try:
            connection.execute(f"PRAGMA synchronous={'FULL' if durability == 'full' else 'NORMAL'}")
            if durability == "full":
                connection.execute("PRAGMA fullfsync=1")  # macOS: a real flush; elsewhere a no-op
        except BaseException:
            connection.close()
            raise
    return connection


def prepare_schema(connection: sqlite3.Connection, path: Path) -> None:
    """Check the file, create or migrate its schema, and switch it to WAL mode.

    Raises:
        JournalError: the file is corrupt (``corrupt``), not a hive-ray journal
            or of a newer version (``schema``), or cannot be written.
    """
    # No integrity check here: it reads the whole file (seconds for a million tasks), which
    # recovery cannot wait for. A file that is not a database fails the first read below;
    # damage inside fails whichever read or write meets it, and `check_integrity` finds it.
    with translated(path, "opening"):
        tables = {row[0] for row in connection.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table'")}
        if not tables:
            _create(connection)
        else:
            version = _check_schema(connection, path, tables)
            if version < SCHEMA_VERSION:
                _migrate(connection, path, version)
        mode = connection.execute("PRAGMA journal_mode=WAL").fetchone()[0]
        if str(mode).lower() != "wal":
            raise JournalError(
                f"the task journal {str(path)!r} could not switch to WAL mode (got {mode!r}); "
                f"put HIVE_JOURNAL_DIR on a local file system",
                path=str(path), reason="other",
            )
        # After a checkpoint lets the log start over, cut the file back to 64 MiB.
        connection.execute("PRAGMA journal_size_limit=67108864")


def check_integrity(connection: sqlite3.Connection, path: Path) -> None:
    """Read the whole file and raise what SQLite's ``quick_check`` finds wrong.

    Raises:
        JournalError: the file is corrupt (reason ``corrupt``).
    """
    with translated(path, "checking"):
        problems = [row[0] for row in connection.execute("PRAGMA quick_check").fetchall()]
    if problems != ["ok"]:
        raise JournalError(
            f"the task journal {str(path)!r} is corrupt ({'; '.join(problems[:3])}); "
            f"{fix_for('corrupt', path)}",
            path=str(path), reason="corrupt",
        )


def _create(connection: sqlite3.Connection) -> None:
    # One transaction, so a crash cannot leave tables without their meta rows.
    migrations = "".join(_MIGRATIONS[version] for version in range(1, SCHEMA_VERSION))
    connection.executescript(
        f"BEGIN IMMEDIATE;{_SCHEMA_V1}{migrations}"
        f"INSERT INTO meta (key, value) VALUES ('application', '{APPLICATION}');"
        f"INSERT INTO meta (key, value) VALUES ('schema_version', '{SCHEMA_VERSION}');"
        f"COMMIT;"
    )


def _migrate(connection: sqlite3.Connection, path: Path, version: int) -> None:
    logger.warning("migrating the task journal %s from schema version %d to %d",
                   path, version, SCHEMA_VERSION)
    steps = "".join(_MIGRATIONS[step] for step in range(version, SCHEMA_VERSION))
    try:
        connection.executescript(
            f"BEGIN IMMEDIATE;{steps}"
            f"UPDATE meta SET value = '{SCHEMA_VERSION}' WHERE key = 'schema_version';COMMIT;")
    except BaseException:
        if connection.in_transaction:
            with contextlib.suppress(sqlite3.Error):
                connection.execute("ROLLBACK")
        raise


def _check_schema(connection: sqlite3.Connection, path: Path, tables: set[str]) -> int:
    meta = dict(connection.execute("SELECT key, value FROM meta")) if "meta" in tables else {}
    if meta.get("application") != APPLICATION or "tasks" not in tables:
        raise JournalError(
            f"{str(path)!r} is a SQLite database but not a hive-ray task journal; "
            f"choose another HIVE_JOURNAL_DIR or move the file aside",
            path=str(path), reason="schema",
        )
    version = meta.get("schema_version")
    if version not in {str(known) for known in range(1, SCHEMA_VERSION + 1)}:
        raise JournalError(
            f"the task journal {str(path)!r} has schema version {version!r}, but this "
            f"hive-ray reads versions 1 to {SCHEMA_VERSION}; upgrade hive-ray or move the file aside",
            path=str(path), reason="schema",
        )
    return int(version)
