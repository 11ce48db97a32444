"""``Hive.map``'s window and clean-up, against a scripted orchestrator (no Ray)."""

from __future__ import annotations

from concurrent.futures import Future
from typing import Any

import pytest

from hive_ray._client import Hive
from hive_ray._errors import JournalError, OverloadedError
from hive_ray._settings import Settings


class ScriptedOrchestrator:
    """Answers ``run_many`` chunks from a script; records what the client sent."""

    def __init__(self, max_queue: int, script: dict[int, BaseException] | None = None) -> None:
        self.max_queue = max_queue
        self.script = dict(script or {})  # call number -> what that call raises
        self.calls: list[tuple[str, tuple[Any, ...]]] = []
        self.in_flight = 0
        self.most_in_flight = 0
        self.cancelled: list[str] = []

    def attach(self, hive: Hive, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setattr(hive, "_call", self.call)
        monkeypatch.setattr(hive, "_call_once", self.call_once)
        monkeypatch.setattr(hive, "_fire", self.fire)
        monkeypatch.setattr(hive, "_collect", self.collect)
        monkeypatch.setattr("hive_ray._client.time.sleep", lambda seconds: None)

    def call(self, method: str, *args: Any, timeout: float | None = None) -> Any:
        assert method == "admission" and timeout is not None
        return {"pool": "p", "max_queue": self.max_queue, "backlog": 0, "concurrency": 1}

    def call_once(self, method: str, task_ids: list[str], timeout: float | None = None) -> int:
        assert method == "cancel_many" and timeout is not None
        self.cancelled.extend(task_ids)
        return len(task_ids)

    def fire(self, method: str, template: dict[str, Any], payloads: list[Any], timeout: Any,
             task_ids: list[str]) -> Future[Any]:
        number = len(self.calls)
        self.calls.append((method, (payloads, task_ids)))
        future: Future[Any] = Future()
        failure = self.script.pop(number, None)
        if failure is not None:
            future.set_exception(failure)
        else:
            self.in_flight += len(payloads)
            self.most_in_flight = max(self.most_in_flight, self.in_flight)
            future.set_result((task_ids, [("succeeded", p, None) for p in payloads]))
        return future

    def collect(self, pending: Future[Any], timeout: float | None = None, method: str = "call") -> Any:
        answer = pending.result()
        self.in_flight -= len(answer[0])
        return answer


@pytest.fixture
def hive() -> Hive:
    return Hive(None, Settings(state_dir="/tmp/hive-unit", journal=False), owns_ray=False)


def test_map_keeps_no_more_in_flight_than_the_pools_queue_bound(hive: Hive, monkeypatch: pytest.MonkeyPatch):
    orchestrator = ScriptedOrchestrator(max_queue=50)
    orchestrator.attach(hive, monkeypatch)
    assert hive.map("echo", range(750), progress=False) == list(range(750))
    assert orchestrator.most_in_flight <= 50
    assert all(len(args[0]) <= 50 for _, args in orchestrator.calls)


def test_a_full_pool_is_waited_out_and_the_chunk_sent_again_under_the_same_ids(
        hive: Hive, monkeypatch: pytest.MonkeyPatch):
    orchestrator = ScriptedOrchestrator(max_queue=1000, script={1: OverloadedError(pool="p", retry_after=0.5)})
    orchestrator.attach(hive, monkeypatch)
    assert hive.map("echo", range(2000), chunk_size=500, progress=False) == list(range(2000))
    refused_ids = orchestrator.calls[1][1][1]
    resent = [args for _, args in orchestrator.calls[2:] if args[1] == refused_ids]
    assert len(resent) == 1  # the refused chunk again, with its own ids: nothing runs twice
    assert orchestrator.cancelled == []


def test_a_map_that_fails_half_way_cancels_what_it_leaves_behind(hive: Hive, monkeypatch: pytest.MonkeyPatch):
    orchestrator = ScriptedOrchestrator(max_queue=10_000, script={0: JournalError("disk full")})
    orchestrator.attach(hive, monkeypatch)
    with pytest.raises(JournalError):
        hive.map("echo", range(2048), chunk_size=512, progress=False)
    # Every chunk sent is cancelled (the failed one's ids are unknown to the orchestrator: skipped).
    sent = [task_id for _, (_, ids) in orchestrator.calls for task_id in ids]
    assert len(orchestrator.calls) > 1 and sorted(orchestrator.cancelled) == sorted(sent)


def test_ctrl_c_during_a_map_cancels_the_tasks_in_flight(hive: Hive, monkeypatch: pytest.MonkeyPatch):
    orchestrator = ScriptedOrchestrator(max_queue=10_000, script={1: KeyboardInterrupt()})
    orchestrator.attach(hive, monkeypatch)
    with pytest.raises(KeyboardInterrupt):
        hive.map("echo", range(2048), chunk_size=512, progress=False)
    # Chunk 0 was answered; chunks 1 (interrupted) to 3 were in flight: all of theirs cancelled.
    in_flight = [task_id for _, (_, ids) in orchestrator.calls[1:] for task_id in ids]
    assert sorted(orchestrator.cancelled) == sorted(in_flight)
    assert not set(orchestrator.calls[0][1][1]) & set(orchestrator.cancelled)
