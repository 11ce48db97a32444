"""What a restarted orchestrator reads back: dead letters, idempotency past memory, hosts,
pools; commit before dispatch through TaskJournal; the schema, file modes and durability (no Ray)."""

from __future__ import annotations

import asyncio
import sqlite3
import stat
from pathlib import Path

import pytest
from pydantic import ValidationError

from hive_ray._errors import JournalError
from hive_ray._journal import Journal
from hive_ray._runtime._durability import TaskJournal
from hive_ray._settings import Settings
from hive_ray._task import TaskEntry, TaskState
from tests.unit.journal_helpers import PAGE_SIZED_BODY, full_disk, make_entry


def task(task_id: str, *, pool: str = "p", key: str | None = None, created_at: float = 1.0,
         payload: object = "x") -> TaskEntry:
    return TaskEntry(task_id=task_id, pool=pool, agent_type="echo", payload=payload,
                     idempotency_key=key, created_at=created_at)


def end(entry: TaskEntry, state: TaskState, *, result: object = None,
        error: dict | None = None) -> TaskEntry:
    entry.state, entry.result, entry.error = state, result, error
    return entry


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


# ---------------------------------------------------------------- dead letters


def test_dead_letters_newest_first_per_pool_and_across_reopening(tmp_path: Path) -> None:
    with Journal.open(tmp_path) as journal:
        journal.put_many([
            make_entry("a", pool="p", finished=True, dead_letter=True, updated_at=1.0),
            make_entry("b", pool="q", finished=True, dead_letter=True, updated_at=3.0),
            make_entry("c", pool="p", finished=True, dead_letter=True, updated_at=2.0),
            make_entry("ok", pool="p", finished=True, updated_at=4.0),
        ])
        assert [e.task_id for e in journal.dead_letters()] == ["b", "c", "a"]  # buffered: seen
        journal.commit()
        journal.put(make_entry("d", pool="p", finished=True, dead_letter=True, updated_at=5.0))
        assert [e.task_id for e in journal.dead_letters(limit=2)] == ["d", "b"]
        assert [e.task_id for e in journal.dead_letters(pool="p")] == ["d", "c", "a"]
    with Journal.open(tmp_path) as reopened:
        assert [e.task_id for e in reopened.dead_letters()] == ["d", "b", "c", "a"]
        assert reopened.statistics().dead_letters == 4


def test_forgetting_a_dead_letter_keeps_the_task_and_orders_with_later_writes(journal_dir: Path) -> None:
    with Journal.open(journal_dir) as journal:
        journal.put_many(make_entry(t, finished=True, dead_letter=True, updated_at=1.0)
                         for t in ("committed", "flag-again"))
        journal.commit()
        journal.put(make_entry("buffered", finished=True, dead_letter=True))
        for task_id in ("committed", "buffered", "flag-again"):
            journal.forget_dead_letter(task_id)
        assert journal.dead_letters() == []  # before the commit, too
        journal.put(make_entry("flag-again", finished=True, dead_letter=True, updated_at=2.0))
        journal.commit()
        assert [e.task_id for e in journal.dead_letters()] == ["flag-again"]
        assert journal.get("committed") is not None and journal.get("buffered") is not None


def test_a_forget_whose_commit_failed_is_retried_in_order(journal_dir: Path) -> None:
    with Journal.open(journal_dir) as journal:
        journal.put(make_entry("t", finished=True, dead_letter=True, body=PAGE_SIZED_BODY))
        journal.commit()
        journal.forget_dead_letter("t")
        journal.put_many(make_entry(f"fill{i}", body=PAGE_SIZED_BODY) for i in range(10))
        with full_disk(journal), pytest.raises(JournalError):
            journal.commit()
        assert journal.dead_letters() == []
        journal.commit()
        assert journal.dead_letters() == []
        assert journal.get("t").dead_letter is False


def test_dead_letters_leave_with_the_retention_of_finished_tasks(journal_dir: Path) -> None:
    with Journal.open(journal_dir) as journal:
        journal.put_many(make_entry(f"d{i}", finished=True, dead_letter=True, created_at=float(i))
                         for i in range(10))
        journal.commit()
        assert journal.prune(max_age_seconds=None, max_finished=3, now=100.0) == 7
        assert {e.task_id for e in journal.dead_letters()} == {"d7", "d8", "d9"}


# ---------------------------------------------------------------- hosts and pools


def test_hosts_and_pools_go_through_the_group_commit_and_survive_reopening(tmp_path: Path) -> None:
    record = {"pool": "p", "actor_name": "hive-host-p-0", "namespace": "hive",
              "agent_ids": ["p-0", "p-1"], "node_id": "abc"}
    with Journal.open(tmp_path) as journal:
        journal.put_host("host-p-0", record)
        journal.put_host("host-p-1", {**record, "actor_name": "hive-host-p-1"})
        journal.put_pool("p", b"spec")
        assert journal.hosts()["host-p-0"] == record  # buffered, already visible
        assert journal.statistics().hosts == 0
        journal.commit()
        journal.delete_host("host-p-1")
        journal.put_host("host-p-0", {**record, "node_id": "def"})
        assert list(journal.hosts()) == ["host-p-0"]
        journal.commit()
        assert journal.statistics().hosts == 1
        with pytest.raises(TypeError, match="the record of host 'bad' must be JSON-serializable"):
            journal.put_host("bad", {"when": object()})
    with Journal.open(tmp_path) as reopened:
        assert reopened.hosts() == {"host-p-0": {**record, "node_id": "def"}}
        assert reopened.pools() == {"p": b"spec"}


# ---------------------------------------------------------------- TaskJournal: the orchestrator's API


def test_accept_many_commits_before_returning_and_concurrent_accepts_share_commits(tmp_path: Path) -> None:
    async def main() -> None:
        journal = TaskJournal.open(tmp_path)
        await asyncio.gather(*(journal.accept_many([task(f"t{i}-{j}") for j in range(3)])
                               for i in range(200)))
        with sqlite3.connect(journal.path) as other:  # on disk, seen by another connection
            assert other.execute("SELECT COUNT(*) FROM tasks").fetchone() == (600,)
        assert journal.statistics()["commits"] < 100
        await journal.accept_many([])
        # The call itself buffers (a scheduling delay before the await loses nothing) ...
        pending = journal.accept_many([task("early", key="k-early")])
        assert journal.find_idempotent("p", "k-early").task_id == "early"
        await pending
        # ... and refuses, at once and buffering nothing, a payload that does not pickle.
        with pytest.raises(JournalError, match="task 'bad' cannot be written to the task journal") as caught:
            journal.accept_many([task("fine"), task("bad", payload=Unpicklable())])
        assert caught.value.reason == "unencodable" and journal.get("fine") is None
        await journal.close()

    asyncio.run(main())


class Unpicklable:
    def __reduce__(self) -> tuple:
        raise RuntimeError("this object stays in memory")


def test_a_failed_accept_raises_and_recovery_never_runs_it(tmp_path: Path) -> None:
    async def main() -> None:
        journal = TaskJournal(Journal.open(tmp_path, background_checkpoints=True),
                              failure_backoff_seconds=0.0)
        running = task("running")
        await journal.accept_many([running])
        running.state = TaskState.RUNNING
        journal.record(running)
        with full_disk(journal._journal), pytest.raises(JournalError) as caught:
            await journal.accept_many([task(f"new{i}", key=f"k{i}", payload=PAGE_SIZED_BODY)
                                       for i in range(10)])
        assert caught.value.reason == "full"
        assert journal.find_idempotent("p", "k1") is None  # a client's retry runs it afresh
        end(running, TaskState.SUCCEEDED, result=42)
        journal.record(running)
        await journal.durable()
        await journal.close()

    asyncio.run(main())
    with TaskJournal(Journal.open(tmp_path))._journal as reopened:
        assert reopened.unfinished() == []
        assert {entry.task_id for entry in reopened.query(limit=100)} == {"running"}


def test_find_idempotent_answers_with_the_whole_task_past_memory(tmp_path: Path) -> None:
    async def main() -> None:
        journal = TaskJournal.open(tmp_path)
        done, waiting = task("done", key="k-done"), task("waiting", key="k-wait")
        await journal.accept_many([done, waiting])
        journal.record(end(done, TaskState.FAILED, error={"type": "ValueError", "message": "no"}))
        found = journal.find_idempotent("p", "k-done")  # recorded this turn, not yet committed
        assert found.state == TaskState.FAILED and found.error["type"] == "ValueError"
        await journal.close()

    asyncio.run(main())

    async def after_restart() -> None:
        journal = TaskJournal.open(tmp_path)
        ended = journal.find_idempotent("p", "k-done")
        assert (ended.task_id, ended.state, ended.error) == (
            "done", TaskState.FAILED, {"type": "ValueError", "message": "no"})
        assert journal.find_idempotent("p", "k-wait").state == TaskState.QUEUED
        assert journal.find_idempotent("other-pool", "k-done") is None
        await journal.close()

    asyncio.run(after_restart())


def test_dead_letters_hosts_and_pools_come_back_after_a_restart(tmp_path: Path) -> None:
    async def main() -> None:
        journal = TaskJournal.open(tmp_path)
        first, second, fine = task("first"), task("second", pool="q"), task("fine")
        await journal.accept_many([first, second, fine])
        journal.record(end(first, TaskState.FAILED, error={"type": "Crash"}), dead_letter=True)
        journal.record(end(fine, TaskState.SUCCEEDED, result=1))
        await journal.durable()  # the later ending is written later
        journal.record(end(second, TaskState.FAILED, error={"type": "Crash"}), dead_letter=True)
        # A resubmitted task inherits its original's metadata; only the explicit flag counts.
        again = task("again")
        again.metadata = {"dead_letter": "true", "resubmitted_from": "first"}
        await journal.accept_many([again])
        journal.record(end(again, TaskState.SUCCEEDED, result=2))
        assert [e.task_id for e in journal.dead_letters()] == ["second", "first"]
        journal.record_pool("p", {"spec": {"name": "p"}, "reference": "m:C"})
        journal.record_host("host-p-0", {"pool": "p", "agent_ids": ["p-0"]})
        await journal.durable()
        await journal.close()

    asyncio.run(main())

    async def after_restart() -> None:
        journal = TaskJournal.open(tmp_path)
        letters = journal.dead_letters(limit=10)
        assert [(e.task_id, e.state, e.error) for e in letters] == [
            ("second", TaskState.FAILED, {"type": "Crash"}), ("first", TaskState.FAILED, {"type": "Crash"})]
        assert [e.task_id for e in journal.dead_letters(pool="q")] == ["second"]
        journal.forget_dead_letter("first")  # resubmitted
        assert [e.task_id for e in journal.dead_letters()] == ["second"]
        assert journal.pools() == [{"spec": {"name": "p"}, "reference": "m:C"}]
        assert journal.hosts() == {"host-p-0": {"pool": "p", "agent_ids": ["p-0"]}}
        journal.forget_host("host-p-0")
        await journal.close()

    asyncio.run(after_restart())
    with Journal.open(tmp_path) as journal:
        assert [e.task_id for e in journal.dead_letters()] == ["second"] and journal.hosts() == {}


def test_an_undecodable_task_is_named_and_skipped_by_recovery_but_kept(tmp_path: Path) -> None:
    with Journal.open(tmp_path) as journal:
        journal.put(make_entry("garbled", pool="p", body=b"not a pickle"))
        journal.commit()

    async def main() -> None:
        journal = TaskJournal.open(tmp_path)
        await journal.accept_many([task("fine")])
        assert [entry.task_id for entry in journal.unfinished()] == ["fine"]
        with pytest.raises(JournalError, match="task 'garbled' of pool 'p' in the task journal") as caught:
            journal.get("garbled")
        assert caught.value.reason == "unreadable" and "DELETE FROM tasks WHERE task_id" in str(caught.value)
        assert journal.statistics()["unfinished"] == 2  # still there for a later restart
        await journal.close()

    asyncio.run(main())


# ---------------------------------------------------------------- schema, files, durability


def test_a_version_1_journal_is_migrated_in_place(tmp_path: Path) -> None:
    path = tmp_path / "journal.sqlite3"
    with sqlite3.connect(path) as old:  # as hive-ray wrote it before dead letters and hosts
        old.executescript("""
            CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
            CREATE TABLE tasks (task_id TEXT PRIMARY KEY, pool TEXT NOT NULL, state TEXT NOT NULL,
                idempotency_key TEXT, created_at REAL NOT NULL, updated_at REAL NOT NULL,
                finished INTEGER NOT NULL, body BLOB NOT NULL);
            CREATE INDEX tasks_by_finished_created ON tasks (finished, created_at);
            CREATE INDEX tasks_by_pool_idempotency ON tasks (pool, idempotency_key);
            CREATE TABLE pools (name TEXT PRIMARY KEY, spec BLOB NOT NULL, updated_at REAL NOT NULL);
            INSERT INTO meta VALUES ('application', 'hive-ray-journal'), ('schema_version', '1');
            INSERT INTO tasks VALUES ('old', 'p', 'queued', 'k', 1.0, 1.0, 0, x'00');
        """)
    with Journal.open(tmp_path) as journal:
        assert journal.unfinished() == [make_entry("old", pool="p", idempotency_key="k",
                                                   created_at=1.0, body=b"\x00")]
        journal.put_host("h", {"pool": "p"})
        journal.commit()
    with sqlite3.connect(path) as migrated:
        assert migrated.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone() == ("3",)


@pytest.mark.parametrize("sql", [
    "SELECT * FROM tasks WHERE finished = 0 ORDER BY created_at, task_id",
    "SELECT * FROM tasks WHERE dead_letter = 1 ORDER BY updated_at DESC, rowid DESC LIMIT 10",
    "SELECT * FROM tasks WHERE dead_letter = 1 AND pool = 'p' ORDER BY updated_at DESC, rowid DESC LIMIT 10",
    "SELECT * FROM tasks WHERE pool = 'p' AND idempotency_key = 'k' ORDER BY created_at DESC LIMIT 1",
])
def test_recovery_queries_read_an_index_not_the_whole_table(journal_dir: Path, sql: str) -> None:
    with Journal.open(journal_dir) as journal:
        plan = [row[3] for row in journal._read(f"EXPLAIN QUERY PLAN {sql}")]
    # SEARCH: a range of an index; SCAN ... USING INDEX: all of a partial index (dead letters only).
    assert any("USING INDEX" in step for step in plan) and "SCAN tasks" not in plan, plan


def test_files_are_0600_in_a_0700_directory(tmp_path: Path) -> None:
    directory = tmp_path / "new" / "journal"
    with Journal.open(directory) as journal:
        journal.put(make_entry("t"))
        journal.commit()
        files = [journal.path, Path(f"{journal.path}-wal"), Path(f"{journal.path}-shm"),
                 Path(f"{journal.path}.lock")]
        assert [mode(path) for path in files] == [0o600] * 4
    assert mode(directory) == 0o700


def test_a_loose_directory_is_tightened_and_a_shared_one_refused(tmp_path: Path) -> None:
    own = tmp_path / "own"
    Journal.open(own).close()
    own.chmod(0o755)  # as an older hive-ray left it
    (own / "journal.sqlite3").chmod(0o644)
    (own / "notes.txt").write_text("the owner's")
    with Journal.open(own):
        assert mode(own) == 0o700 and mode(own / "journal.sqlite3") == 0o600
    assert (own / "notes.txt").read_text() == "the owner's"
    shared = tmp_path / "scratch"  # like /tmp
    shared.mkdir()
    shared.chmod(0o1777)
    with pytest.raises(JournalError, match="is a shared directory \\(mode 1777, sticky: others may "
                                           "create files in it") as caught:
        Journal.open(shared)
    assert caught.value.reason == "directory" and str(shared / "hive-journal") in str(caught.value)
    assert mode(shared) == 0o1777 and not (shared / "journal.sqlite3").exists()


def _not_ours(monkeypatch: pytest.MonkeyPatch, directory: Path) -> None:
    """chmod on ``directory`` fails as it does for a user who does not own it (tests run as root)."""
    real_chmod = Path.chmod

    def chmod(path: Path, mode: int, **kwargs: object) -> None:
        if path == directory:
            raise PermissionError(1, "Operation not permitted", str(path))
        real_chmod(path, mode, **kwargs)

    monkeypatch.setattr(Path, "chmod", chmod)


def test_a_group_volume_that_is_not_ours_is_used_with_a_warning(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    volume = tmp_path / "volume"  # a Kubernetes volume root: root's, shared through fsGroup
    volume.mkdir()
    volume.chmod(0o2775)
    (volume / "lost+found").mkdir()
    _not_ours(monkeypatch, volume)
    with Journal.open(volume) as journal:
        journal.put(make_entry("t"))
        journal.commit()
        assert mode(journal.path) == 0o600 and mode(Path(f"{journal.path}-wal")) == 0o600
    assert "has mode 2775 and is not ours to change; its files are still 0600" in caplog.text
    open_to_all = tmp_path / "open"
    open_to_all.mkdir()
    open_to_all.chmod(0o777)
    _not_ours(monkeypatch, open_to_all)
    with pytest.raises(JournalError, match="can be written by any user \\(mode 0777\\) and is not "
                                           "ours to change"):
        Journal.open(open_to_all)


def test_durability_modes_set_how_sqlite_syncs(tmp_path: Path) -> None:
    synchronous = {"normal": 1, "full": 2}
    for durability, level in synchronous.items():
        async def check(durability: str = durability, level: int = level) -> None:
            journal = TaskJournal.open(tmp_path / durability, durability=durability)
            await journal.accept_many([task("t")])
            writer = journal._journal._connection
            assert writer.execute("PRAGMA synchronous").fetchone() == (level,)
            assert journal.statistics()["durability"] == durability
            await journal.close()

        asyncio.run(check())
    with pytest.raises(ValueError, match="journal durability must be 'normal' or 'full', got 'fsync'"):
        Journal.open(tmp_path / "bad", durability="fsync")
    assert Settings().journal_durability == "normal"
    with pytest.raises(ValidationError, match="journal_durability"):
        Settings(journal_durability="fsync")


@pytest.fixture
def journal_dir(tmp_path: Path) -> Path:
    return tmp_path / "journal"
