"""Unit tests for the SQLite task journal and its group committer (no Ray)."""

from __future__ import annotations

import asyncio
import os
import pickle
import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest

from hive_ray._errors import JournalError
from hive_ray._group_commit import GroupCommitter
from hive_ray._journal import Journal, JournalStatistics
from tests.unit.journal_helpers import make_entry

REPOSITORY_ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def journal(tmp_path: Path):
    opened = Journal.open(tmp_path / "journal")
    yield opened
    opened.close()


# ---------------------------------------------------------------- basics


def test_round_trip_survives_reopen(tmp_path: Path) -> None:
    entry = make_entry("t1", idempotency_key="k", created_at=1.5, body=bytes(range(256)))
    with Journal.open(tmp_path) as journal:
        journal.put(entry)
        assert journal.commit() == 1
    with Journal.open(tmp_path) as journal:
        assert journal.get("t1") == entry
        assert journal.get("missing") is None
    mode = sqlite3.connect(tmp_path / "journal.sqlite3").execute("PRAGMA journal_mode").fetchone()
    assert mode == ("wal",)


def test_put_is_buffered_until_commit(journal: Journal) -> None:
    journal.put(make_entry("t1"))
    assert journal.pending_count == 1
    assert journal.statistics().entries == 0
    assert journal.get("t1") is not None  # reads see the buffer
    journal.commit()
    assert journal.pending_count == 0
    assert journal.statistics().entries == 1


def test_upsert_last_write_wins_in_buffer_and_on_disk(journal: Journal) -> None:
    journal.put_many([make_entry("t1", state="queued"), make_entry("t1", state="running")])
    assert journal.commit() == 1
    journal.put(make_entry("t1", state="succeeded", finished=True, updated_at=9.0))
    journal.commit()
    stored = journal.get("t1")
    assert stored is not None and stored.state == "succeeded" and stored.finished
    assert journal.statistics().entries == 1


def test_unfinished_in_created_order(journal: Journal) -> None:
    journal.put_many(
        [
            make_entry("late", created_at=3.0),
            make_entry("done", created_at=0.5, finished=True),
            make_entry("early", created_at=1.0),
            make_entry("middle", created_at=2.0),
        ]
    )
    journal.commit()
    assert [entry.task_id for entry in journal.unfinished()] == ["early", "middle", "late"]


def test_find_idempotent_in_buffer_and_on_disk(journal: Journal) -> None:
    journal.put(make_entry("t1", pool="coder", idempotency_key="abc"))
    assert journal.find_idempotent("coder", "abc").task_id == "t1"
    journal.commit()
    assert journal.find_idempotent("coder", "abc").task_id == "t1"
    assert journal.find_idempotent("echo", "abc") is None
    assert journal.find_idempotent("coder", "other") is None
    # A later put that drops the key must hide the stale buffered index entry.
    journal.put(make_entry("t2", pool="coder", idempotency_key="xyz"))
    journal.put(make_entry("t2", pool="coder", idempotency_key=None))
    assert journal.find_idempotent("coder", "xyz") is None


def test_query_filters_and_pages(journal: Journal) -> None:
    journal.put_many(
        make_entry(f"t{i}", pool="a" if i % 2 else "b", created_at=float(i // 2), finished=i > 5)
        for i in range(10)
    )
    journal.commit()
    assert [entry.task_id for entry in journal.query(pool="a", limit=3)] == ["t1", "t3", "t5"]
    assert len(journal.query(finished=True)) == 4
    assert [entry.task_id for entry in journal.query(state="queued", limit=2)] == ["t0", "t1"]
    seen: list[str] = []
    page = journal.query(limit=3)
    while page:
        seen += [entry.task_id for entry in page]
        last = page[-1]
        page = journal.query(limit=3, after_created=last.created_at, after_task_id=last.task_id)
    assert seen == [f"t{i}" for i in range(10)]


def test_prune_by_age(journal: Journal) -> None:
    journal.put_many(
        [
            make_entry("old", finished=True, created_at=10.0),
            make_entry("recent", finished=True, created_at=95.0),
            make_entry("old-but-running", created_at=1.0),
        ]
    )
    journal.commit()
    assert journal.prune(max_age_seconds=30.0, max_finished=None, now=100.0) == 1
    assert journal.get("old") is None
    assert journal.get("recent") is not None
    assert journal.get("old-but-running") is not None


def test_prune_by_count_keeps_newest_finished(journal: Journal) -> None:
    journal.put_many(make_entry(f"f{i}", finished=True, created_at=float(i)) for i in range(10))
    journal.put(make_entry("running"))
    journal.commit()
    assert journal.prune(max_age_seconds=None, max_finished=3, now=100.0, chunk=2) == 7
    remaining = {entry.task_id for entry in journal.query(limit=100)}
    assert remaining == {"f7", "f8", "f9", "running"}
    assert journal.prune(max_age_seconds=None, max_finished=None, now=100.0) == 0
    assert journal.prune(max_age_seconds=None, max_finished=0, now=100.0) == 3
    assert {entry.task_id for entry in journal.query(limit=100)} == {"running"}


def test_prune_by_count_breaks_ties_in_creation_time_by_insertion_order(journal: Journal) -> None:
    journal.put(make_entry("older", finished=True, created_at=1.0))
    journal.commit()
    journal.put_many(make_entry(f"batch{i}", finished=True, created_at=5.0) for i in range(4))
    journal.commit()
    assert journal.prune(max_age_seconds=None, max_finished=2, now=100.0) == 3
    assert {entry.task_id for entry in journal.query(limit=100)} == {"batch2", "batch3"}


def test_statistics_snapshot(journal: Journal) -> None:
    journal.put_many([make_entry("a"), make_entry("b", finished=True)])
    journal.commit()
    journal.put(make_entry("c"))
    statistics = journal.statistics()
    assert isinstance(statistics, JournalStatistics)
    assert (statistics.entries, statistics.unfinished, statistics.pending) == (2, 1, 1)
    assert (statistics.commits, statistics.committed_entries) == (1, 2)
    assert statistics.file_bytes > 0


def test_closed_journal_says_how_to_recover(tmp_path: Path) -> None:
    journal = Journal.open(tmp_path)
    journal.put(make_entry("t1"))
    journal.close()
    journal.close()
    with pytest.raises(JournalError, match="is closed; open it again with Journal.open"):
        journal.get("t1")
    with Journal.open(tmp_path) as reopened:
        assert reopened.get("t1") is not None  # close() committed the buffer


def test_commit_from_worker_thread_while_putting(journal: Journal) -> None:
    stop = threading.Event()

    def commit_repeatedly() -> None:
        while not stop.is_set():
            journal.commit()

    worker = threading.Thread(target=commit_repeatedly)
    worker.start()
    try:
        for i in range(20_000):
            journal.put(make_entry(f"t{i}"))
    finally:
        stop.set()
        worker.join()
    journal.commit()
    assert journal.statistics().entries == 20_000
    assert journal.durable_sequence == journal.put_sequence


class HeldWrites:
    """Stands in for the writer connection and holds every commit inside its transaction."""

    def __init__(self, real: sqlite3.Connection) -> None:
        self.real = real
        self.entered = threading.Event()
        self.go = threading.Event()

    @property
    def in_transaction(self) -> bool:
        return self.real.in_transaction

    def execute(self, sql: str, *parameters: object) -> sqlite3.Cursor:
        return self.real.execute(sql, *parameters)

    def executemany(self, sql: str, rows: object) -> sqlite3.Cursor:
        self.entered.set()
        assert self.go.wait(10), "the test never let the commit go on"
        return self.real.executemany(sql, rows)

    def close(self) -> None:
        self.real.close()


def test_reads_during_a_commit_see_its_batch_without_waiting_for_it(journal: Journal) -> None:
    held = HeldWrites(journal._connection)
    journal._connection = held  # type: ignore[assignment]
    journal.put(make_entry("t1", pool="p", idempotency_key="k"))
    journal.put(make_entry("dead", finished=True, dead_letter=True))
    journal.put_pool("p", b"spec")
    journal.put_host("h", {"pool": "p"})
    committing = threading.Thread(target=journal.commit)
    committing.start()
    try:
        assert held.entered.wait(10)
        assert journal.pending_count == 0  # the batch left the buffer: it is in flight
        assert journal.get("t1").pool == "p"
        assert journal.find_idempotent("p", "k").task_id == "t1"
        assert [entry.task_id for entry in journal.unfinished()] == ["t1"]
        assert [entry.task_id for entry in journal.dead_letters()] == ["dead"]
        assert journal.pools() == {"p": b"spec"} and journal.hosts() == {"h": {"pool": "p"}}
    finally:
        held.go.set()
        committing.join()
    assert journal.statistics().entries == 2


# ---------------------------------------------------------------- opening errors


def test_random_bytes_file_is_rejected_not_recreated(tmp_path: Path) -> None:
    path = tmp_path / "journal.sqlite3"
    garbage = os.urandom(8192)
    path.write_bytes(garbage)
    with pytest.raises(JournalError, match="the file is corrupt or not a SQLite database") as caught:
        Journal.open(tmp_path)
    assert str(path) in str(caught.value)
    assert "journal.sqlite3-shm in" in str(caught.value) and "aside (the journal starts empty)" in str(caught.value)
    assert path.read_bytes() == garbage
    copy = pickle.loads(pickle.dumps(caught.value))
    assert (copy.reason, copy.path) == ("corrupt", str(path))


def test_foreign_sqlite_file_is_rejected(tmp_path: Path) -> None:
    with sqlite3.connect(tmp_path / "journal.sqlite3") as connection:
        connection.execute("CREATE TABLE users (name TEXT)")
    with pytest.raises(JournalError, match="is a SQLite database but not a hive-ray task journal"):
        Journal.open(tmp_path)


def test_newer_schema_version_is_rejected(tmp_path: Path) -> None:
    Journal.open(tmp_path).close()
    with sqlite3.connect(tmp_path / "journal.sqlite3") as connection:
        connection.execute("UPDATE meta SET value = '99' WHERE key = 'schema_version'")
    with pytest.raises(JournalError, match="has schema version '99', but this hive-ray reads"):
        Journal.open(tmp_path)


def test_directory_path_that_is_a_file_is_rejected(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("")
    with pytest.raises(JournalError, match="set HIVE_JOURNAL_DIR to a writable directory"):
        Journal.open(blocker / "journal")


def test_read_only_directory_is_rejected(tmp_path: Path) -> None:
    directory = tmp_path / "read-only"
    directory.mkdir()
    directory.chmod(0o500)
    try:
        try:
            (directory / "probe").write_text("")
        except PermissionError:
            pass
        else:
            pytest.skip("running with privileges that ignore directory permissions (root)")
        with pytest.raises(JournalError, match="cannot write the task journal directory") as caught:
            Journal.open(directory)
        assert "set HIVE_JOURNAL_DIR to a writable directory" in str(caught.value)
    finally:
        directory.chmod(0o700)


# ---------------------------------------------------------------- group commit


def test_group_commit_serves_many_waiters_with_few_commits(journal: Journal) -> None:
    async def main() -> None:
        committer = GroupCommitter(journal, interval_seconds=0.005)

        async def submit(index: int) -> None:
            committer.put(make_entry(f"t{index}"))
            sequence = journal.put_sequence
            await committer.durable()
            assert journal.durable_sequence >= sequence

        await asyncio.gather(*(submit(index) for index in range(1_000)))
        await committer.close()

    asyncio.run(main())
    statistics = journal.statistics()
    assert statistics.entries == 1_000
    assert 1 <= statistics.commits < 1_000 / 10


def _file_pages(path: Path) -> int:
    return path.stat().st_size // 4096


def test_background_checkpoints_keep_commits_from_copying_the_log(tmp_path: Path) -> None:
    body = b"x" * 3000  # about one 4 KiB page per entry
    with Journal.open(tmp_path, background_checkpoints=True) as journal:
        for batch in range(3):
            journal.put_many(make_entry(f"t{batch}-{i}", body=body) for i in range(600))
            journal.commit()
        wal = Path(f"{journal.path}-wal")
        # Past SQLite's 1,000-page autocheckpoint, yet the data is still only in the log.
        assert _file_pages(wal) > 1_500 and _file_pages(journal.path) < 100
        assert journal.checkpoint() == 0  # everything copied
        assert _file_pages(journal.path) > 1_500
        assert journal.statistics().checkpoints == 1 and journal.statistics().entries == 1_800
    with Journal.open(tmp_path) as reopened:
        assert reopened.statistics().entries == 1_800


def test_default_journal_checkpoints_inside_commits(tmp_path: Path) -> None:
    with Journal.open(tmp_path) as journal:
        for batch in range(3):
            journal.put_many(make_entry(f"t{batch}-{i}", body=b"x" * 3000) for i in range(600))
            journal.commit()
        assert _file_pages(journal.path) > 1_000


def test_group_committer_checkpoints_in_the_background(tmp_path: Path) -> None:
    with Journal.open(tmp_path, background_checkpoints=True) as journal:
        async def main() -> None:
            committer = GroupCommitter(journal, interval_seconds=0.0, checkpoint_seconds=0.001)
            for batch in range(500):  # until two checkpoints ran (a loaded machine is slow)
                committer.put_many(make_entry(f"t{batch}-{i}") for i in range(100))
                await committer.durable()
                await asyncio.sleep(0.002)  # past checkpoint_seconds
                if journal.statistics().checkpoints >= 2:
                    break
            await committer.close()  # waits for a checkpoint under way

        asyncio.run(main())
        assert journal.statistics().checkpoints >= 2


def test_checkpoint_interval_must_be_positive(journal: Journal) -> None:
    with pytest.raises(ValueError, match="checkpoint_seconds must be > 0 or None, got 0"):
        GroupCommitter(journal, checkpoint_seconds=0)


def test_durable_sees_committed_data_from_another_connection(journal: Journal) -> None:
    async def main() -> None:
        committer = GroupCommitter(journal)
        committer.put(make_entry("t1"))
        await committer.durable()
        with sqlite3.connect(journal.path) as other:
            assert other.execute("SELECT COUNT(*) FROM tasks").fetchone() == (1,)
        await committer.durable()  # nothing pending: returns at once
        await committer.close()

    asyncio.run(main())


def test_full_batch_commits_without_waiting_for_the_interval(journal: Journal) -> None:
    async def main() -> None:
        committer = GroupCommitter(journal, interval_seconds=60.0, max_batch=100)
        committer.put(make_entry("first"))
        await asyncio.wait_for(committer.durable(), 5)  # the first commit is immediate
        committer.put_many(make_entry(f"t{i}") for i in range(150))
        await asyncio.wait_for(committer.durable(), 5)
        await committer.close()

    asyncio.run(main())
    assert journal.statistics().entries == 151


class FailFirstBegin:
    """Stands in for the journal's connection and fails the first transaction."""

    def __init__(self, real: sqlite3.Connection) -> None:
        self.real = real
        self.failures_left = 1

    @property
    def in_transaction(self) -> bool:
        return self.real.in_transaction

    def execute(self, sql: str, *parameters: object) -> sqlite3.Cursor:
        if sql == "BEGIN IMMEDIATE" and self.failures_left:
            self.failures_left -= 1
            raise sqlite3.OperationalError("disk I/O error (simulated)")
        return self.real.execute(sql, *parameters)

    def executemany(self, sql: str, rows: object) -> sqlite3.Cursor:
        return self.real.executemany(sql, rows)

    def close(self) -> None:
        self.real.close()


def test_failed_commit_keeps_entries_buffered(journal: Journal) -> None:
    journal._connection = FailFirstBegin(journal._connection)  # type: ignore[assignment]
    journal.put_many([make_entry("t1"), make_entry("t2")])
    with pytest.raises(JournalError, match="committing 2 writes to the task journal") as caught:
        journal.commit()
    assert "The other writes are retried by the next commit" in str(caught.value)
    journal.put(make_entry("t2", state="running"))  # newer than the failed batch's copy
    assert journal.pending_count == 2
    assert journal.durable_sequence == 0
    assert journal.commit() == 2
    assert journal.get("t2").state == "running"
    assert journal.durable_sequence == journal.put_sequence


def test_commit_error_reaches_every_waiter_and_entries_are_retried(journal: Journal) -> None:
    journal._connection = FailFirstBegin(journal._connection)  # type: ignore[assignment]

    async def main() -> list[object]:
        committer = GroupCommitter(journal, interval_seconds=0.001)

        async def submit(index: int) -> None:
            committer.put(make_entry(f"t{index}"))
            await committer.durable()

        results = await asyncio.gather(*(submit(i) for i in range(50)), return_exceptions=True)
        committer.put(make_entry("after"))
        await committer.durable()
        await committer.close()
        return results

    results = asyncio.run(main())
    assert all(isinstance(result, JournalError) for result in results)
    assert len({id(result) for result in results}) == 1  # one batch, one error
    assert "SQLite refused (disk I/O error (simulated)); check free disk space" in str(results[0])
    assert journal.statistics().entries == 51  # the failed batch was retried


def test_put_alone_gets_committed_in_the_background(journal: Journal) -> None:
    async def main() -> None:
        committer = GroupCommitter(journal, interval_seconds=0.001)
        committer.put(make_entry("t1"))
        for _ in range(500):
            if journal.pending_count == 0 and journal.statistics().entries == 1:
                break
            await asyncio.sleep(0.01)
        assert journal.statistics().entries == 1
        await committer.close()

    asyncio.run(main())


def test_durable_after_close_is_an_error(journal: Journal) -> None:
    async def main() -> None:
        committer = GroupCommitter(journal)
        committer.put(make_entry("t1"))
        await committer.close()
        assert journal.get("t1") is not None and journal.pending_count == 0
        with pytest.raises(JournalError, match="journal.sqlite3' is closed; open the journal again"):
            await committer.durable()

    asyncio.run(main())


# ---------------------------------------------------------------- crash safety

_CRASHING_WRITER = textwrap.dedent(
    """
    import sys
    from hive_ray._journal import Journal, JournalEntry

    journal = Journal.open(sys.argv[1])
    body = b"x" * 200
    total = 0
    while True:
        for _ in range(200):
            journal.put(JournalEntry(
                task_id=f"t{total}", pool="echo", state="queued", idempotency_key=None,
                created_at=float(total), updated_at=float(total), finished=False, body=body,
            ))
            total += 1
        journal.commit()
        print(total, flush=True)
    """
)


def test_sigkill_during_commits_leaves_a_consistent_journal(tmp_path: Path) -> None:
    reported_before_kill = 5_000
    environment = {**os.environ, "PYTHONPATH": str(REPOSITORY_ROOT)}
    child = subprocess.Popen(
        [sys.executable, "-c", _CRASHING_WRITER, str(tmp_path)],
        stdout=subprocess.PIPE,
        text=True,
        env=environment,
    )
    committed = 0
    try:
        assert child.stdout is not None
        for line in child.stdout:
            committed = int(line)
            if committed >= reported_before_kill:
                break
        os.kill(child.pid, signal.SIGKILL)
    finally:
        child.kill()
        child.wait(timeout=10)
        if child.stdout is not None:
            child.stdout.close()
    assert child.returncode == -signal.SIGKILL
    assert committed >= reported_before_kill
    with Journal.open(tmp_path) as journal:  # runs PRAGMA quick_check
        entries = journal.statistics().entries
        assert entries >= committed
        assert entries % 200 == 0  # whole batches only: each commit is atomic
        assert journal.get(f"t{committed - 1}") is not None
