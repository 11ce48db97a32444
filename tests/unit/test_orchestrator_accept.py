"""Accepting tasks: nothing is dispatched before its accept is durable (no Ray)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from hive_ray._errors import JournalError, OverloadedError, TaskNotFoundError
from hive_ray._runtime._orchestrator import Orchestrator
from tests.unit.fake_placement import FakePlacement
from tests.unit.test_orchestrator_logic import pool, run, settle


class ControlledJournal:
    """A journal whose commits the test holds back or fails (a full disk, for example)."""

    def __init__(self) -> None:
        self.recorded: list[str] = []
        self.commits: list[asyncio.Future[None]] = []
        self.fail_with: Exception | None = None
        self.hold = False

    def accept_many(self, entries: list[Any]) -> Any:
        self.recorded.extend(entry.task_id for entry in entries)
        return self.durable()

    def record(self, entry: Any, *, dead_letter: bool = False) -> None:
        pass

    def dead_letters(self, limit: int = 100, pool: str | None = None) -> list[Any]:
        return []

    def subscriptions(self) -> list[tuple[str, str, str]]:
        return []

    def reminders(self) -> list[tuple[str, str, str, float, float | None]]:
        return []

    async def durable(self) -> None:
        if self.fail_with is not None:
            raise self.fail_with
        if self.hold:
            commit = asyncio.get_running_loop().create_future()
            self.commits.append(commit)
            await commit

    def release(self, error: Exception | None = None) -> None:
        for commit in self.commits:
            if error is None:
                commit.set_result(None)
            else:
                commit.set_exception(error)
        self.commits.clear()

    def find_idempotent(self, pool: str, key: str) -> Any:
        return None

    def get(self, task_id: str) -> None:
        return None

    def pools(self) -> list[Any]:
        return []

    def unfinished(self) -> list[Any]:
        return []

    def record_pool(self, name: str, declaration: dict[str, Any]) -> None:
        pass

    def forget_pool(self, name: str) -> None:
        pass

    def hosts(self) -> dict[str, Any]:
        return {}

    def record_host(self, key: str, record: dict[str, Any]) -> None:
        pass

    def forget_host(self, key: str) -> None:
        pass

    def prune(self, **limits: Any) -> int:
        return 0


def make_with(journal: ControlledJournal, **settings: Any) -> tuple[Orchestrator, FakePlacement]:
    placement = FakePlacement()
    orchestrator = Orchestrator({"state_dir": "/tmp/hive-unit", **settings}, placement=placement)
    orchestrator._open_journal = lambda: journal  # type: ignore[method-assign]
    return orchestrator, placement


FULL_DISK = JournalError("the journal could not commit: database or disk is full; free space "
                         "on the journal's disk or move journal_dir")


def test_a_task_whose_accept_cannot_be_committed_never_runs_and_submit_says_why():
    async def scenario():
        journal = ControlledJournal()
        orchestrator, placement = make_with(journal)
        await pool(orchestrator)
        journal.fail_with = FULL_DISK
        with pytest.raises(JournalError, match="disk is full"):
            await orchestrator.submit({"agent_type": "echo"}, {"n": 1}, "task-1")
        for _ in range(100):
            await asyncio.sleep(0)
        assert placement.batches == []
        with pytest.raises(TaskNotFoundError):
            await orchestrator.task("task-1")
        assert (await orchestrator.pool("echo"))["queued"] == 0
        # The client retries under the same id once the disk has room: it runs once.
        journal.fail_with = None
        accepted = await orchestrator.submit({"agent_type": "echo"}, {"n": 1}, "task-1")
        assert accepted["task_id"] == "task-1"
        assert await orchestrator.wait("task-1", 5) == ("succeeded", {"n": 1}, None)
        assert [ids for _, ids in placement.batches] == [["task-1"]]
    run(scenario())


def test_dispatch_waits_for_the_commit_and_a_failed_commit_withdraws_every_task_of_it():
    async def scenario():
        journal = ControlledJournal()
        orchestrator, placement = make_with(journal)
        await pool(orchestrator, max_queue=10)
        journal.hold = True
        running = asyncio.ensure_future(orchestrator.run_many({"agent_type": "echo"}, [1, 2, 3]))
        await settle(lambda: journal.commits)
        for _ in range(100):
            await asyncio.sleep(0)
        assert placement.batches == []  # accepted, but not yet durable: nothing dispatched
        # Their room is held while the commit is in flight: the bound cannot be overshot.
        with pytest.raises(OverloadedError):
            await asyncio.wait_for(orchestrator.submit_many({"agent_type": "echo"}, list(range(8))), 1)
        journal.release(FULL_DISK)
        with pytest.raises(JournalError):
            await running
        assert placement.batches == []
        assert orchestrator._pools["echo"].scheduler.backlog() == 0
    run(scenario())


def test_a_task_cancelled_while_its_commit_is_in_flight_is_not_dispatched():
    async def scenario():
        journal = ControlledJournal()
        orchestrator, placement = make_with(journal)
        await pool(orchestrator)
        journal.hold = True
        submitting = asyncio.ensure_future(orchestrator.submit({"agent_type": "echo"}, "x", "task-c"))
        await settle(lambda: journal.commits)
        cancelled = await orchestrator.cancel("task-c")
        assert cancelled["state"] == "cancelled"
        journal.release()
        await submitting
        for _ in range(100):
            await asyncio.sleep(0)
        assert placement.batches == []
        assert orchestrator._pools["echo"].scheduler.backlog() == 0
    run(scenario())


def test_durable_accepts_are_dispatched_once_committed():
    async def scenario():
        journal = ControlledJournal()
        orchestrator, placement = make_with(journal)
        await pool(orchestrator)
        journal.hold = True
        running = asyncio.ensure_future(orchestrator.run_many({"agent_type": "echo"}, [1, 2]))
        await settle(lambda: journal.commits)
        journal.release()
        ids, answers = await running
        assert [answer[1] for answer in answers] == [1, 2]
        assert sorted(journal.recorded[:2]) == sorted(ids)
    run(scenario())
