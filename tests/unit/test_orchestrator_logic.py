"""The orchestrator's logic against a fake placement: no Ray, no processes."""

import asyncio
from typing import Any

import pytest

from hive_ray._errors import NoRouteError, OverloadedError, TaskNotFoundError, UnknownPoolError
from hive_ray._runtime._orchestrator import Orchestrator
from tests.unit.fake_placement import FakePlacement


def make(settings: dict[str, Any] | None = None) -> tuple[Orchestrator, FakePlacement]:
    placement = FakePlacement()
    settings = {"state_dir": "/tmp/hive-unit", "journal": False, **(settings or {})}
    return Orchestrator(settings, placement=placement), placement


async def pool(orchestrator: Orchestrator, name: str = "echo", count: int = 2, **extra: Any) -> dict[str, Any]:
    capabilities = extra.pop("capabilities", ["echo"])
    return await orchestrator.create_pool({"name": name, "agent_type": "echo", "count": count, **extra},
                                          "hive_ray.actors.echo:EchoAgent", capabilities, 1)


def run(coroutine: Any) -> Any:
    return asyncio.run(coroutine)


async def settle(predicate: Any, turns: int = 10_000) -> None:
    """Let the event loop run until ``predicate()`` holds: no clock, no sleep."""
    for _ in range(turns):
        if predicate():
            return
        await asyncio.sleep(0)
    raise AssertionError("the orchestrator did not settle")


def test_submit_and_wait_returns_the_result():
    async def scenario():
        orchestrator, _ = make()
        await pool(orchestrator)
        task_id, answer = await orchestrator.run({"agent_type": "echo"}, {"x": 1})
        assert answer == ("succeeded", {"x": 1}, None)
        record = await orchestrator.task(task_id)
        assert record["attempts"] == 1 and record["agent_id"].startswith("echo-")
    run(scenario())


def test_handler_error_fails_the_task_with_a_structured_error():
    async def scenario():
        orchestrator, _ = make()
        await pool(orchestrator)
        _, answer = await orchestrator.run({"agent_type": "echo"}, "boom")
        assert answer[0] == "failed" and answer[2]["type"] == "ValueError"
    run(scenario())


def test_a_lost_agent_is_restarted_and_its_task_delivered_again():
    async def scenario():
        orchestrator, placement = make()
        await pool(orchestrator, count=1)
        placement.doomed.add("echo-0")
        task_id, answer = await orchestrator.run({"agent_type": "echo"}, "survives")
        assert answer == ("succeeded", "survives", None)
        record = await orchestrator.task(task_id)
        assert record["attempts"] == 2
        info = await orchestrator.pool("echo")
        assert info["agents"][0]["restarts"] == 1
        assert (await orchestrator.statistics())["counters"]["redelivered"] == 1
    run(scenario())


def test_a_task_out_of_attempts_fails_with_the_last_error():
    async def scenario():
        orchestrator, placement = make()
        await pool(orchestrator, count=1, retry={"max_attempts": 1})
        placement.doomed.add("echo-0")
        _, answer = await orchestrator.run({"agent_type": "echo"}, "doomed")
        assert answer[0] == "failed" and "process_killed" in answer[2]["message"]
    run(scenario())


def test_cancel_queued_and_running_tasks():
    async def scenario():
        orchestrator, placement = make()
        await pool(orchestrator, count=1)
        placement.gates["echo-0"] = asyncio.Event()
        running, queued = await orchestrator.submit_many({"agent_type": "echo"}, ["a", "b"])
        await asyncio.sleep(0)
        assert (await orchestrator.cancel(queued))["state"] == "cancelled"
        assert (await orchestrator.cancel(running))["state"] == "cancelled"
        assert placement.cancelled == [running]
        placement.gates["echo-0"].set()
        await settle(lambda: orchestrator._counters["late_results"] == 1)
        assert (await orchestrator.task(running))["state"] == "cancelled"  # its late result is ignored
        assert (await orchestrator.statistics())["counters"]["late_results"] == 1
        assert [ids for _, ids in placement.batches] == [[running]]  # the queued one never ran
    run(scenario())


def test_timeout_ends_a_task_that_waits_too_long():
    async def scenario():
        orchestrator, placement = make()
        await pool(orchestrator, count=1)
        placement.gates["echo-0"] = asyncio.Event()
        task_id, answer = await orchestrator.run({"agent_type": "echo", "timeout": 0.05}, "slow")
        assert answer[0] == "timed_out" and "0.05 s" in answer[2]["message"]
        placement.gates["echo-0"].set()
    run(scenario())


def test_idempotency_key_returns_the_first_task():
    async def scenario():
        orchestrator, _ = make()
        await pool(orchestrator)
        first = await orchestrator.submit({"agent_type": "echo", "idempotency_key": "k"}, 1)
        again = await orchestrator.submit({"agent_type": "echo", "idempotency_key": "k"}, 1)
        assert first["task_id"] == again["task_id"]
    run(scenario())


def test_routing_by_capability_and_clear_errors():
    async def scenario():
        orchestrator, _ = make()
        await pool(orchestrator, name="fast", capabilities=["echo", "fast"])
        await pool(orchestrator, name="plain", capabilities=["echo"])
        _, answer = await orchestrator.run({"capability": "fast"}, 7)
        assert answer[1] == 7
        record = (await orchestrator.tasks(limit=1))["tasks"][0]
        assert record["pool"] == "fast"
        with pytest.raises(NoRouteError, match="no pool offers capability 'gpu'; offered: echo, fast"):
            await orchestrator.submit({"capability": "gpu"}, 1)
        with pytest.raises(NoRouteError, match="Spawn one first"):
            await orchestrator.submit({"agent_type": "coder"}, 1)
        with pytest.raises(UnknownPoolError, match="known pools: fast, plain"):
            await orchestrator.submit({"pool": "nope"}, 1)
        with pytest.raises(TaskNotFoundError):
            await orchestrator.task("missing")
    run(scenario())


def test_overload_fails_fast_and_accepts_nothing():
    async def scenario():
        orchestrator, placement = make()
        await pool(orchestrator, count=1, max_queue=5)
        placement.gates["echo-0"] = asyncio.Event()
        await orchestrator.submit_many({"agent_type": "echo"}, [0])
        await asyncio.sleep(0)  # it is dispatched and blocks on the gate
        await orchestrator.submit_many({"agent_type": "echo"}, list(range(5)))  # the queue is now full
        before = len(orchestrator._tasks)
        with pytest.raises(OverloadedError) as raised:
            await orchestrator.submit_many({"agent_type": "echo"}, [1, 2])
        assert raised.value.retry_after > 0
        assert len(orchestrator._tasks) == before
        placement.gates["echo-0"].set()
    run(scenario())


def test_finished_tasks_are_pruned_beyond_the_retention_count():
    async def scenario():
        orchestrator, _ = make({"finished_retention_count": 100})
        await pool(orchestrator)
        ids = await orchestrator.submit_many({"agent_type": "echo"}, list(range(300)))
        await orchestrator.wait_many(ids[-50:])
        await settle(lambda: orchestrator._counters["succeeded"] == 300)
        assert len(orchestrator._tasks) <= 100
        with pytest.raises(TaskNotFoundError):
            await orchestrator.task(ids[0])
    run(scenario())


def test_events_are_ordered_and_long_poll_wakes_up():
    async def scenario():
        orchestrator, _ = make()
        await pool(orchestrator)
        waiter = asyncio.ensure_future(orchestrator.events(after=0, timeout=5))
        await asyncio.sleep(0)
        task_id, _ = await orchestrator.run({"agent_type": "echo"}, 1)
        first = await waiter
        assert first["events"]
        everything = await orchestrator.events(after=0, task_id=task_id)
        states = [event["state"] for event in everything["events"]]
        assert states == ["queued", "running", "succeeded"]
        sequences = [event["sequence"] for event in everything["events"]]
        assert sequences == sorted(sequences)
    run(scenario())


def test_scale_down_stops_the_least_busy_agents():
    async def scenario():
        orchestrator, placement = make()
        await pool(orchestrator, count=3)
        info = await orchestrator.scale("echo", 1)
        assert info["size"] == 1 and len(placement.active) == 1
        info = await orchestrator.scale("echo", 2)
        assert info["size"] == 2
    run(scenario())


def test_events_resume_after_a_sequence_and_report_what_fell_out_of_the_buffer():
    async def scenario():
        orchestrator, _ = make({"event_buffer": 100})
        await pool(orchestrator)
        ids = await orchestrator.submit_many({"agent_type": "echo"}, list(range(60)))
        await orchestrator.wait_many(ids)  # 180 events: queued, running, succeeded each
        everything = await orchestrator.events(after=0, limit=1000)
        sequences = [event["sequence"] for event in everything["events"]]
        assert sequences == list(range(sequences[0], sequences[0] + 100))  # the newest 100, in order
        assert everything["last_sequence"] == sequences[-1]
        later = await orchestrator.events(after=sequences[49], limit=10)
        assert [event["sequence"] for event in later["events"]] == sequences[50:60]
        assert not later["missed"]
        assert (await orchestrator.events(after=sequences[0] - 5))["missed"]
        # All 60 were queued first: the last task's "queued" event already left the buffer.
        one = await orchestrator.events(after=0, task_id=ids[-1], limit=1000)
        assert [event["state"] for event in one["events"]] == ["running", "succeeded"]
    run(scenario())
