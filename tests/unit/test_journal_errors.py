"""Journal failures: each is a JournalError that says what to do, nobody waits forever,
a failed accept is never written, and commits resume once the cause is gone (no Ray)."""

from __future__ import annotations

import asyncio
import errno
import json
import os
import pickle
import sqlite3
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest

from hive_ray._errors import JournalError
from hive_ray._group_commit import GroupCommitter
from hive_ray._journal import Journal
from hive_ray._journal_errors import reason_of
from tests.unit.journal_helpers import (
    PAGE_SIZED_BODY,
    FailingConnection,
    full_disk,
    make_entry,
    on_writer,
    real_sqlite_error,
)

REPOSITORY_ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def journal(tmp_path: Path):
    opened = Journal.open(tmp_path / "journal", lock_timeout_seconds=0)
    yield opened
    opened.close()


def _committed_ids(journal: Journal) -> set[str]:
    return {entry.task_id for entry in journal.query(limit=10_000)}


# ---------------------------------------------------------------- a full disk


def test_a_full_disk_fails_the_commit_with_the_fix_and_commits_resume_once_there_is_room(
        journal: Journal) -> None:
    journal.put(make_entry("before"))
    journal.commit()
    with full_disk(journal):
        journal.put_many(make_entry(f"t{i}", body=PAGE_SIZED_BODY) for i in range(20))
        with pytest.raises(JournalError) as caught:
            journal.commit()
        with pytest.raises(JournalError):
            journal.commit()  # still no room: the retried writes fail again
    error = caught.value
    assert error.reason == "full" and error.path == str(journal.path)
    message = str(error)
    assert message.startswith(f"committing 20 writes to the task journal '{journal.path}' failed: "
                              f"the disk is full")
    assert "free space on the disk holding" in message and "HIVE_JOURNAL_DIR" in message
    assert "commits resume by themselves once there is room" in message
    assert pickle.loads(pickle.dumps(error)).reason == "full"
    assert _committed_ids(journal) == {"before"}  # nothing partial
    assert journal.commit() == 20  # room again: the same writes go through
    assert len(_committed_ids(journal)) == 21
    assert journal.statistics().failed_commits == 2


def test_a_failed_accept_is_dropped_while_other_writes_are_retried(tmp_path: Path) -> None:
    with Journal.open(tmp_path) as journal:
        journal.put(make_entry("old", state="queued"))
        journal.commit()
        journal.put(make_entry("old", state="succeeded", finished=True))  # an ending: retried
        journal.put_many([make_entry(f"new{i}", idempotency_key=f"k{i}", body=PAGE_SIZED_BODY)
                          for i in range(10)], accept=True)
        journal.put_pool("p", b"spec")
        journal.put_host("h", {"pool": "p"})
        with full_disk(journal), pytest.raises(JournalError) as caught:
            journal.commit()
        assert "10 new task(s) in this commit were not accepted and nothing of them was written" \
            in str(caught.value)
        assert journal.find_idempotent("echo", "k1") is None and journal.get("new1") is None
        assert journal.commit() == 3  # the ending, the pool and the host
    with Journal.open(tmp_path) as reopened:
        assert reopened.unfinished() == []  # recovery will never run the failed accepts
        assert reopened.get("old").finished
        assert reopened.pools() == {"p": b"spec"} and reopened.hosts() == {"h": {"pool": "p"}}


def test_every_waiter_of_a_failed_commit_gets_the_error_and_the_committer_carries_on(
        journal: Journal) -> None:
    async def main() -> None:
        committer = GroupCommitter(journal, interval_seconds=0.0, failure_backoff_seconds=0.0)

        async def accept(index: int) -> None:
            committer.put(make_entry(f"t{index}", body=PAGE_SIZED_BODY), accept=True)
            await committer.durable()

        with full_disk(journal):
            results = await asyncio.gather(*(accept(i) for i in range(50)), return_exceptions=True)
        assert all(isinstance(result, JournalError) and result.reason == "full" for result in results)
        assert not committer._task.done()  # it recovered instead of dying
        await asyncio.wait_for(accept(99), 10)  # room again: a later accept commits
        await committer.close()

    asyncio.run(main())
    assert _committed_ids(journal) == {"t99"}
    assert journal.statistics().failed_commits >= 1


def test_a_waiter_whose_writes_joined_a_batch_after_the_commit_started_gets_its_failure(
        journal: Journal) -> None:
    # Writes put while the commit thread is starting end up in its batch; their waiter
    # must get that batch's error, not the success of a later commit (its accept was dropped).
    go = threading.Event()
    real_commit = journal.commit

    def held_commit() -> int:
        go.wait(10)
        return real_commit()

    journal.commit = held_commit  # type: ignore[method-assign]

    async def main() -> None:
        committer = GroupCommitter(journal, interval_seconds=0.0, failure_backoff_seconds=0.0)
        committer.put_many((make_entry(f"first{i}", body=PAGE_SIZED_BODY) for i in range(5)),
                           accept=True)
        first = asyncio.ensure_future(committer.durable())
        await asyncio.sleep(0)  # the committer takes the batch to its (held) thread
        await asyncio.sleep(0)
        committer.put_many((make_entry(f"joined{i}", body=PAGE_SIZED_BODY) for i in range(5)),
                           accept=True)
        joined = asyncio.ensure_future(committer.durable())
        await asyncio.sleep(0)
        with full_disk(journal):
            go.set()
            results = await asyncio.gather(first, joined, return_exceptions=True)
        assert all(isinstance(result, JournalError) for result in results), results
        await committer.close()

    asyncio.run(main())
    assert _committed_ids(journal) == set()


def test_a_committer_that_stopped_fails_its_waiters_and_the_next_durable_starts_it_again(
        journal: Journal) -> None:
    async def main() -> None:
        committer = GroupCommitter(journal, interval_seconds=60.0)
        committer.put(make_entry("a"))
        await asyncio.wait_for(committer.durable(), 10)  # the first commit is immediate
        committer.put(make_entry("b"))
        waiter = asyncio.ensure_future(committer.durable())
        await asyncio.sleep(0)  # the committer now waits out its 60 s interval
        committer._task.cancel()  # as when something kills it
        with pytest.raises(JournalError, match="stopped .*the next durable\\(\\) starts it again"):
            await asyncio.wait_for(waiter, 10)
        await asyncio.wait_for(committer.durable(), 10)
        await committer.close()

    asyncio.run(main())
    assert _committed_ids(journal) == {"a", "b"}


# ---------------------------------------------------------------- other causes


def test_a_read_only_journal_says_to_fix_ownership(journal: Journal) -> None:
    on_writer(journal, "PRAGMA query_only=1")  # SQLite's SQLITE_READONLY, as on a read-only file
    journal.put(make_entry("t1"))
    with pytest.raises(JournalError) as caught:
        journal.commit()
    assert caught.value.reason == "read_only"
    assert f"owned and writable by the user running the orchestrator (uid {os.getuid()})" in str(caught.value)
    on_writer(journal, "PRAGMA query_only=0")
    assert journal.commit() == 1


def test_a_journal_locked_by_another_connection_is_reported_as_locked(journal: Journal) -> None:
    on_writer(journal, "PRAGMA busy_timeout=0")
    other = sqlite3.connect(journal.path, isolation_level=None)
    other.execute("BEGIN EXCLUSIVE")
    try:
        journal.put(make_entry("t1"))
        with pytest.raises(JournalError) as caught:
            journal.commit()
        assert caught.value.reason == "locked"
        assert "give each orchestrator its own journal_dir (HIVE_JOURNAL_DIR)" in str(caught.value)
    finally:
        other.execute("ROLLBACK")
        other.close()
    assert journal.commit() == 1


def test_a_corrupt_file_is_refused_with_where_it_is_and_how_to_start_fresh(tmp_path: Path) -> None:
    with Journal.open(tmp_path) as journal:
        journal.put_many(make_entry(f"t{i}", body=PAGE_SIZED_BODY) for i in range(200))
        journal.commit()
    path = tmp_path / "journal.sqlite3"
    with path.open("r+b") as file:  # overwrite pages in the middle of the table
        file.seek(4096 * 50)
        file.write(bytes(range(256)) * 16 * 20)
    # Opening does not read the whole file (recovery cannot wait for that); the check does.
    with Journal.open(tmp_path) as journal:
        with pytest.raises(JournalError) as read:
            journal.query(limit=1000)  # a read that meets the damage says so too
        assert read.value.reason == "corrupt"
        with pytest.raises(JournalError) as caught:
            journal.check_integrity()
    assert caught.value.reason == "corrupt"
    message = str(caught.value)
    assert f"the task journal '{path}'" in message and "corrupt" in message
    assert "move journal.sqlite3, journal.sqlite3-wal and journal.sqlite3-shm" in message
    assert "restore them from a backup" in message


_HOLDER = textwrap.dedent(
    """
    import sys
    from hive_ray._journal import Journal

    journal = Journal.open(sys.argv[1])
    print("ready", flush=True)
    sys.stdin.read()  # until the test closes our stdin
    journal.close()
    """
)


def test_a_journal_open_in_another_process_is_refused_with_its_pid(tmp_path: Path) -> None:
    child = subprocess.Popen([sys.executable, "-c", _HOLDER, str(tmp_path)], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, text=True,
                             env={**os.environ, "PYTHONPATH": str(REPOSITORY_ROOT)})
    try:
        assert child.stdout.readline().strip() == "ready"
        with pytest.raises(JournalError) as caught:
            Journal.open(tmp_path, lock_timeout_seconds=0)
        assert caught.value.reason == "locked"
        assert f"is in use by another process (pid {child.pid}" in str(caught.value)
        assert "another orchestrator uses the same journal_dir" in str(caught.value)
    finally:
        child.stdin.close()
        child.wait(timeout=30)
        child.stdout.close()
    with Journal.open(tmp_path, lock_timeout_seconds=0):  # the lock went with its process
        pass


_FILE_SIZE_LIMITED_WRITER = textwrap.dedent(
    """
    import json, resource, signal, sys
    from hive_ray._errors import JournalError
    from hive_ray._journal import Journal, JournalEntry

    journal = Journal.open(sys.argv[1])
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # writes past the limit fail with EFBIG
    resource.setrlimit(resource.RLIMIT_FSIZE, (300_000, resource.RLIM_INFINITY))
    report = {}
    for batch in range(1000):
        journal.put_many([JournalEntry(task_id=f"t{batch}-{i}", pool="p", state="queued",
                                       idempotency_key=None, created_at=0.0, updated_at=0.0,
                                       finished=False, body=b"x" * 3000) for i in range(10)],
                         accept=True)
        try:
            journal.commit()
        except JournalError as error:
            report.update(batch=batch, reason=error.reason, message=str(error))
            break
    resource.setrlimit(resource.RLIMIT_FSIZE, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
    journal.put(JournalEntry(task_id="after", pool="p", state="queued", idempotency_key=None,
                             created_at=0.0, updated_at=0.0, finished=False, body=b"x" * 3000))
    report["after"] = journal.commit()
    report["entries"] = journal.statistics().entries
    journal.close()
    print(json.dumps(report))
    """
)


def test_a_file_size_limit_fails_a_commit_cleanly_and_the_next_succeeds(tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, "-c", _FILE_SIZE_LIMITED_WRITER, str(tmp_path)],
                          capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(REPOSITORY_ROOT)})
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["batch"] > 0 and report["reason"] == "io"
    assert "check the disk holding" in report["message"]
    assert "10 new task(s) in this commit were not accepted" in report["message"]
    assert report["after"] == 1
    assert report["entries"] == report["batch"] * 10 + 1  # the failed batch left nothing


# ---------------------------------------------------------------- no raw sqlite3 error escapes


def test_no_public_method_lets_a_raw_sqlite_error_escape(journal: Journal) -> None:
    journal.put(make_entry("t1"))
    journal.commit()
    journal.put(make_entry("t2"))
    journal.statistics()  # the side connection exists
    journal.get("t0")  # and the reader's
    error = real_sqlite_error()
    real = (journal._connection, journal._reader, journal._side)
    journal._connection = journal._reader = journal._side = FailingConnection(error)
    calls = {
        "commit": journal.commit,
        "get": lambda: journal.get("t1"),
        "find_idempotent": lambda: journal.find_idempotent("echo", "k"),
        "unfinished": journal.unfinished,
        "dead_letters": journal.dead_letters,
        "query": journal.query,
        "pools": journal.pools,
        "hosts": journal.hosts,
        "prune": lambda: journal.prune(max_age_seconds=0, max_finished=None, now=1e12),
        "prune by count": lambda: journal.prune(max_age_seconds=None, max_finished=1, now=0),
        "statistics": journal.statistics,
        "checkpoint": journal.checkpoint,
    }
    try:
        for name, call in calls.items():
            with pytest.raises(JournalError) as caught:
                call()
            assert caught.value.reason == "read_only", name
            assert str(journal.path) in str(caught.value), name
    finally:
        journal._connection, journal._reader, journal._side = real
    journal._connection = FailingConnection(error)
    try:
        with pytest.raises(JournalError):
            journal.close()  # the final commit fails; the files are closed anyway
    finally:
        real[0].close()
    assert journal._reader is None and journal._side is None


def test_a_closed_journal_refuses_every_call_with_the_same_clear_error(tmp_path: Path) -> None:
    journal = Journal.open(tmp_path)
    journal.close()
    for call in (lambda: journal.put(make_entry("t")), lambda: journal.put_pool("p", b""),
                 lambda: journal.put_host("h", {}), lambda: journal.forget_dead_letter("t"),
                 journal.commit, lambda: journal.get("t"), journal.unfinished, journal.pools,
                 journal.statistics, journal.checkpoint):
        with pytest.raises(JournalError, match="is closed; open it again with Journal.open") as caught:
            call()
        assert caught.value.reason == "closed"


def test_os_errors_are_classified_by_what_an_operator_must_do() -> None:
    assert reason_of(OSError(errno.ENOSPC, "No space left on device")) == "full"
    assert reason_of(OSError(errno.EDQUOT, "Disk quota exceeded")) == "full"
    assert reason_of(PermissionError(errno.EACCES, "Permission denied")) == "read_only"
    assert reason_of(OSError(errno.EROFS, "Read-only file system")) == "read_only"
    assert reason_of(OSError(errno.EIO, "Input/output error")) == "io"
    assert reason_of(real_sqlite_error()) == "read_only"
    assert reason_of(ValueError("no")) == "other"
    connection = sqlite3.connect(":memory:")
    with pytest.raises((sqlite3.ProgrammingError, sqlite3.InterfaceError)) as misuse:  # a bug, not the disk
        connection.execute("SELECT ?", (object(),))
    connection.close()
    assert reason_of(misuse.value) == "internal"
