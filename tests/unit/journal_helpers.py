"""Shared pieces of the journal's unit tests: entries, and real SQLite failures on demand."""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Iterator

from hive_ray._journal import Journal, JournalEntry

#: About one 4 KiB page per entry: a few of them fill a small page budget.
PAGE_SIZED_BODY = b"x" * 3000


def make_entry(
    task_id: str,
    *,
    pool: str = "echo",
    state: str = "queued",
    idempotency_key: str | None = None,
    created_at: float = 0.0,
    updated_at: float | None = None,
    finished: bool = False,
    body: bytes = b"{}",
    dead_letter: bool = False,
) -> JournalEntry:
    return JournalEntry(
        task_id=task_id,
        pool=pool,
        state=state,
        idempotency_key=idempotency_key,
        created_at=created_at,
        updated_at=created_at if updated_at is None else updated_at,
        finished=finished,
        body=body,
        dead_letter=dead_letter,
    )


def on_writer(journal: Journal, sql: str) -> None:
    """Run ``sql`` on the journal's writer connection (between commits)."""
    with journal._connection_lock:
        journal._connection.execute(sql)


@contextlib.contextmanager
def full_disk(journal: Journal, spare_pages: int = 2) -> Iterator[None]:
    """Let the database grow by only ``spare_pages`` pages: larger commits fail with
    SQLITE_FULL, SQLite's real "database or disk is full" path. Space comes back on exit."""
    with journal._connection_lock:
        pages = journal._connection.execute("PRAGMA page_count").fetchone()[0]
    on_writer(journal, f"PRAGMA max_page_count={pages + spare_pages}")
    try:
        yield
    finally:
        on_writer(journal, "PRAGMA max_page_count=4294967294")


def real_sqlite_error(code_sql: str = "PRAGMA query_only=1") -> sqlite3.Error:
    """A genuine sqlite3 error object (here SQLITE_READONLY), to be raised by a stand-in connection."""
    connection = sqlite3.connect(":memory:")
    connection.execute("CREATE TABLE t (x)")
    connection.execute(code_sql)
    try:
        connection.execute("INSERT INTO t VALUES (1)")
    except sqlite3.Error as error:
        return error
    finally:
        connection.close()
    raise AssertionError("the write was expected to fail")


class FailingConnection:
    """Stands in for one of the journal's connections: every statement raises ``error``."""

    in_transaction = False

    def __init__(self, error: sqlite3.Error) -> None:
        self.error = error
        self.closed = False

    def execute(self, *_arguments: object) -> sqlite3.Cursor:
        raise self.error

    def executemany(self, *_arguments: object) -> sqlite3.Cursor:
        raise self.error

    def close(self) -> None:
        self.closed = True
